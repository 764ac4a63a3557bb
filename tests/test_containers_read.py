"""Whole pickled modules (``torch.save(model)``) and TorchScript archives (``torch.jit.save``).

Every fixture is made by torch in the test; what pinit lists is compared with what torch itself
loads (``torch.load(weights_only=False)`` / ``torch.jit.load``, in the test only).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

import pinit_test_objects as objs
from conftest import Result, run_cli


def inspect_json(path: Path, *args: str) -> dict[str, Any]:
    r = run_cli("inspect", path, "--format", "json", *args)
    assert r.exit_code == 0, r.stderr
    return r.json()


def check_json(*args: str | Path) -> dict[str, Any]:
    r = run_cli("check", *args, "--format", "json")
    assert "Traceback" not in r.stderr, r.stderr
    return r.json() | {"_exit": r.exit_code}


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _values(t: torch.Tensor, n: int) -> list[Any]:
    out: list[Any] = []
    for v in t.detach().reshape(-1)[:n].tolist():
        out.append(v)
    return out


def assert_lists_like_torch(doc: dict[str, Any], expected: dict[str, torch.Tensor]) -> None:
    """Names (in order), shapes, dtypes and first values equal torch's own state dict."""
    tensors = doc["tensors"]
    assert [t["name"] for t in tensors] == list(expected)
    for t in tensors:
        ref = expected[t["name"]]
        assert t["shape"] == list(ref.shape), t["name"]
        assert t["dtype"] == _dtype(ref), t["name"]
        assert t["values"] == pytest.approx(_values(ref, 8)), t["name"]
    cov = doc["summary"]["coverage"]
    assert cov == {"tensors_found": len(expected), "tensors_read": len(expected), "uninterpreted": []}


def tiny_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = objs.TinyNet()
    with torch.no_grad():  # BatchNorm statistics that are not the defaults, a counter that is not 0
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
        m.bn.num_batches_tracked.fill_(7)
    m.head[0].bias.requires_grad_(False)  # a frozen parameter: requires_grad false, not null
    return m


# --- whole pickled modules ---------------------------------------------------------------------


def test_whole_module_is_named_and_read_as_its_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(tiny_net(), path)
    loaded = torch.load(path, weights_only=False)
    sd = loaded.state_dict()
    assert "cache" not in sd and "conv.bias" not in sd  # non-persistent buffer, bias=False

    doc = inspect_json(path, "--values", "8")
    assert doc["format"] == "torch"
    assert_lists_like_torch(doc, sd)
    params = dict(loaded.named_parameters())
    for t in doc["tensors"]:
        if t["name"] in params:
            assert t["requires_grad"] is params[t["name"]].requires_grad, t["name"]
        else:  # buffers: stored False says nothing (SPEC 5)
            assert t["requires_grad"] is None, t["name"]
    assert {t["name"]: t["requires_grad"] for t in doc["tensors"]}["head.0.bias"] is False

    doc = check_json(path)
    assert doc["_exit"] == 0, doc
    assert doc["files"][0]["coverage"]["uninterpreted"] == []


