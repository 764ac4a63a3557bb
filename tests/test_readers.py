"""Readers (SPEC section 1): every input kind, through the core and through ``pinit inspect``.

Each checkpoint is built here with torch / safetensors, then read back twice: with
``pinit.checkpoint.open_checkpoint`` (names, dtypes, shapes, requires_grad, raw bytes) and with
``pinit inspect --format json`` (the same, plus ``--values``).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from conftest import assert_one_error_line, run_cli
from pinit.checkpoint import SafetensorsSource, open_checkpoint
from pinit.errors import PinitError
from pinit.flatten import flatten, get_path

# ---------------------------------------------------------------------------- helpers


def inspect_json(path: str | os.PathLike[str], *extra: str) -> dict[str, Any]:
    r = run_cli("inspect", path, "--format", "json", *extra)
    assert r.exit_code == 0, (r.exit_code, r.stderr)
    return r.json()


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in doc["tensors"]}


def raw_bytes(t: torch.Tensor) -> bytes:
    """The tensor's elements in row-major order, as stored bytes."""
    t = t.detach().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def expected_values(t: torch.Tensor) -> list[Any]:
    """What ``--values N`` should show: the elements in row-major order as JSON numbers."""
    flat = t.detach().reshape(-1)
    if flat.dtype == torch.bool:
        return [bool(v) for v in flat.tolist()]
    if flat.dtype.is_floating_point:
        return [float(v) for v in flat.double().tolist()]
    return [int(v) for v in flat.tolist()]


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def check_core(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], fmt: str) -> None:
    """open_checkpoint lists exactly ``tensors`` (in order) with their dtype, shape and bytes."""
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == fmt
        assert [e.name for e in ckpt.tensors] == list(tensors)
        for e in ckpt.tensors:
            t = tensors[e.name]
            assert e.dtype == dtype_name(t), e.name
            assert e.shape == tuple(t.shape), e.name
            assert e.numel == t.numel()
            assert e.read_bytes().tobytes() == raw_bytes(t), e.name


def check_cli(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], fmt: str) -> dict[str, Any]:
    """``inspect --format json --values`` shows the same names, dtypes, shapes and values."""
    doc = inspect_json(path, "--values", "64")
    assert doc["format"] == fmt
    assert [t["name"] for t in doc["tensors"]] == list(tensors)
    for row in doc["tensors"]:
        t = tensors[row["name"]]
        assert row["dtype"] == dtype_name(t)
        assert row["shape"] == list(t.shape)
        assert row["numel"] == t.numel()
        assert row["nbytes"] == t.numel() * t.element_size()
        assert row["values"] == expected_values(t)[:64], row["name"]
    assert doc["summary"]["tensors"] == len(tensors)
    return doc


def sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(4, generator=g),
        "fc.weight": torch.randn(2, 5, generator=g, dtype=torch.float64),
        "steps": torch.tensor([7, -3], dtype=torch.int64),
        "scalar": torch.tensor(2.5),
    }


# ---------------------------------------------------------------------------- safetensors


def test_safetensors_file(tmp_path: Path) -> None:
    tensors = sample_tensors()
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path), metadata={"k": "v"})
    # safetensors orders tensors by data offset, which save_file assigns by (dtype, name).
    with open_checkpoint(path) as ckpt:
        order = [e.name for e in ckpt.tensors]
        assert ckpt.source.metadata == {"k": "v"}
    assert sorted(order) == sorted(tensors)
    ordered = {n: tensors[n] for n in order}
    check_core(path, ordered, "safetensors")
    doc = check_cli(path, ordered, "safetensors")
    # safetensors records no requires_grad.
    assert all(t["requires_grad"] is None for t in doc["tensors"])


def test_safetensors_empty_and_zero_size_tensors(tmp_path: Path) -> None:
    path = tmp_path / "z.safetensors"
    tensors = {"empty": torch.zeros(0, 3), "one": torch.ones(1)}
    save_file(tensors, str(path))
    doc = inspect_json(path, "--values", "4")
    rows = by_name(doc)
    assert rows["empty"]["shape"] == [0, 3] and rows["empty"]["numel"] == 0
    assert rows["empty"]["values"] == []
    assert rows["one"]["values"] == [1.0]


