"""Verdicts you can build on: each wrong verdict found on today's main, reproduced through the CLI.

False passes (a file not read, or read differently from torch), false alarms (healthy trained
checkpoints), silent changes (views sharing storage), bounded work on small hostile files, and
refusals that name every global at once. Zip layout, strided views, write safety and escaping
have their own files (test_zip_fidelity, test_views_bounded, test_write_safety, test_escaping).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zipfile
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_cli, save_checkpoint
from pinit_test_objects import ConfigNode, Hyper, ListNode, Point

REAL = ROOT / "tests" / "data" / "real"


def check_json(*args: str | Path) -> dict:
    r = run_cli("check", *args, "--format", "json")
    assert "Traceback" not in r.stderr, r.stderr
    return r.json() | {"_exit": r.exit_code}


# ---------------------------------------------------------------------------
# false passes: what was not read is never healthy


def _whole_module(path: Path) -> Path:
    code = f"""
import torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.register_buffer("scale", torch.ones(3))
net = Net()
with torch.no_grad():
    net.fc.weight.fill_(float("nan"))
torch.save(net, {str(path)!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=path.parent)
    return path


def test_whole_pickled_module_is_read_and_its_nan_fails(tmp_path: Path) -> None:
    path = _whole_module(tmp_path / "model.pt")
    # the module classes are inert placeholders now (never imported): no --allow-global needed
    doc = check_json(path)
    assert doc["_exit"] == 1  # main before #10 printed ok; #10 said no_tensors; now it is read
    (f,) = doc["files"]
    assert f["status"] == "fail"
    codes = {(x["code"], x.get("tensor")) for x in f["findings"]}
    assert ("nan", "fc.weight") in codes, codes
    assert "no_tensors" not in {c for c, _ in codes}
    assert f["coverage"] == {"tensors_found": 3, "tensors_read": 3, "uninterpreted": []}, f["coverage"]
    r = run_cli("inspect", path, "--format", "json")
    assert r.exit_code == 0
    # state_dict() order: a module's own parameters and buffers, then its children's
    assert [t["name"] for t in r.json()["tensors"]] == ["scale", "fc.weight", "fc.bias"]


def _quantized_script(path: Path) -> Path:
    m = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(3, 2)), {torch.nn.Linear})
    torch.jit.save(torch.jit.script(m), str(path))
    return path


def test_torchscript_archive_is_read_and_what_it_cannot_read_is_never_healthy(tmp_path: Path) -> None:
    m = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)))
    with torch.no_grad():
        m[0].weight.fill_(float("nan"))
    path = tmp_path / "scripted.pt"
    torch.jit.save(m, str(path))
    doc = check_json(path)
    assert doc["_exit"] == 1
    (f,) = doc["files"]
    assert {(x["code"], x.get("tensor")) for x in f["findings"]} >= {("nan", "0.weight")}, f["findings"]
    assert "no_tensors" not in [x["code"] for x in f["findings"]]
    quantized = check_json(_quantized_script(tmp_path / "quantized.pt"))
    assert quantized["_exit"] == 1
    assert next(x["code"] for x in quantized["files"][0]["findings"]) == "no_tensors"
    r = run_cli("inspect", tmp_path / "quantized.pt")
    assert r.exit_code == 0 and "not read" in r.stderr, r.stderr


def test_file_with_no_tensor_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "hp.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    doc = check_json(path)
    assert doc["_exit"] == 1
    assert doc["files"][0]["findings"][0]["code"] == "no_tensors"