def test_whole_module_statistics_equal_torch(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(tiny_net(1), path)
    sd = torch.load(path, weights_only=False).state_dict()
    for t in inspect_json(path)["tensors"]:
        ref = sd[t["name"]].double()
        assert t["stats"]["min"] == pytest.approx(ref.min().item())
        assert t["stats"]["max"] == pytest.approx(ref.max().item())
        assert t["stats"]["mean"] == pytest.approx(ref.mean().item())


def test_module_nested_in_a_dict_and_tied_parameters(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": objs.TiedNet(), "epoch": 3, "net": torch.nn.Sequential(torch.nn.Linear(2, 2))}, path)
    loaded = torch.load(path, weights_only=False)
    expected = {f"model.{k}": v for k, v in loaded["model"].state_dict().items()}
    expected |= {f"net.{k}": v for k, v in loaded["net"].state_dict().items()}
    assert "model.enc.weight" in expected and "model.dec.weight" in expected  # state_dict lists both

    doc = inspect_json(path, "--values", "8")
    assert_lists_like_torch(doc, expected)
    by_name = {t["name"]: t for t in doc["tensors"]}
    assert "model.dec.weight" in by_name["model.enc.weight"]["tied_with"]
    assert by_name["model.enc.bias"]["tied_with"] == []
    meta = run_cli("inspect", path, "--meta")
    assert meta.exit_code == 0 and "epoch" in meta.stdout


def test_whole_module_with_a_nan_parameter_fails_check(tmp_path: Path) -> None:
    m = tiny_net()
    with torch.no_grad():
        m.head[0].weight[0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(m, path)
    doc = check_json(path)
    assert doc["_exit"] == 1
    (f,) = doc["files"]
    codes = {x["code"] for x in f["findings"]}
    assert "nan" in codes and "no_tensors" not in codes, f["findings"]
    assert any("head.0.weight" in x.get("tensor", "") or "head.0.weight" in x["message"] for x in f["findings"])


def test_whole_module_saved_with_protocol_1(tmp_path: Path) -> None:
    path = tmp_path / "p1.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3)), path, pickle_protocol=1)
    sd = torch.load(path, weights_only=False).state_dict()
    assert_lists_like_torch(inspect_json(path, "--values", "8"), sd)


def test_tensor_attribute_outside_the_state_dict_is_read_and_checked(tmp_path: Path) -> None:
    m = torch.nn.Linear(2, 2)
    m.mask = torch.full((2,), float("nan"))  # a plain attribute: torch.save keeps it, state_dict does not
    m.anchors = {"small": torch.ones(3)}  # in a plain container too
    path = tmp_path / "attr.pt"
    torch.save(m, path)
    doc = inspect_json(path)
    # the state dict first, in its order, then the attributes, named by their attribute path
    assert [t["name"] for t in doc["tensors"]] == [*m.state_dict(), "mask", "anchors.small"]
    assert doc["summary"]["coverage"] == {"tensors_found": 4, "tensors_read": 4, "uninterpreted": []}
    result = check_json(path)
    assert result["_exit"] == 1
    codes = {(f["code"], f.get("tensor")) for f in result["files"][0]["findings"]}
    assert ("nan", "mask") in codes and "no_tensors" not in {c for c, _ in codes}, codes
    healthy = tmp_path / "healthy.pt"
    m.mask = torch.zeros(2)
    torch.save(m, healthy)
    assert check_json(healthy)["_exit"] == 0  # a healthy model with an attribute tensor passes


def test_attribute_sharing_storage_with_a_parameter_is_tied(tmp_path: Path) -> None:
    m = torch.nn.Linear(3, 3)
    m.cache = m.weight.data  # the same storage as the parameter
    path = tmp_path / "alias.pt"
    torch.save(m, path)
    before = path.read_bytes()
    r = run_cli("reinit", path, "--match", "^weight$", "--scheme", "zeros")
    assert r.exit_code == 2 and "cache" in r.stderr and "--with-tied" in r.stderr, r.stderr
    assert path.read_bytes() == before


# --- TorchScript archives ----------------------------------------------------------------------


@pytest.fixture(params=["script", "trace"])
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    m = tiny_net().eval()
    sm = torch.jit.script(m) if request.param == "script" else torch.jit.trace(m, torch.randn(1, 1, 5, 5))
    path = tmp_path / f"{request.param}.pt"
    torch.jit.save(sm, str(path))
    return path


def test_torchscript_archive_is_named_as_jit_load_state_dict(archive: Path) -> None:
    loaded = torch.jit.load(str(archive))
    sd = loaded.state_dict()
    doc = inspect_json(archive, "--values", "8")
    assert doc["format"] == "torchscript"
    assert_lists_like_torch(doc, sd)
    params = dict(loaded.named_parameters())
    assert params, "the archive has parameters"
    for t in doc["tensors"]:
        if t["name"] in params:
            assert t["requires_grad"] is params[t["name"]].requires_grad, t["name"]
        else:
            assert t["requires_grad"] is None, t["name"]
    doc = check_json(archive)
    assert doc["_exit"] == 0, doc
    assert doc["files"][0]["coverage"]["uninterpreted"] == []


def test_torchscript_archive_with_a_nan_fails_check(tmp_path: Path) -> None:
    m = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)))
    with torch.no_grad():
        m[0].weight.fill_(float("nan"))
    path = tmp_path / "scripted.pt"
    torch.jit.save(m, str(path))
    doc = check_json(path)
    assert doc["_exit"] == 1
    (f,) = doc["files"]
    codes = [x["code"] for x in f["findings"]]
    assert "nan" in codes and "no_tensors" not in codes, f["findings"]