# ---------------------------------------------------------------------------- torch zip


def test_torch_zip_state_dict(tmp_path: Path) -> None:
    tensors = sample_tensors()
    path = tmp_path / "m.pt"
    torch.save(tensors, path)
    check_core(path, tensors, "torch")
    doc = check_cli(path, tensors, "torch")
    assert all(t["requires_grad"] is None for t in doc["tensors"])


def test_requires_grad_recorded_only_where_the_file_records_it(tmp_path: Path) -> None:
    lin = nn.Linear(3, 2)
    frozen = nn.Parameter(torch.ones(2, 2), requires_grad=False)
    obj = {
        "param_trainable": lin.weight,  # nn.Parameter, requires_grad=True
        "param_frozen": frozen,  # nn.Parameter, requires_grad=False
        "plain_grad": torch.ones(3, requires_grad=True),  # plain tensor saved with requires_grad=True
        "plain": torch.ones(3),  # plain tensor: unknown
        "state_dict": lin.state_dict(),  # detached: unknown
    }
    expected = {
        "param_trainable": True,
        "param_frozen": False,
        "plain_grad": True,
        "plain": None,
        "state_dict.weight": None,
        "state_dict.bias": None,
    }
    for legacy in (False, True):
        path = tmp_path / f"rg_{legacy}.pt"
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        with open_checkpoint(path) as ckpt:
            assert {e.name: e.requires_grad for e in ckpt.tensors} == expected, legacy
        doc = inspect_json(path, "--no-stats")
        assert {t["name"]: t["requires_grad"] for t in doc["tensors"]} == expected, legacy


def test_non_contiguous_views_read_right(tmp_path: Path) -> None:
    base = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    tensors = {
        "column": base[:, 1],  # stride 4, offset 1
        "every_other": torch.arange(10, dtype=torch.int32)[1::2],
        "sub_block": base[1:3, 2:4],
        "base": base,
    }
    assert not tensors["column"].is_contiguous()
    for legacy in (False, True):
        path = tmp_path / f"views_{legacy}.pt"
        torch.save(tensors, path, _use_new_zipfile_serialization=not legacy)
        check_core(path, tensors, "torch")
        rows = by_name(check_cli(path, tensors, "torch"))
        assert rows["column"]["values"] == [1.0, 5.0, 9.0, 13.0]
        assert rows["every_other"]["values"] == [1, 3, 5, 7, 9]
        assert rows["sub_block"]["values"] == [6.0, 7.0, 10.0, 11.0]
        # Statistics are over the view's elements, not its whole storage.
        assert rows["column"]["stats"]["mean"] == pytest.approx(7.0)
        assert rows["column"]["stats"]["max"] == 13.0


def dtype_tensors() -> dict[str, torch.Tensor]:
    base = torch.tensor([[0.0, -1.5, 2.25], [448.0, 0.015625, -0.5]])
    return {
        "f32": base.clone(),
        "f64": base.double(),
        "bf16": base.to(torch.bfloat16),
        "f16": base.half(),
        "f8": base.to(torch.float8_e4m3fn),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "i16": torch.tensor([-3, 0, 3], dtype=torch.int16),
        "i32": torch.tensor([-(2**31), 5, 2**31 - 1], dtype=torch.int32),
        "i64": torch.tensor([-(2**40), 0, 2**40], dtype=torch.int64),
        "u8": torch.tensor([0, 200, 255], dtype=torch.uint8),
        "b": torch.tensor([True, False, True]),
    }


