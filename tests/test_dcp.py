"""``torch.distributed.checkpoint`` (DCP) folders: read, checked, compared and rewritten (SPEC 1, 5).

Fixtures are written by torch's own ``torch.distributed.checkpoint.save`` in this one process.
Several chunks per tensor (what FSDP / tensor-parallel training writes, one chunk per rank) come
from a ``DefaultSavePlanner`` subclass that plans each tensor as several SHARD write items, as a
``ShardedTensor`` would: torch's writer (``FileSystemWriter``, two threads so two ``.distcp``
files), its global-plan validation (chunks must tile the tensor) and its metadata are all torch's.
Everything pinit reports is compared with torch's own loading (``dcp_to_torch_save`` then
``torch.load``, or ``dcp.load`` into a template state dict).
"""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex
from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType

from conftest import run_cli

warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

Splits = dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]]


class SplitPlanner(DefaultSavePlanner):
    """Plans the tensors named in ``splits`` as several chunks (offsets, sizes) each."""

    def __init__(self, splits: Splits) -> None:
        super().__init__()
        self.splits = splits

    def create_local_plan(self) -> Any:
        plan = super().create_local_plan()
        items = []
        for wi in plan.items:
            chunks = self.splits.get(wi.index.fqn) if wi.type != WriteItemType.BYTE_IO else None
            if not chunks:
                items.append(wi)
                continue
            for off, size in chunks:
                items.append(
                    WriteItem(
                        index=MetadataIndex(wi.index.fqn, torch.Size(off)),
                        type=WriteItemType.SHARD,
                        tensor_data=TensorWriteData(
                            chunk=ChunkStorageMetadata(torch.Size(off), torch.Size(size)),
                            properties=wi.tensor_data.properties,
                            size=wi.tensor_data.size,
                        ),
                    )
                )
        self.plan = dataclasses.replace(plan, items=items)
        return self.plan

    def lookup_object(self, index: MetadataIndex) -> Any:
        for off, size in self.splits.get(index.fqn, []):
            if index.offset is not None and tuple(index.offset) == tuple(off):
                return self.state_dict[index.fqn][tuple(slice(o, o + n) for o, n in zip(off, size))]
        return super().lookup_object(index)


def _model_state() -> dict[str, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.LayerNorm(6), torch.nn.Linear(6, 4))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(3, 8)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optim": opt.state_dict(), "epoch": 7, "note": "hello"}


def save_simple(folder: Path) -> Path:
    dcp.save(_model_state(), checkpoint_id=str(folder))
    return folder


SPLITS: Splits = {
    "big": [((0, 0), (4, 3)), ((0, 3), (4, 5)), ((4, 0), (2, 8))],  # both dimensions split
    "rows": [((0, 0), (3, 4)), ((3, 0), (4, 4)), ((7, 0), (3, 4))],  # dim 0, as FSDP
    "cube": [((0, 0, 0), (2, 2, 3)), ((0, 2, 0), (2, 4, 3))],  # a middle dimension
    "tposed": [((0, 0), (6, 4)), ((0, 4), (6, 4))],  # chunks stored with transposed strides
}


def save_chunked(folder: Path) -> Path:
    torch.manual_seed(1)
    sd = {
        "big": torch.randn(6, 8),
        "rows": torch.randn(10, 4),
        "cube": torch.randn(2, 6, 3, dtype=torch.float64),
        "tposed": torch.randn(8, 6).t(),
        "whole_t": torch.randn(5, 3).t(),  # one chunk, non-contiguous (torch keeps its strides)
        "ints": torch.arange(12, dtype=torch.int64).reshape(3, 4),
        "half": torch.randn(7, dtype=torch.bfloat16),
        "scalar": torch.tensor(2.5),
        "step": 11,
    }
    writer = dcp.FileSystemWriter(str(folder), thread_count=2)
    dcp.save(sd, storage_writer=writer, planner=SplitPlanner(SPLITS))
    return folder


def torch_view(folder: Path, tmp: Path) -> dict[str, Any]:
    """What torch reads: ``dcp_to_torch_save`` into a .pt, loaded back, flattened as DCP names."""
    pt = tmp / f"{folder.name}-torch.pt"
    dcp_to_torch_save(str(folder), str(pt))
    obj = torch.load(pt, weights_only=False)
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, torch.Tensor):
            flat[prefix] = node
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{prefix}.{i}" if prefix else str(i))

    walk(obj, "")
    return flat