def test_torchscript_code_is_parsed_never_run(tmp_path: Path) -> None:
    """Only literal ``__parameters__`` / ``__buffers__`` lists are read from the code files."""
    from pinit.formats.torchscript import parse_classes

    marker = tmp_path / "ran"
    source = (
        "class A(Module):\n"
        f"  __parameters__ = __import__('os').system('touch {marker}')\n"
        "  __buffers__ = []\n"
        "class B(Module):\n"
        "  __parameters__ = ['w', ]\n"
        "  __buffers__ = ['b', ]\n"
        "  def forward(self) -> None:\n"
        f"    __import__('os').system('touch {marker}')\n"
    )
    classes = parse_classes(source)
    assert not classes["A"].is_module  # not a literal list: A's tensors would be reported as not read
    assert classes["B"].is_module and classes["B"].parameters == ["w"] and classes["B"].buffers == ["b"]
    assert not marker.exists()


def test_torchscript_archive_pinit_cannot_read_is_never_healthy(tmp_path: Path) -> None:
    m = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(4, 4)), {torch.nn.Linear})
    path = tmp_path / "quantized.pt"
    torch.jit.save(torch.jit.script(m), str(path))
    doc = check_json(path)
    assert doc["_exit"] == 1
    (f,) = doc["files"]
    assert [x["code"] for x in f["findings"]] == ["no_tensors"], f["findings"]
    assert f["coverage"]["tensors_read"] == 0 and "TorchScript" in f["coverage"]["uninterpreted"][0]