@pytest.mark.parametrize("kind", ["safetensors", "zip", "legacy"])
def test_dtypes(tmp_path: Path, kind: str) -> None:
    tensors = dtype_tensors()
    if kind == "safetensors":
        path = tmp_path / "d.safetensors"
        save_file(tensors, str(path))
        with open_checkpoint(path) as ckpt:
            tensors = {e.name: tensors[e.name] for e in ckpt.tensors}
        fmt = "safetensors"
    else:
        if kind == "legacy":
            # torch itself cannot load fp8 from a legacy pickle (no typed storage class for it).
            del tensors["f8"]
        path = tmp_path / "d.pt"
        torch.save(tensors, path, _use_new_zipfile_serialization=kind == "zip")
        fmt = "torch"
    check_core(path, tensors, fmt)
    doc = check_cli(path, tensors, fmt)
    rows = by_name(doc)
    if "f8" in tensors:
        assert rows["f8"]["values"] == [0.0, -1.5, 2.25, 448.0, 0.015625, -0.5]
        assert doc["summary"]["by_dtype"]["float8_e4m3fn"] == 6
    assert rows["b"]["values"] == [True, False, True]
    assert rows["i64"]["values"] == [-(2**40), 0, 2**40]
    assert rows["bf16"]["stats"]["max"] == 448.0


def test_legacy_pickle(tmp_path: Path) -> None:
    tensors = sample_tensors()
    path = tmp_path / "legacy.pth"
    torch.save(tensors, path, _use_new_zipfile_serialization=False)
    with open_checkpoint(path) as ckpt:
        assert ckpt.source.legacy
    check_core(path, tensors, "torch")
    check_cli(path, tensors, "torch")


