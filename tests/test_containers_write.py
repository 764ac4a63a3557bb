"""Write-back of every torch container (issue #12's acceptance), through the real CLI.

For a module saved whole, the same model scripted and traced (``torch.jit.save``), and a
``torch.distributed.checkpoint`` folder: ``reinit`` changes exactly the selected tensors (their
values equal ``torch.nn.init`` with the documented generator), every other zip member is
byte-identical, the output loads with the loader that fits (``torch.load``, ``torch.jit.load``,
``dcp.load``), and ``diff`` against the input names exactly the selected tensors.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

import pinit_test_objects as objs
from conftest import run_cli
from test_reinit_io import expected

SEED = 3


def tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    m = objs.TinyNet()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.num_batches_tracked.fill_(7)
    return m.eval()


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None  # every CRC right
        return {i.filename: zf.read(i) for i in zf.infolist()}


def changed_in_diff(a: Path, b: Path) -> set[str]:
    r = run_cli("diff", a, b, "--format", "json")
    assert r.exit_code in (0, 1), r.stderr
    return {t["name"] for t in r.json()["tensors"] if t["status"] != "identical"}


def reinit(path: Path, *args: str | Path) -> None:
    r = run_cli("reinit", path, "--match", r"^conv\.weight$", "--scheme", "normal", "--seed", str(SEED), *args)
    assert r.exit_code == 0, r.stderr


def storage_records(before: dict[str, bytes], after: dict[str, bytes]) -> set[str]:
    assert before.keys() == after.keys()
    return {k for k in before if before[k] != after[k]}


@pytest.mark.parametrize("kind", ["whole", "script", "trace"])
@pytest.mark.parametrize("where", ["in_place", "out_pt"])
def test_zip_containers_rewrite_only_the_selected_record(tmp_path: Path, kind: str, where: str) -> None:
    m = tiny_net()
    src = tmp_path / f"{kind}.pt"
    if kind == "whole":
        torch.save(m, src)
    else:
        sm = torch.jit.script(m) if kind == "script" else torch.jit.trace(m, torch.randn(1, 1, 5, 5))
        torch.jit.save(sm, str(src))
    original = tmp_path / "original.pt"
    original.write_bytes(src.read_bytes())
    before = members(src)
    out = src if where == "in_place" else tmp_path / "out.pt"
    reinit(src, *([] if where == "in_place" else ["--out", out]))
    if where == "out_pt":
        assert src.read_bytes() == original.read_bytes()
    after = members(out)
    changed = storage_records(before, after)
    assert len(changed) == 1 and "/data/" in next(iter(changed)), changed  # one storage record, nothing else

    want = expected((2, 1, 3, 3), "normal", SEED, "conv.weight")
    if kind == "whole":
        new = torch.load(out, weights_only=False)  # the test's own class: a full load, in the test only
        old = torch.load(original, weights_only=False)
        new_sd, old_sd = new.state_dict(), old.state_dict()
        assert new.label == "tiny" and new.width == 2  # module attributes kept
    else:
        new_sd, old_sd = torch.jit.load(str(out)).state_dict(), torch.jit.load(str(original)).state_dict()
        x = torch.randn(1, 1, 5, 5)
        torch.jit.load(str(out))(x)  # the code still runs on the new weights
    assert list(new_sd) == list(old_sd)
    for name in old_sd:
        if name == "conv.weight":
            assert torch.equal(new_sd[name], want), name
        else:
            assert torch.equal(new_sd[name], old_sd[name]), name
    assert changed_in_diff(original, out) == {"conv.weight"}


@pytest.mark.parametrize("kind", ["whole", "script"])
def test_zip_containers_convert_to_safetensors(tmp_path: Path, kind: str) -> None:
    from safetensors.torch import load_file

    m = tiny_net()
    src = tmp_path / f"{kind}.pt"
    if kind == "whole":
        torch.save(m, src)
        ref = m.state_dict()
    else:
        sm = torch.jit.script(m)
        torch.jit.save(sm, str(src))
        ref = torch.jit.load(str(src)).state_dict()
    out = tmp_path / "out.safetensors"
    r = run_cli("reinit", src, "--match", r"^conv\.weight$", "--scheme", "normal", "--seed", str(SEED), "--out", out)
    assert r.exit_code == 0, r.stderr
    got = load_file(str(out))
    assert list(got) == list(ref)
    for name, t in ref.items():
        want = expected(tuple(t.shape), "normal", SEED, name) if name == "conv.weight" else t
        assert torch.equal(got[name], want), name
    assert changed_in_diff(src, out) == {"conv.weight"}


def test_cuda_location_survives_every_container_rewrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole module saved with its storages on cuda:0 (the location strings of a CPU save,
    rewritten as torch writes them): the pickle is kept byte for byte, so is the location."""
    import torch.serialization as ser

    m = tiny_net()
    src = tmp_path / "gpu.pt"
    monkeypatch.setattr(ser, "location_tag", lambda storage: "cuda:0")
    torch.save(m, src)
    monkeypatch.undo()
    pkl = next(v for k, v in members(src).items() if k.endswith("data.pkl"))
    assert b"cuda:0" in pkl
    reinit(src)
    assert next(v for k, v in members(src).items() if k.endswith("data.pkl")) == pkl
    new = torch.load(src, weights_only=False, map_location="cpu")
    assert torch.equal(new.state_dict()["conv.weight"], expected((2, 1, 3, 3), "normal", SEED, "conv.weight"))


def _dcp_folder(folder: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    sd = {"model": model.state_dict(), "epoch": 2}
    dcp.save(sd, checkpoint_id=str(folder))
    return sd


def test_dcp_reinit_in_place_loads_in_dcp_and_diff_names_the_selection(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    _dcp_folder(folder)
    copy = tmp_path / "before"
    copy.mkdir()
    for f in folder.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    r = run_cli("reinit", folder, "--match", r"^model\.0\.weight$", "--scheme", "normal", "--seed", str(SEED))
    assert r.exit_code == 0, r.stderr
    assert (folder / ".metadata").read_bytes() == (copy / ".metadata").read_bytes()
    template = {"model": torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3)).state_dict(), "epoch": 0}
    dcp.load(template, checkpoint_id=str(folder))
    old = {"model": torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3)).state_dict(), "epoch": 0}
    dcp.load(old, checkpoint_id=str(copy))
    for name, t in old["model"].items():
        want = expected((3, 4), "normal", SEED, "model.0.weight") if name == "0.weight" else t
        assert torch.equal(template["model"][name], want), name
    assert changed_in_diff(copy, folder) == {"model.0.weight"}