def _values(t: torch.Tensor) -> list[Any]:
    out = []
    for v in t.detach().flatten().tolist():
        out.append(v if not isinstance(v, bool) else int(v))
    return out


def _assert_matches_torch(folder: Path, tmp: Path) -> dict[str, Any]:
    expected = torch_view(folder, tmp)
    r = run_cli("inspect", folder, "--format", "json", "--values", "1000")
    assert r.exit_code == 0, r.stderr
    doc = r.json()
    assert doc["format"] == "dcp"
    got = {t["name"]: t for t in doc["tensors"]}
    assert set(got) == set(expected)
    for name, t in expected.items():
        g = got[name]
        assert g["shape"] == list(t.shape), name
        assert g["dtype"] == str(t.dtype).removeprefix("torch."), name
        want = _values(t.float() if t.dtype == torch.bfloat16 else t)
        assert g["values"] == pytest.approx(want, rel=0, abs=0), name
        if t.is_floating_point() and t.numel() > 1:
            assert g["stats"]["mean"] == pytest.approx(t.double().mean().item(), rel=1e-6), name
    assert doc["summary"]["coverage"]["tensors_read"] == len(expected)
    return expected


def test_simple_folder_matches_torch(tmp_path: Path) -> None:
    folder = save_simple(tmp_path / "ck")
    expected = _assert_matches_torch(folder, tmp_path)
    assert "model.0.weight" in expected and "optim.state.0.exp_avg" in expected
    # the .metadata file itself names the checkpoint too
    r = run_cli("inspect", folder / ".metadata", "--format", "json", "--no-stats")
    assert r.exit_code == 0, r.stderr
    assert {t["name"] for t in r.json()["tensors"]} == set(expected)


def test_chunked_folder_matches_torch(tmp_path: Path) -> None:
    folder = save_chunked(tmp_path / "ck")
    assert len(list(folder.glob("*.distcp"))) == 2
    md = dcp.FileSystemReader(str(folder)).read_metadata()
    assert len(md.state_dict_metadata["big"].chunks) == 3  # torch really wrote several chunks
    _assert_matches_torch(folder, tmp_path)


def test_check_passes_healthy_and_flags_nan(tmp_path: Path) -> None:
    folder = save_chunked(tmp_path / "ok")
    r = run_cli("check", folder, "--format", "json")
    assert r.exit_code == 0, r.stdout + r.stderr
    bad = tmp_path / "bad"
    sd = {"w": torch.randn(6, 8), "b": torch.randn(8)}
    sd["w"][5, 7] = float("nan")  # in the last chunk
    dcp.save(sd, storage_writer=dcp.FileSystemWriter(str(bad)), planner=SplitPlanner({"w": SPLITS["big"]}))
    r = run_cli("check", bad, "--format", "json")
    assert r.exit_code == 1, r.stdout + r.stderr
    assert "nan" in r.stdout and '"w"' in r.stdout


def test_diff_against_torch_conversion_is_equal(tmp_path: Path) -> None:
    folder = save_chunked(tmp_path / "ck")
    pt = tmp_path / "conv.pt"
    dcp_to_torch_save(str(folder), str(pt))
    r = run_cli("diff", folder, pt, "--format", "json")
    # dcp_to_torch_save keeps the non-tensor "step"; diff compares tensors
    assert r.exit_code == 0, r.stdout + r.stderr


def test_reinit_out_safetensors(tmp_path: Path) -> None:
    folder = save_chunked(tmp_path / "ck")
    expected = torch_view(folder, tmp_path)
    out = tmp_path / "out.safetensors"
    r = run_cli("reinit", folder, "--match", "^big$", "--scheme", "zeros", "--out", out)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "step" in r.stderr  # the non-tensor value is named as dropped
    got = load_file(str(out))
    assert set(got) == set(expected)
    assert torch.equal(got["big"], torch.zeros(6, 8))
    for name, t in expected.items():
        if name != "big":
            assert torch.equal(got[name], t.contiguous()), name