def test_bare_tensor_is_named_tensor(tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    torch.save(torch.arange(3.0), path)
    doc = inspect_json(path, "--values", "3")
    assert [t["name"] for t in doc["tensors"]] == ["tensor"]
    assert doc["tensors"][0]["values"] == [0.0, 1.0, 2.0]


# ---------------------------------------------------------------------------- detection by content


@pytest.mark.parametrize(
    ("name", "writer", "fmt"),
    [
        ("x.bin", "safetensors", "safetensors"),
        ("x.pt", "safetensors", "safetensors"),
        ("x.ckpt", "zip", "torch"),
        ("x.safetensors", "zip", "torch"),
        ("x.tar", "legacy", "torch"),
        ("noext", "zip", "torch"),
    ],
)
def test_format_detected_by_content_not_extension(tmp_path: Path, name: str, writer: str, fmt: str) -> None:
    tensors = {"a": torch.arange(4.0), "b": torch.ones(2, 2)}
    path = tmp_path / name
    if writer == "safetensors":
        save_file(tensors, str(path))
    else:
        torch.save(tensors, path, _use_new_zipfile_serialization=writer == "zip")
    check_core(path, tensors, fmt)
    check_cli(path, tensors, fmt)


# ---------------------------------------------------------------------------- sharded


def write_sharded_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    folder.mkdir(exist_ok=True)
    g = torch.Generator().manual_seed(1)
    shard1 = {"layer.0.weight": torch.randn(3, 4, generator=g), "layer.0.bias": torch.randn(3, generator=g)}
    shard2 = {"layer.1.weight": torch.randn(2, 3, generator=g), "head.weight": torch.randn(5, 2, generator=g)}
    save_file(shard1, str(folder / "model-00001-of-00002.safetensors"))
    save_file(shard2, str(folder / "model-00002-of-00002.safetensors"))
    weight_map = {n: "model-00001-of-00002.safetensors" for n in shard1}
    weight_map |= {n: "model-00002-of-00002.safetensors" for n in shard2}
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return shard1 | shard2


def write_sharded_bin(folder: Path) -> dict[str, torch.Tensor]:
    folder.mkdir(exist_ok=True)
    shard1 = {"enc.weight": torch.arange(6.0).reshape(2, 3), "enc.bias": torch.zeros(2)}
    shard2 = {"dec.weight": torch.full((3, 2), 0.5, dtype=torch.float16)}
    torch.save(shard1, folder / "pytorch_model-00001-of-00002.bin")
    torch.save(shard2, folder / "pytorch_model-00002-of-00002.bin")
    weight_map = {n: "pytorch_model-00001-of-00002.bin" for n in shard1}
    weight_map |= {n: "pytorch_model-00002-of-00002.bin" for n in shard2}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return shard1 | shard2


def check_sharded(path: Path, tensors: dict[str, torch.Tensor], weight_map: dict[str, str]) -> None:
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == "sharded"
        assert sorted(e.name for e in ckpt.tensors) == sorted(tensors)
        assert len(ckpt.source.shards) == 2
        for e in ckpt.tensors:
            assert e.extra["shard"] == weight_map[e.name]
            assert e.read_bytes().tobytes() == raw_bytes(tensors[e.name])
    doc = inspect_json(path, "--values", "64")
    assert doc["format"] == "sharded"
    rows = by_name(doc)
    assert sorted(rows) == sorted(tensors)
    for name, t in tensors.items():
        assert rows[name]["shape"] == list(t.shape)
        assert rows[name]["dtype"] == dtype_name(t)
        assert rows[name]["values"] == expected_values(t)
        assert rows[name]["shard"] == weight_map[name]
    assert doc["summary"]["parameters"] == sum(t.numel() for t in tensors.values())


def test_sharded_safetensors_folder_and_index(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    tensors = write_sharded_safetensors(folder)
    index = folder / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]
    check_sharded(folder, tensors, weight_map)
    check_sharded(index, tensors, weight_map)


def test_sharded_bin_folder_and_index(tmp_path: Path) -> None:
    folder = tmp_path / "hfbin"
    tensors = write_sharded_bin(folder)
    index = folder / "pytorch_model.bin.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]
    check_sharded(folder, tensors, weight_map)
    check_sharded(index, tensors, weight_map)


def test_sample_sharded_folder(samples: Path) -> None:
    doc = inspect_json(samples / "sharded", "--no-stats")
    assert doc["format"] == "sharded"
    index = json.loads((samples / "sharded" / "model.safetensors.index.json").read_text())
    assert sorted(t["name"] for t in doc["tensors"]) == sorted(index["weight_map"])


# ---------------------------------------------------------------------------- folders


@pytest.mark.parametrize("writer", ["safetensors", "zip"])
def test_folder_with_one_checkpoint_reads_that_file(tmp_path: Path, writer: str) -> None:
    tensors = {"w": torch.arange(6.0).reshape(2, 3)}
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "README.md").write_text("not a checkpoint")
    (folder / "config.json").write_text("{}")
    if writer == "safetensors":
        save_file(tensors, str(folder / "model.safetensors"))
        fmt = "safetensors"
    else:
        torch.save(tensors, folder / "model.pt")
        fmt = "torch"
    check_core(folder, tensors, fmt)
    check_cli(folder, tensors, fmt)


def test_folder_with_two_checkpoints_and_no_index_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "two"
    folder.mkdir()
    save_file({"w": torch.ones(2)}, str(folder / "a.safetensors"))
    torch.save({"w": torch.ones(2)}, folder / "b.pt")
    before = sorted(os.listdir(folder))
    r = run_cli("inspect", folder)
    assert_one_error_line(r)
    assert str(folder) in r.stderr
    assert sorted(os.listdir(folder)) == before
    with pytest.raises(PinitError):
        open_checkpoint(folder)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    assert_one_error_line(run_cli("inspect", folder))


# ---------------------------------------------------------------------------- nested containers


def lightning_like() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    conv = torch.randn(2, 1, 3, 3, generator=g)
    bias = torch.randn(2, generator=g)
    exp_avg = torch.randn(2, 1, 3, 3, generator=g)
    exp_avg_sq = torch.rand(2, 1, 3, 3, generator=g)
    step = torch.tensor(10.0)
    ckpt = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": OrderedDict([("conv1.weight", conv), ("conv1.bias", bias)]),
        "optimizer_states": [
            {
                "state": {3: {"step": step, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}},
                "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [3]}],
            }
        ],
        "lr_schedulers": [],
        "pair": (torch.ones(1), ["text", torch.zeros(2)]),
        "hyper_parameters": {"lr": 1e-3, "name": "run", "layers": [1, 2, 3], "flag": None},
    }
    expected = {
        "state_dict.conv1.weight": conv,
        "state_dict.conv1.bias": bias,
        "optimizer_states.0.state.3.step": step,
        "optimizer_states.0.state.3.exp_avg": exp_avg,
        "optimizer_states.0.state.3.exp_avg_sq": exp_avg_sq,
        "pair.0": torch.ones(1),
        "pair.1.1": torch.zeros(2),
    }
    return ckpt, expected