def test_plain_state_dict_coverage_is_complete(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ok.pt", {"a": torch.randn(3, 3), "opt": [torch.randn(2)]})
    doc = check_json(path)
    assert doc["_exit"] == 0
    assert doc["files"][0]["coverage"] == {"tensors_found": 2, "tensors_read": 2, "uninterpreted": []}


def _with_build_on_storage_class(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose data.pkl first applies BUILD to the allowed global
    torch.FloatStorage (setting its 'value'), then holds the original object tree."""
    with zipfile.ZipFile(src) as z:
        members = [(i, z.read(i)) for i in z.infolist()]
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as out:
        for info, data in members:
            if info.filename.endswith("/data.pkl"):
                assert data[:2] == b"\x80\x02"
                prefix = b"ctorch\nFloatStorage\n}X\x05\x00\x00\x00valueX\x07\x00\x00\x00float16sb0"
                data = data[:2] + prefix + data[2:]
            out.writestr(info.filename, data)
    return dst


def test_nothing_a_pickle_does_outlives_its_file(tmp_path: Path) -> None:
    b = save_checkpoint(tmp_path / "b.pt", {"w": torch.full((4, 4), float("nan"))})
    a = _with_build_on_storage_class(save_checkpoint(tmp_path / "a0.pt", {"x": torch.ones(2)}), tmp_path / "a.pt")
    alone = check_json(b)
    together = check_json(a, b)
    assert together["files"][1] == alone["files"][0]
    assert together["files"][1]["status"] == "fail"  # the NaN is seen, read as float32
    (bad,) = together["files"][0]["findings"]
    assert bad["code"] == "unreadable" and "BUILD" in bad["message"], bad
    # and in one process, once more after the hostile file
    assert check_json(b) == alone


# ---------------------------------------------------------------------------
# false alarms: healthy trained checkpoints pass, garbage fails


MANIFEST = json.loads((REAL / "MANIFEST.json").read_text()) if (REAL / "MANIFEST.json").exists() else []


@pytest.mark.parametrize("entry", [m for m in MANIFEST if m["format"] != "torchscript"], ids=lambda m: m["file"])
def test_real_trained_checkpoint_has_no_error(entry: dict) -> None:
    path = REAL / entry["file"]
    doc = check_json(path)
    (f,) = doc["files"]
    errors = [x for x in f["findings"] if x["severity"] == "error"]
    assert not errors, errors
    assert doc["_exit"] == 0
    assert f["coverage"]["tensors_read"] == f["coverage"]["tensors_found"] > 0


def test_real_set_covers_what_the_issue_asks() -> None:
    assert len([m for m in MANIFEST if m["kind"] in ("original", "slice")]) >= 8
    covered = " ".join(c for m in MANIFEST for c in m["covers"]).lower()
    for what in ("batchnorm", "optimizer", "legacy"):
        assert what in covered, what
    assert any(m["format"] == "torch-legacy" for m in MANIFEST)
    assert any("fp16" in m["file"] or "bf16" in m["file"] for m in MANIFEST)


def test_real_subnormals_are_warnings_with_count_and_share() -> None:
    doc = check_json(REAL / "mobilenetv2_bottleneck_bn_slice.pt")
    subs = [x for x in doc["files"][0]["findings"] if x["code"] == "subnormal"]
    assert len(subs) >= 11 and all(x["severity"] == "warning" for x in subs)
    assert any("10 subnormal of 32 values (31.2%" in x["message"] for x in subs), subs
    adam = check_json(REAL / "resemblyzer_pretrained_slice.pt")
    assert adam["_exit"] == 0
    assert any(x["code"] == "subnormal" and "exp_avg" in x["tensor"] for x in adam["files"][0]["findings"])


def test_empty_tensors_warn_and_a_zero3_save_fails(tmp_path: Path) -> None:
    one = save_checkpoint(tmp_path / "one.pt", {"w": torch.randn(4, 4), "b": torch.zeros(0)})
    doc = check_json(one)
    assert doc["_exit"] == 0
    assert [(x["code"], x["severity"]) for x in doc["files"][0]["findings"]] == [("empty", "warning")]
    # the trace of an unconverted DeepSpeed ZeRO-3 save: parameters of shape (0,), buffers kept
    zero3 = {f"layers.{i}.weight": torch.empty(0) for i in range(12)}
    zero3 |= {f"layers.{i}.running_mean": torch.zeros(8) for i in range(12)}
    path = save_checkpoint(tmp_path / "mp_rank_00_model_states.pt", zero3)
    doc = check_json(path)
    assert doc["_exit"] == 1
    empties = [x for x in doc["files"][0]["findings"] if x["code"] == "empty"]
    assert len(empties) == 12 and all(x["severity"] == "error" for x in empties)
    assert "ZeRO-3" in empties[0]["message"]


# ---------------------------------------------------------------------------
# silent changes: views that share storage


def test_reinit_of_a_view_is_refused_unless_with_tied(tmp_path: Path) -> None:
    base = torch.randn(6, 4)
    path = tmp_path / "qkv.pt"
    torch.save({"qkv": base, "q": base[0:1]}, path)
    before = path.read_bytes()
    r = run_cli("reinit", path, "--match", "^q$", "--scheme", "zeros")
    assert r.exit_code == 2 and "qkv" in r.stderr and "--with-tied" in r.stderr, r.stderr
    assert path.read_bytes() == before

    doc = run_cli("inspect", path, "--format", "json").json()
    tied = {t["name"]: t["tied_with"] for t in doc["tensors"]}
    assert tied == {"qkv": ["q"], "q": ["qkv"]}
    assert doc["summary"]["tied"] == [["qkv", "q"]]

    r = run_cli("reinit", path, "--match", "^q$", "--scheme", "normal", "--with-tied", "--seed", "1")
    assert r.exit_code == 0, r.stderr
    new = torch.load(path, weights_only=True)
    assert new["q"].untyped_storage().data_ptr() == new["qkv"].untyped_storage().data_ptr()
    assert torch.equal(new["q"], new["qkv"][0:1]) and not torch.equal(new["qkv"], base)
    # drawn once, from the root, as a plain reinit of qkv alone would draw it
    alone = tmp_path / "alone.pt"
    torch.save({"qkv": base.clone()}, alone)
    assert run_cli("reinit", alone, "--match", "qkv", "--scheme", "normal", "--seed", "1").exit_code == 0
    assert torch.equal(torch.load(alone, weights_only=True)["qkv"], new["qkv"])


def test_interleaved_chunks_are_not_tied(tmp_path: Path) -> None:
    x = torch.randn(4, 6)
    path = tmp_path / "chunks.pt"
    torch.save({"a": x[:, 0::2], "b": x[:, 1::2]}, path)
    doc = run_cli("inspect", path, "--format", "json").json()
    assert [t["tied_with"] for t in doc["tensors"]] == [[], []]
    r = run_cli("reinit", path, "--match", "^a$", "--scheme", "zeros", "--out", tmp_path / "o.pt")
    assert r.exit_code == 0, r.stderr
    new = torch.load(tmp_path / "o.pt", weights_only=True)
    assert torch.equal(new["b"], x[:, 1::2]) and not new["a"].any()


# ---------------------------------------------------------------------------
# bounded work on small hostile files


def _fraction_pickle(path: Path, fmt: str) -> Path:
    """A small file holding ``Fraction("1e1000000000")``: the allowlisted type, built from a
    string that evaluates into a billion-digit number (hours of work for ``fractions``)."""
    torch.save({"w": torch.ones(2, 2), "hp": Fraction(1, 3)}, path, _use_new_zipfile_serialization=fmt == "zip")
    # torch.save pickles Fraction(1, 3) as REDUCE(Fraction, (1, 3)): make the arguments that string
    args, evil = b"K\x01K\x03\x86", b"X\x0c\x00\x00\x001e1000000000\x85"
    if fmt == "zip":
        with zipfile.ZipFile(path) as z:
            members = [(i.filename, z.read(i)) for i in z.infolist()]
        with zipfile.ZipFile(path, "w") as out:
            for name, data in members:
                if name.endswith("data.pkl"):
                    assert data.count(args) == 1
                    data = data.replace(args, evil)
                out.writestr(name, data)
    else:
        raw = path.read_bytes()
        assert raw.count(args) == 1
        path.write_bytes(raw.replace(args, evil))
    return path


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_allowlisted_fraction_is_never_evaluated(tmp_path: Path, fmt: str) -> None:
    path = _fraction_pickle(tmp_path / f"frac_{fmt}.pt", fmt)
    assert path.stat().st_size < 2000
    start = time.monotonic()
    r = run_cli("inspect", path, "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert [t["name"] for t in r.json()["tensors"]] == ["w"]
    r = run_cli("reinit", path, "--match", "w", "--scheme", "zeros", "--out", tmp_path / "o.pt")  # the write path
    assert r.exit_code == 0, r.stderr
    assert time.monotonic() - start < 20
    # the value is kept as the file held it, not evaluated
    with zipfile.ZipFile(tmp_path / "o.pt") as z:
        assert any(b"1e1000000000" in z.read(n) for n in z.namelist() if n.endswith("data.pkl"))


def test_fifo_and_device_inputs_are_errors_not_hangs(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    start = time.monotonic()
    r = run_cli("inspect", fifo)
    assert r.exit_code == 2 and "FIFO" in r.stderr
    idx = tmp_path / "idx" / "model.safetensors.index.json"
    idx.parent.mkdir()
    os.mkfifo(idx)
    r = run_cli("inspect", idx)
    assert r.exit_code == 2 and "not a regular file" in r.stderr, r.stderr
    r = run_cli("inspect", "/dev/zero")
    assert r.exit_code == 2 and "character device" in r.stderr
    doc = check_json(fifo, "/dev/zero")
    assert [f["findings"][0]["code"] for f in doc["files"]] == ["unreadable", "unreadable"]
    assert time.monotonic() - start < 20


@pytest.mark.slow
def test_pickle_object_bomb_is_refused_quickly(tmp_path: Path) -> None:
    # 9 million empty lists from 9 MB of pickle: gigabytes of objects without a count
    body = b"\x80\x02" + b"]" * 9_000_000 + b"."
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", body)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    start = time.monotonic()
    r = run_cli("inspect", path)
    assert r.exit_code == 2 and "objects" in r.stderr, r.stderr
    assert time.monotonic() - start < 60


# ---------------------------------------------------------------------------
# refusals name every global at once


def _lightning_like(path: Path) -> Path:
    ckpt = {
        "state_dict": {"fc.weight": torch.randn(3, 3)},
        "hyper_parameters": {"cfg": ConfigNode({"lr": 0.1}), "opt": Hyper(0.1, "adam"), "size": Point(1, 2)},
        "callbacks": ListNode([1, 2]),
        "epoch": 3,
    }
    torch.save(ckpt, path)
    return path


def test_every_refused_global_is_named_in_one_run(tmp_path: Path) -> None:
    path = _lightning_like(tmp_path / "l.ckpt")
    needed = [
        "pinit_test_objects.ConfigNode",
        "pinit_test_objects.Hyper",
        "pinit_test_objects.Point",
        "pinit_test_objects.ListNode",
    ]
    r = run_cli("inspect", path)
    assert r.exit_code == 2
    for g in needed:
        assert f"--allow-global {g}" in r.stderr, r.stderr
    doc = check_json(path)
    (finding,) = doc["files"][0]["findings"]
    assert sorted(finding["globals"]) == sorted(needed)
    # one rerun with everything it named is enough
    flags = [a for g in needed for a in ("--allow-global", g)]
    r = run_cli("inspect", path, *flags, "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert [t["name"] for t in r.json()["tensors"]] == ["state_dict.fc.weight"]


def test_a_malicious_file_is_named_as_code_execution(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            import os

            return (os.system, ("true",))

    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "x": Evil(), "cfg": Hyper(0.1, "a")}, path)
    r = run_cli("inspect", path)
    assert r.exit_code == 2
    assert "'posix.system'" in r.stderr and "code execution" in r.stderr
    assert "--allow-global posix.system" not in r.stderr and "--allow-global" not in r.stderr
    assert "pinit_test_objects.Hyper" in r.stderr  # the other global it needs is still named


def test_diff_reports_ties_a_conversion_broke(tmp_path: Path) -> None:
    emb = torch.randn(5, 3)
    a = tmp_path / "a.pt"
    torch.save({"embed.weight": emb, "lm_head.weight": emb, "b": torch.ones(2)}, a)
    b = save_checkpoint(
        tmp_path / "b.safetensors", {"embed.weight": emb, "lm_head.weight": emb.clone(), "b": torch.ones(2)}
    )
    r = run_cli("diff", a, b, "--format", "json")
    assert r.exit_code == 0, r.stdout  # values equal
    doc = r.json()
    assert doc["ties"] == {"only_in_a": [["embed.weight", "lm_head.weight"]], "only_in_b": []}
    same = run_cli("diff", a, a, "--format", "json").json()
    assert same["ties"] == {"only_in_a": [], "only_in_b": []}


# ---------------------------------------------------------------------------
# found by review: no verdict on what was not compared, checked or allowed


def test_diff_refuses_what_it_did_not_read(tmp_path: Path) -> None:
    m = torch.jit.script(torch.nn.Linear(2, 2))
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.jit.save(m, str(a))
    with torch.no_grad():
        m.weight.fill_(float("nan"))
    torch.jit.save(m, str(b))
    r = run_cli("diff", a, b, "--format", "json")  # TorchScript is read now: a real comparison
    assert r.exit_code == 1, r.stderr
    changed = {t["name"] for t in r.json()["tensors"] if t["status"] != "identical"}
    assert changed == {"weight"}, r.stdout
    q = _quantized_script(tmp_path / "q.pt")
    r = run_cli("diff", q, q)
    assert r.exit_code == 2 and "cannot compare" in r.stderr, r.stderr
    plain = save_checkpoint(tmp_path / "p.pt", {"w": torch.ones(2)})
    r = run_cli("diff", plain, plain, "--match", "zzz")
    assert r.exit_code == 2 and "zzz" in r.stderr


def test_check_that_excludes_everything_checks_nothing(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "l.pt", {"state_dict": {"w": torch.full((2, 2), float("nan"))}})
    doc = check_json(path, "--exclude", "state")
    assert doc["_exit"] == 1
    assert doc["files"][0]["findings"][0]["code"] == "no_tensors"


def test_small_zero3_save_fails(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "z.pt", {"module": {f"l{i}.weight": torch.empty(0) for i in range(7)}})
    doc = check_json(path)
    assert doc["_exit"] == 1
    assert {x["severity"] for x in doc["files"][0]["findings"]} == {"error"}


def test_optimizer_moments_keyed_by_parameter_name_are_decaying_statistics(tmp_path: Path) -> None:
    m = torch.randn(100, 8)
    m[:50] = 0.0  # never-seen rows
    m[50:65] = 5.6e-45  # stalled rows
    sd = {"optimizer": {"state": {"embed.weight": {"exp_avg": m.clone()}}}, "model": {"embed.weight": m.clone()}}
    path = save_checkpoint(tmp_path / "fqn.pt", sd)
    r = run_cli("check", path, "--format", "json")
    got = {(x["tensor"], x["code"], x["severity"]) for x in r.json()["files"][0]["findings"]}
    assert ("optimizer.state.embed.weight.exp_avg", "subnormal", "warning") in got
    assert ("model.embed.weight", "uninitialized", "error") in got  # the same values in a weight are garbage


def test_reinit_of_a_broadcast_view_is_refused_before_any_work(tmp_path: Path) -> None:
    path = tmp_path / "e.pt"
    torch.save({"w": torch.zeros(1).expand(20000, 20000), "b": torch.randn(3)}, path)
    start = time.monotonic()
    r = run_cli("reinit", path, "--match", "^w$", "--scheme", "normal", "--out", tmp_path / "o.pt")
    assert r.exit_code == 2 and "broadcast" in r.stderr, r.stderr
    assert time.monotonic() - start < 10 and not (tmp_path / "o.pt").exists()


@pytest.mark.slow
def test_a_long_pickle_of_no_objects_is_refused_quickly(tmp_path: Path) -> None:
    path = tmp_path / "ops.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02" + b"N0" * 30_000_000 + b"}.")
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    assert path.stat().st_size < 1 << 20
    start = time.monotonic()
    r = run_cli("inspect", path)
    assert r.exit_code == 2 and "opcodes" in r.stderr, r.stderr
    assert time.monotonic() - start < 30


def test_a_folder_whose_index_is_a_fifo_says_so(tmp_path: Path) -> None:
    import os

    save_checkpoint(tmp_path / "model-00001-of-00002.safetensors", {"a": torch.ones(2)})
    save_checkpoint(tmp_path / "model-00002-of-00002.safetensors", {"b": torch.ones(2)})
    os.mkfifo(tmp_path / "model.safetensors.index.json")
    r = run_cli("inspect", tmp_path)
    assert r.exit_code == 2 and "FIFO" in r.stderr, r.stderr


def test_tied_with_lists_only_views_that_share_bytes(tmp_path: Path) -> None:
    qkv = torch.randn(12, 4)
    path = tmp_path / "qkv.pt"
    torch.save({"qkv": qkv, "q": qkv[0:4], "k": qkv[4:8]}, path)
    doc = run_cli("inspect", path, "--format", "json").json()
    assert {t["name"]: t["tied_with"] for t in doc["tensors"]} == {"qkv": ["q", "k"], "q": ["qkv"], "k": ["qkv"]}
    text = run_cli("inspect", path, "--no-stats").stdout
    assert "shares storage: qkv, q, k" in text and "(= " not in text