def test_module_holding_a_torch_function_as_a_value_is_read(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "layer.pt"
    torch.save(torch.nn.TransformerEncoderLayer(8, 2, 16), path)  # keeps F.relu as an attribute
    sd = torch.load(path, weights_only=False).state_dict()
    doc = inspect_json(path, "--values", "8")  # F.relu is an inert value, as the module classes are
    assert_lists_like_torch(doc, sd)


def test_a_torch_function_that_is_called_is_still_refused(tmp_path: Path) -> None:
    m = torch.nn.Linear(2, 2)
    m.evil = Call(torch.nn.functional.relu, torch.ones(1))  # F.relu(...) run at load time
    path = tmp_path / "called.pt"
    torch.save(m, path)
    r = run_cli("inspect", path)
    assert r.exit_code == 2 and "'torch.nn.functional.relu'" in r.stderr, r.stderr


def test_header_listing_of_both_imports_no_torch(tmp_path: Path, archive: Path) -> None:
    whole = tmp_path / "whole.pt"
    torch.save(tiny_net(), whole)
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from pinit.cli import app\n"
        "for path in sys.argv[1:]:\n"
        "    r = CliRunner().invoke(app, ['inspect', path, '--no-stats', '--format', 'json'])\n"
        "    assert r.exit_code == 0, r.output\n"
        "print('torch' in sys.modules)\n"
    )
    p = subprocess.run([sys.executable, "-c", code, str(whole), str(archive)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False"


HOLDER_MODULE = """
import torch

@torch.jit.script
class Holder:
    def __init__(self, t: torch.Tensor):
        self.t = t

class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.h = Holder(torch.full((3,), float("nan")))
        self.l = torch.nn.Linear(2, 2)

    def forward(self, x):
        return self.l(x) + self.h.t.sum()

torch.jit.save(torch.jit.script(M()), "holder.pt")
"""


def test_torchscript_object_outside_the_state_dict_is_not_passed(tmp_path: Path) -> None:
    (tmp_path / "holder_mod.py").write_text(HOLDER_MODULE)  # TorchScript needs the class's source file
    subprocess.run([sys.executable, "-W", "ignore", "-c", "import holder_mod"], cwd=tmp_path, check=True)
    path = tmp_path / "holder.pt"
    doc = inspect_json(path)
    assert [t["name"] for t in doc["tensors"]] == list(torch.jit.load(str(path)).state_dict())
    cov = doc["summary"]["coverage"]
    assert (cov["tensors_found"], cov["tensors_read"]) == (3, 2)
    assert len(cov["uninterpreted"]) == 1 and cov["uninterpreted"][0].startswith("h:"), cov
    assert check_json(path)["_exit"] == 1


# --- hostile variants --------------------------------------------------------------------------


class Call:
    """Pickles as ``func(*args)`` (REDUCE)."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> Any:
        return (self.func, self.args)


def _raw_pickle_module(data: bytes) -> Any:
    """A pickle_module for torch.save that writes ``data`` as the archive's data.pkl."""

    class Raw:
        def __init__(self, f: Any, protocol: int = 2) -> None:
            self.f = f

        def dump(self, _obj: Any) -> None:
            self.f.write(data)

    return types.SimpleNamespace(__name__="raw_pickle", Pickler=Raw, dump=pickle.dump)


def test_module_class_called_through_reduce_is_refused_and_named(tmp_path: Path) -> None:
    path = tmp_path / "reduce.pt"
    torch.save({"model": tiny_net(), "evil": Call(objs.TinyNet)}, path)  # one real use, one call
    r = run_cli("inspect", path)
    assert r.exit_code == 2
    assert "pinit_test_objects.TinyNet" in r.stderr
    assert "--allow-global pinit_test_objects.TinyNet" in r.stderr
    doc = check_json(path)
    assert doc["_exit"] == 1 and doc["files"][0]["findings"][0]["code"] == "unreadable"


def test_build_on_a_class_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "build.pt"
    state = b"}(X\x0b\x00\x00\x00_parametersq\x01}X\x08\x00\x00\x00_buffers}X\x08\x00\x00\x00_modules}u"
    data = b"\x80\x02cpinit_test_objects\nTinyNet\n" + state + b"b."
    torch.save({}, path, pickle_module=_raw_pickle_module(data))
    r = run_cli("inspect", path)
    assert r.exit_code == 2
    assert "BUILD refused" in r.stderr and "TinyNet" in r.stderr


def test_module_class_built_by_inst_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "inst.pt"
    torch.save({}, path, pickle_module=_raw_pickle_module(b"(ipinit_test_objects\nTinyNet\n."))
    r = run_cli("inspect", path)
    assert r.exit_code == 2 and "pinit_test_objects.TinyNet" in r.stderr


def test_code_execution_inside_a_module_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    m = tiny_net()
    m.evil = Call(os.system, f"touch '{marker}'")  # a plain attribute: pickled with the module
    path = tmp_path / "evil.pt"
    torch.save(m, path)
    r = run_cli("inspect", path)
    assert r.exit_code == 2
    assert "code execution" in r.stderr and "system" in r.stderr
    assert "TinyNet" not in r.stderr and "Conv2d" not in r.stderr  # the module classes are not the problem
    assert not marker.exists()


def test_module_class_stored_as_a_value_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cls.pt"
    torch.save({"model": tiny_net(), "cls": objs.TinyNet}, path)
    r = run_cli("inspect", path)
    assert r.exit_code == 2 and "pinit_test_objects.TinyNet" in r.stderr


def test_a_module_like_class_in_one_file_does_not_change_the_next(tmp_path: Path) -> None:
    # a.pt: PlainNode objects with a module's state (read as modules); b.pt: PlainNode called
    node = objs.PlainNode()
    node.__dict__.update({"_parameters": {"w": torch.nn.Parameter(torch.ones(2))}, "_buffers": {}, "_modules": {}})
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"node": node}, a)
    torch.save({"x": torch.ones(2), "node": Call(objs.PlainNode)}, b)
    assert [t["name"] for t in inspect_json(a)["tensors"]] == ["node.w"]
    alone = check_json(b)
    both = check_json(a, b)
    assert alone["files"][0]["findings"][0]["code"] == "unreadable"
    assert both["files"][1] == alone["files"][0]
    assert both["files"][0]["status"] == "pass"
    r: Result = run_cli("inspect", b)
    assert r.exit_code == 2 and "pinit_test_objects.PlainNode" in r.stderr


class ReduceEx:
    """``copyreg._reconstructor(Popen, Popen, argv)``: calls ``Popen.__init__(obj, argv)`` when unpickled."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv

    def __reduce_ex__(self, protocol: Any) -> Any:
        import copyreg
        import subprocess

        return (copyreg._reconstructor, (subprocess.Popen, subprocess.Popen, self.argv))


def test_reconstructor_outside_a_module_is_refused_as_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "recon.pt"
    torch.save({"model": tiny_net(), "evil": ReduceEx(["touch", str(marker)])}, path, pickle_protocol=1)
    r = run_cli("inspect", path)
    assert r.exit_code == 2 and "code execution" in r.stderr
    assert "copyreg._reconstructor" in r.stderr and "subprocess.Popen" in r.stderr
    assert not marker.exists()