@pytest.mark.parametrize("legacy", [False, True])
def test_nested_containers_are_flattened_with_dots(tmp_path: Path, legacy: bool) -> None:
    obj, expected = lightning_like()
    path = tmp_path / "run.ckpt"
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    check_core(path, expected, "torch")
    check_cli(path, expected, "torch")  # epoch, hyper-parameters, strings: not listed


def test_sample_lightning_checkpoint_names(samples: Path) -> None:
    doc = inspect_json(samples / "lightning.ckpt", "--no-stats")
    names = [t["name"] for t in doc["tensors"]]
    assert "state_dict.model.conv1.weight" in names
    assert any(n.startswith("optimizer_states.0.state.") and n.endswith(".exp_avg") for n in names)
    assert all(not n.startswith("hyper_parameters") for n in names)


@pytest.mark.parametrize("legacy", [False, True])
def test_flattening_collision_is_an_error(tmp_path: Path, legacy: bool) -> None:
    path = tmp_path / "collide.pt"
    torch.save({"a.b": torch.ones(1), "a": {"b": torch.zeros(1)}}, path, _use_new_zipfile_serialization=not legacy)
    before = sorted(os.listdir(tmp_path))
    r = run_cli("inspect", path, "--format", "json")
    assert_one_error_line(r)
    assert "a.b" in r.stderr
    assert r.stdout == ""
    assert sorted(os.listdir(tmp_path)) == before
    with pytest.raises(PinitError, match="same name"):
        open_checkpoint(path)


def test_list_index_and_int_key_collision(tmp_path: Path) -> None:
    path = tmp_path / "collide2.pt"
    torch.save({"x": [torch.ones(1)], "x.0": torch.zeros(1)}, path)
    assert_one_error_line(run_cli("inspect", path))


# ---------------------------------------------------------------------------- flatten itself


class Marker:
    """Stands in for a tensor."""

    def __repr__(self) -> str:
        return f"Marker#{id(self) % 10000}"


def is_marker(x: Any) -> bool:
    return isinstance(x, Marker)


def test_flatten_basic() -> None:
    a, b, c, d = Marker(), Marker(), Marker(), Marker()
    tree = {"sd": OrderedDict([("w", a)]), "opt": [{"state": {3: {"m": b}}}], "t": (c, "s", [d]), "n": 5}
    leaves = flatten(tree, is_marker)
    assert [leaf.name for leaf in leaves] == ["sd.w", "opt.0.state.3.m", "t.0", "t.2.0"]
    assert [leaf.value for leaf in leaves] == [a, b, c, d]
    assert leaves[1].path == ("opt", 0, "state", 3, "m")
    for leaf in leaves:
        assert get_path(tree, leaf.path) is leaf.value


def test_flatten_root_tensor_and_empty() -> None:
    m = Marker()
    (leaf,) = flatten(m, is_marker)
    assert leaf.value is m and leaf.path == ()
    assert flatten({}, is_marker) == []
    assert flatten({"a": 1, "b": "x", "c": [None]}, is_marker) == []


def test_flatten_collision_raises() -> None:
    with pytest.raises(PinitError, match=r"same name 'a\.b'"):
        flatten({"a.b": Marker(), "a": {"b": Marker()}}, is_marker)
    with pytest.raises(PinitError):
        flatten({1: Marker(), "1": Marker()}, is_marker)


def test_flatten_self_containing_container_raises() -> None:
    loop: list[Any] = [Marker()]
    loop.append(loop)
    with pytest.raises(PinitError):
        flatten(loop, is_marker)