def _assert_same_tree(a: Any, b: Any, path: str = "", differ: frozenset[str] = frozenset()) -> None:
    """``a`` and ``b`` hold the same containers (types, keys in order), values and tensors
    (dtype, shape, and values except at the paths in ``differ``)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and (a.dtype, a.shape) == (b.dtype, b.shape), path
        assert torch.equal(a, b) != (path in differ), path
        return
    assert type(a) is type(b), (path, type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b), (path, list(a), list(b))
        for k in a:
            _assert_same_tree(a[k], b[k], f"{path}.{k}" if path else str(k), differ)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tree(x, y, f"{path}.{i}" if path else str(i), differ)
    else:
        assert a == b, (path, a, b)


def test_reinit_out_pt_is_what_dcp_to_torch_save_writes(tmp_path: Path) -> None:
    """The .pt is the nested state dict of ``dcp_to_torch_save``, non-tensor values included
    (optimizer param_groups, epoch, a list holding tensors), read with weights_only=True."""
    state = _model_state()
    state["mixed"] = [torch.ones(2), {"a": torch.zeros(1)}, "text"]
    dcp.save(state, checkpoint_id=str(tmp_path / "ck"))
    folder = tmp_path / "ck"
    torch_pt = tmp_path / "torch.pt"
    dcp_to_torch_save(str(folder), str(torch_pt))
    expected = torch.load(torch_pt, weights_only=False)
    out = tmp_path / "out.pt"
    r = run_cli("reinit", folder, "--match", r"^model\.0\.bias$", "--scheme", "ones", "--out", out)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "not written" not in r.stderr, r.stderr
    got = torch.load(out, weights_only=True)
    assert torch.equal(got["model"]["0.bias"], torch.ones(6))
    _assert_same_tree(expected, got, differ=frozenset({"model.0.bias"}))
    assert got["optim"]["param_groups"][0]["betas"] == (0.9, 0.999) and got["epoch"] == 7
    r = run_cli("diff", folder, out, "--format", "json")  # the nested .pt reads back under DCP's names
    assert r.exit_code == 1, r.stdout + r.stderr
    changed = [t["name"] for t in r.json()["tensors"] if t["status"] != "identical"]
    assert changed == ["model.0.bias"], changed


def test_reinit_out_pt_names_values_it_leaves_out(tmp_path: Path) -> None:
    """A non-tensor value pinit does not unpickle (over 1 MiB) is named and left out; the rest
    is written."""
    dcp.save({"w": torch.ones(3), "blob": "x" * (2 << 20), "step": 3}, checkpoint_id=str(tmp_path / "ck"))
    out = tmp_path / "out.pt"
    r = run_cli("reinit", tmp_path / "ck", "--match", "^w$", "--scheme", "zeros", "--out", out)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "not written" in r.stderr and "blob" in r.stderr, r.stderr
    got = torch.load(out, weights_only=True)
    assert set(got) == {"w", "step"} and got["step"] == 3 and torch.equal(got["w"], torch.zeros(3))


@pytest.mark.parametrize(
    ("planner_data", "message"),
    [
        ({"model.0.weight": ("model", 10**12)}, "invalid object path"),  # would build a huge list
        ({"model.0.weight": ("model", True)}, "invalid object path"),
        ({"model.0.weight": ("epoch", "x")}, "contradicts"),  # a key below the value 7
        ({"model.0.weight": ("epoch",)}, "contradicts"),  # two items at one place
        # each index within bounds, but together they would pad lists with millions of Nones
        ({n: ("pad", i, *(60000,) * 4) for i, n in enumerate(("model.0.weight", "model.0.bias", "epoch"))}, "gaps"),
    ],
)
def test_hostile_object_paths_are_clean_errors(tmp_path: Path, planner_data: dict[str, Any], message: str) -> None:
    folder = save_simple(tmp_path / "ck")
    md = dcp.FileSystemReader(str(folder)).read_metadata()
    md.planner_data.update(planner_data)
    (folder / ".metadata").write_bytes(pickle.dumps(md))
    r = run_cli("reinit", folder, "--match", r"^model\.0\.bias$", "--scheme", "ones", "--out", tmp_path / "o.pt")
    assert r.exit_code == 2, r.stdout + r.stderr
    assert r.stderr.startswith("error:") and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert ".metadata" in r.stderr, r.stderr  # the file is named
    assert not (tmp_path / "o.pt").exists()


def test_reinit_out_pt_keeps_torch_values_and_names_what_weights_only_refuses(tmp_path: Path) -> None:
    """dtypes and torch.Size values are written back as torch's own globals (what weights_only
    admits); an argparse.Namespace is written as dcp_to_torch_save writes it, with a warning that
    weights_only refuses it; a torch.device (which pinit does not unpickle) is left out, named."""
    import argparse

    state = {
        "w": torch.ones(2),
        "cfg": {"param_dtype": torch.bfloat16, "size": torch.Size([2, 3]), "tags": {"a", "b"}, "raw": b"xy"},
        "dtype": torch.float16,
        "args": argparse.Namespace(lr=0.1),
        "device": torch.device("cpu"),
    }
    dcp.save(state, checkpoint_id=str(tmp_path / "ck"))
    torch_pt = tmp_path / "torch.pt"
    dcp_to_torch_save(str(tmp_path / "ck"), str(torch_pt))
    expected = torch.load(torch_pt, weights_only=False)
    out = tmp_path / "out.pt"
    r = run_cli("reinit", tmp_path / "ck", "--match", "^w$", "--scheme", "zeros", "--out", out)
    assert r.exit_code == 0, r.stdout + r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert any("not written" in line and line.endswith(": device") for line in lines), lines
    assert any("argparse.Namespace" in line and "weights_only=True" in line for line in lines), lines
    got = torch.load(out, weights_only=False)
    del expected["device"]
    _assert_same_tree(expected, got, differ=frozenset({"w"}))
    assert type(got["cfg"]["size"]) is torch.Size and got["dtype"] is torch.float16
    assert got["args"] == argparse.Namespace(lr=0.1)
    with torch.serialization.safe_globals([argparse.Namespace]):
        assert torch.load(out, weights_only=True)["cfg"]["param_dtype"] is torch.bfloat16
    r = run_cli("check", out, "--format", "json")  # pinit reads its own output
    assert r.exit_code == 0, r.stdout + r.stderr


def _item_bytes(folder: Path) -> dict[tuple[str, tuple[int, ...] | None], bytes]:
    md = dcp.FileSystemReader(str(folder)).read_metadata()
    out = {}
    for idx, info in md.storage_data.items():
        with open(folder / info.relative_path, "rb") as f:
            f.seek(info.offset)
            out[(idx.fqn, None if idx.offset is None else tuple(idx.offset))] = f.read(info.length)
    return out


def _template(folder: Path) -> dict[str, Any]:
    md = dcp.FileSystemReader(str(folder)).read_metadata()
    sd: dict[str, Any] = {}
    for name, m in md.state_dict_metadata.items():
        if hasattr(m, "chunks"):
            sd[name] = torch.full(tuple(m.size), 99, dtype=m.properties.dtype)
    return sd


def test_reinit_in_place(tmp_path: Path) -> None:
    folder = save_chunked(tmp_path / "ck")
    before_items = _item_bytes(folder)
    before_md = (folder / ".metadata").read_bytes()
    old = _template(folder)
    dcp.load(old, checkpoint_id=str(folder))
    # the same seed, scheme and name give the same values whatever the output (SPEC 5): drawn here
    ref_out = tmp_path / "ref.safetensors"
    args = ("--match", "^(big|tposed)$", "--scheme", "normal", "--seed", "5")
    assert run_cli("reinit", folder, *args, "--out", ref_out).exit_code == 0
    ref = load_file(str(ref_out))
    r = run_cli("reinit", folder, *args)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert (folder / ".metadata").read_bytes() == before_md
    new = _template(folder)
    dcp.load(new, checkpoint_id=str(folder))  # torch reads the patched archives (CRCs and all)
    for name in ("big", "tposed"):
        assert torch.equal(new[name], ref[name]), name
        assert not torch.equal(new[name], old[name]), name
    for name in new:
        if name not in ("big", "tposed"):
            assert torch.equal(new[name], old[name]), name
    after_items = _item_bytes(folder)
    for key, raw in before_items.items():
        if key[0] not in ("big", "tposed"):
            assert after_items[key] == raw, key  # every other chunk byte-identical
    # and the result reads back in pinit as torch reads it
    _assert_matches_torch(folder, tmp_path)
    # each rewritten chunk is still a valid zip for Python's zipfile (CRC checked on read)
    import zipfile

    md = dcp.FileSystemReader(str(folder)).read_metadata()
    for idx, info in md.storage_data.items():
        if idx.fqn in ("big", "tposed"):
            with open(folder / info.relative_path, "rb") as f:
                f.seek(info.offset)
                with zipfile.ZipFile(io.BytesIO(f.read(info.length))) as zf:
                    assert zf.testzip() is None


def test_reinit_in_place_rewrites_only_files_holding_selected(tmp_path: Path) -> None:
    folder = save_chunked(tmp_path / "ck")
    md = dcp.FileSystemReader(str(folder)).read_metadata()
    files = {info.relative_path for idx, info in md.storage_data.items() if idx.fqn == "rows"}
    others = {p.name: p.read_bytes() for p in folder.glob("*.distcp") if p.name not in files}
    inodes = {p.name: p.stat().st_ino for p in folder.glob("*.distcp")}
    r = run_cli("reinit", folder, "--match", "^rows$", "--scheme", "zeros")
    assert r.exit_code == 0, r.stdout + r.stderr
    for name, raw in others.items():
        assert (folder / name).read_bytes() == raw
        assert (folder / name).stat().st_ino == inodes[name]  # not even replaced
    for name in files:
        assert (folder / name).stat().st_ino != inodes[name]  # replaced atomically (a new file)
    sd = _template(folder)
    dcp.load(sd, checkpoint_id=str(folder))
    assert torch.equal(sd["rows"], torch.zeros(10, 4))
    assert not list(folder.glob(".pinit-tmp-*"))


def _hostile_metadata(folder: Path) -> None:
    class Evil:
        def __reduce__(self) -> Any:
            import os

            return (os.system, ("echo pwned",))

    md = dcp.FileSystemReader(str(folder)).read_metadata()
    md.storage_meta = Evil()  # type: ignore[assignment]
    (folder / ".metadata").write_bytes(pickle.dumps(md))


def test_hostile_metadata_refused(tmp_path: Path) -> None:
    folder = save_simple(tmp_path / "ck")
    _hostile_metadata(folder)
    r = run_cli("inspect", folder)
    assert r.exit_code == 2
    assert r.stderr.startswith("error:") and "system" in r.stderr and "code execution" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli("check", folder, "--format", "json")
    assert r.exit_code == 1 and "unreadable" in r.stdout


def test_chunk_offset_past_end_is_clean_error(tmp_path: Path) -> None:
    folder = save_chunked(tmp_path / "ck")
    md = dcp.FileSystemReader(str(folder)).read_metadata()
    for idx, info in md.storage_data.items():
        if idx.fqn == "big":
            info.offset += 10**9
    (folder / ".metadata").write_bytes(pickle.dumps(md))
    r = run_cli("inspect", folder)
    assert r.exit_code == 2
    assert r.stderr.startswith("error:") and "big" in r.stderr and "outside the file" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_overlapping_chunks_refused(tmp_path: Path) -> None:
    folder = save_chunked(tmp_path / "ck")
    md = dcp.FileSystemReader(str(folder)).read_metadata()
    chunks = md.state_dict_metadata["rows"].chunks
    chunks[1] = ChunkStorageMetadata(torch.Size([2, 0]), chunks[1].sizes)  # overlaps the first
    infos = {k: v for k, v in md.storage_data.items()}
    for k, v in infos.items():
        if k.fqn == "rows" and tuple(k.offset) == (3, 0):
            del md.storage_data[k]
            md.storage_data[MetadataIndex("rows", torch.Size([2, 0]))] = v
    (folder / ".metadata").write_bytes(pickle.dumps(md))
    r = run_cli("inspect", folder, "--no-stats")
    assert r.exit_code == 2
    assert "rows" in r.stderr and "overlap" in r.stderr


def test_corrupt_chunk_is_clean_error(tmp_path: Path) -> None:
    folder = save_chunked(tmp_path / "ck")
    md = dcp.FileSystemReader(str(folder)).read_metadata()
    info = next(v for k, v in md.storage_data.items() if k.fqn == "rows")
    path = folder / info.relative_path
    raw = bytearray(path.read_bytes())
    raw[info.offset : info.offset + 4] = b"XXXX"
    path.write_bytes(bytes(raw))
    r = run_cli("inspect", folder, "--format", "json")
    assert r.exit_code == 2, r.stdout
    assert r.stderr.startswith("error:") and "rows" in r.stderr
    shutil.rmtree(folder)


def test_chunk_that_is_a_view_with_storage_offset(tmp_path: Path) -> None:
    """torch's writer clones views before saving, but its reader takes any tensor torch.load gives:
    a chunk archive holding a view into a larger storage (placed here by hand) reads as torch reads it."""
    folder = save_chunked(tmp_path / "ck")
    md = dcp.FileSystemReader(str(folder)).read_metadata()
    key = next(k for k in md.storage_data if k.fqn == "rows" and tuple(k.offset) == (3, 0))
    info = md.storage_data[key]
    torch.manual_seed(3)
    backing = torch.randn(40)
    chunk = backing[5:21].view(4, 4)  # storage offset 5, in a 40-element storage
    buf = io.BytesIO()
    torch.save(chunk, buf)
    path = folder / info.relative_path
    with open(path, "ab") as f:
        info.offset = f.seek(0, 2)
        f.write(buf.getvalue())
    info.length = len(buf.getvalue())
    (folder / ".metadata").write_bytes(pickle.dumps(md))
    expected = _assert_matches_torch(folder, tmp_path)
    assert torch.equal(expected["rows"][3:7], chunk)
    # and written back in place: torch reads the new values through the view
    r = run_cli("reinit", folder, "--match", "^rows$", "--scheme", "ones")
    assert r.exit_code == 0, r.stdout + r.stderr
    sd = _template(folder)
    dcp.load(sd, checkpoint_id=str(folder))
    assert torch.equal(sd["rows"], torch.ones(10, 4))
    with open(path, "rb") as f:
        f.seek(info.offset)
        loaded = torch.load(io.BytesIO(f.read(info.length)), weights_only=True)
    assert loaded.storage_offset() == 5
    whole = torch.empty(0).set_(loaded.untyped_storage(), 0, (40,))
    assert torch.equal(whole[:5], backing[:5]) and torch.equal(whole[21:], backing[21:])  # outside the view: kept


def test_chunks_sharing_bytes_are_not_rewritten(tmp_path: Path) -> None:
    folder = save_chunked(tmp_path / "ck")
    md = dcp.FileSystemReader(str(folder)).read_metadata()
    first = next(v for k, v in md.storage_data.items() if k.fqn == "tposed" and tuple(k.offset) == (0, 0))
    second = next(k for k in md.storage_data if k.fqn == "tposed" and tuple(k.offset) == (0, 4))
    md.storage_data[second] = first  # both chunks read the same archive (a hostile metadata)
    (folder / ".metadata").write_bytes(pickle.dumps(md))
    _assert_matches_torch(folder, tmp_path)  # reading is what torch reads
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    r = run_cli("reinit", folder, "--match", "^tposed$", "--scheme", "zeros")
    assert r.exit_code == 2
    assert r.stderr.startswith("error:") and "tposed" in r.stderr and "shares its bytes" in r.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_transform_descriptors_refused(tmp_path: Path) -> None:
    folder = save_simple(tmp_path / "ck")
    md = dcp.FileSystemReader(str(folder)).read_metadata()
    for info in md.storage_data.values():
        info.transform_descriptors = ["stream.zstd"]
    (folder / ".metadata").write_bytes(pickle.dumps(md))
    r = run_cli("inspect", folder, "--no-stats")
    assert r.exit_code == 2
    assert r.stderr.startswith("error:") and "extensions" in r.stderr


def test_listing_and_statistics_do_not_import_torch(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    folder = save_chunked(tmp_path / "ck")
    probe = (
        "import sys\n"
        "from pinit.cli import main\n"
        "sys.argv = ['pinit', 'inspect', sys.argv[1], '--format', 'json'] + sys.argv[2:]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('\\nTORCH', any(m == 'torch' for m in sys.modules))\n"
    )
    for extra in ([], ["--no-stats"]):
        p = subprocess.run(
            [sys.executable, "-c", probe, str(folder), *extra], capture_output=True, text=True, timeout=60
        )
        assert p.returncode == 0, p.stderr
        doc, _, tail = p.stdout.rpartition("\nTORCH ")
        assert tail.strip() == "False", extra
        assert len(json.loads(doc)["tensors"]) == 8


def test_one_distcp_file_says_to_pass_the_folder(tmp_path: Path) -> None:
    folder = save_simple(tmp_path / "ck")
    one = next(folder.glob("*.distcp"))
    r = run_cli("check", one, "--format", "json")
    assert r.exit_code == 1  # unreadable for check: a finding of that file
    message = r.json()["files"][0]["findings"][0]["message"]
    assert "pass the folder" in message and "hostile" not in message, message


def test_non_tensor_values_are_shown_as_data(tmp_path: Path) -> None:
    folder = save_simple(tmp_path / "ck")
    r = run_cli("inspect", folder, "--meta", "--format", "json")
    assert r.exit_code == 0, r.stderr
    meta = json.dumps(r.json()["meta"])
    assert '"epoch": 7' in meta and '"note": "hello"' in meta, meta[:2000]
    assert '"optim.param_groups.0.lr": 0.001' in meta, meta[:2000]