# Few, short keys (some holding dots, some ints equal to other keys' text) so that collisions
# such as {"a.b": t, "a": {"b": t}} or {1: t, "1": t} come up often.
keys = st.one_of(st.sampled_from(["a", "b", "a.b", "0", "1", "1.a"]), st.integers(min_value=0, max_value=1))
leaves = st.one_of(st.builds(Marker), st.builds(Marker), st.integers(), st.none(), st.text(max_size=2))
subtrees = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.dictionaries(keys, children, max_size=4),
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
    ),
    max_leaves=12,
)


def inject_collision(args: tuple[dict[Any, Any], str, bool]) -> dict[Any, Any]:
    """Add two tensors whose flat names are equal to a random tree (possibly one level down)."""
    tree, kind, nested = args
    target: dict[Any, Any] = tree
    if nested:
        target = tree["n"] = {}
    if kind == "dotted":  # {"p.q": t, "p": {"q": t}}
        target["p.q"] = Marker()
        target["p"] = {"q": Marker()}
    elif kind == "int_str":  # {1: t, "1": t}
        target[1] = Marker()
        target["1"] = Marker()
    else:  # {"l": [t], "l.0": t}
        target["l"] = [Marker()]
        target["l.0"] = Marker()
    return tree


colliding_trees = st.tuples(
    st.dictionaries(keys, subtrees, max_size=4), st.sampled_from(["dotted", "int_str", "index"]), st.booleans()
).map(inject_collision)
trees = st.one_of(
    st.dictionaries(keys, subtrees, min_size=2, max_size=5),
    st.lists(subtrees, min_size=1, max_size=4),
    st.lists(subtrees, max_size=3).map(tuple),
    leaves,
    colliding_trees,
)


def reference_leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[str, tuple[Any, ...], Any]]:
    """Independent statement of the naming rule: keys and indices joined by dots."""
    if isinstance(node, Marker):
        return [(".".join(str(k) for k in path) if path else "tensor", path, node)]
    if isinstance(node, dict):
        items: Any = node.items()
    elif isinstance(node, (list, tuple)):
        items = enumerate(node)
    else:
        return []
    out = []
    for k, v in items:
        out += reference_leaves(v, (*path, k))
    return out


@settings(max_examples=50, deadline=None, derandomize=True)
@given(trees)
def test_flatten_property(tree: Any) -> None:
    ref = reference_leaves(tree)
    ref_names = [name for name, _, _ in ref]
    try:
        got = flatten(tree, is_marker)
    except PinitError:
        assert len(set(ref_names)) < len(ref_names), "error raised without a name collision"
        return
    assert len(set(ref_names)) == len(ref_names), "a name collision went unnoticed"
    # Every marker appears exactly once, in tree order, reachable by its path.
    assert [id(leaf.value) for leaf in got] == [id(v) for _, _, v in ref]
    assert [leaf.name for leaf in got] == ref_names
    assert len({leaf.name for leaf in got}) == len(got)
    for leaf in got:
        assert get_path(tree, leaf.path) is leaf.value


def test_safetensors_header_length_with_pickle_proto_low_byte(tmp_path):
    """A header length whose first byte is 0x80 (pickle's PROTO opcode) is still safetensors."""
    import json
    import struct

    import numpy as np

    from pinit.checkpoint import open_checkpoint

    data = np.arange(4, dtype="<f4").tobytes()
    header = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    raw = json.dumps(header).encode()
    raw += b" " * (0x180 - len(raw))  # length 0x180: first byte 0x80
    f = tmp_path / "m.safetensors"
    f.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    assert f.read_bytes()[0] == 0x80
    with open_checkpoint(f) as ckpt:
        assert ckpt.format == "safetensors"
        assert isinstance(ckpt.source, SafetensorsSource)
    r = run_cli("inspect", f, "--format", "json", "--values", "4")
    assert r.exit_code == 0, r.stderr
    assert r.json()["tensors"][0]["values"] == [0.0, 1.0, 2.0, 3.0]
