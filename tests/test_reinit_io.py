"""``pinit reinit``: what it writes, what it keeps, and what it refuses (SPEC sections 5, 7, 8).

Every test drives the real CLI on real-shaped files built in ``tmp_path`` (or copies of
``sample_checkpoints/``) and compares raw bytes: safetensors files are parsed here from their
8-byte length + JSON header, torch files are loaded with ``torch.load`` and flattened the way the
SPEC names tensors (``.`` between levels, list indices as numbers).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import pathlib
import resource
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import pinit
import pinit.writers
from conftest import SAMPLES, Result, assert_one_error_line, run_cli

TMP_PREFIX = ".pinit-tmp-"

ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


# ---------------------------------------------------------------------------
# helpers


def seed_of(seed: int, name: str) -> int:
    """The documented per-tensor generator seed: first 8 bytes of sha256("{seed}:{name}"),
    little-endian, low 63 bits (derived here, not with pinit's helper)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def expected(shape: tuple[int, ...], fn: str, seed: int, name: str, **kwargs: Any) -> torch.Tensor:
    """What ``torch.nn.init.<fn>_`` gives on a float32 tensor with the tensor's own generator."""
    t = torch.empty(shape, dtype=torch.float32)
    getattr(torch.nn.init, f"{fn}_")(t, **kwargs, generator=torch.Generator().manual_seed(seed_of(seed, name)))
    return t


def parse_st(data: bytes) -> tuple[dict[str, str] | None, dict[str, tuple[str, list[int], bytes]]]:
    """A safetensors file parsed by hand: (``__metadata__``, {name: (dtype, shape, raw bytes)})."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    base = 8 + n
    out = {}
    for name, info in header.items():
        lo, hi = info["data_offsets"]
        out[name] = (info["dtype"], info["shape"], data[base + lo : base + hi])
    return meta, out


def read_st(path: Path) -> tuple[dict[str, str] | None, dict[str, tuple[str, list[int], bytes]]]:
    return parse_st(path.read_bytes())


def raw(t: torch.Tensor) -> bytes:
    """A tensor's bytes in row-major order."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def flat_tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of a nested object, named as the SPEC names them."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items: Any
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return {}
    out: dict[str, torch.Tensor] = {}
    for k, v in items:
        out.update(flat_tensors(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def tensors_of(path: Path) -> dict[str, tuple[str, list[int], bytes]]:
    """{name: (dtype, shape, bytes)} of any single-file checkpoint; dtype in torch spelling."""
    with path.open("rb") as f:
        head = f.read(4)
    if head.startswith(b"PK") or head[:1] == b"\x80":
        obj = torch.load(path, weights_only=False, map_location="cpu")
        return {k: (str(t.dtype).removeprefix("torch."), list(t.shape), raw(t)) for k, t in flat_tensors(obj).items()}
    _, st = read_st(path)
    return {k: (str(ST_DTYPES[d]).removeprefix("torch."), shape, b) for k, (d, shape, b) in st.items()}


def as_tensor(entry: tuple[str, list[int], bytes]) -> torch.Tensor:
    dtype, shape, b = entry
    buf = torch.frombuffer(bytearray(b), dtype=torch.uint8) if b else torch.empty(0, dtype=torch.uint8)
    return buf.view(getattr(torch, dtype)).reshape(shape)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: 'nothing was written' is snapshot equality."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def no_temp_files(folder: Path) -> None:
    left = [p.name for p in folder.rglob("*") if p.name.startswith(TMP_PREFIX)]
    assert not left, left


def warnings_of(r: Result) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]


def ok(r: Result) -> Result:
    assert r.exit_code == 0, (r.exit_code, r.stdout, r.stderr)
    return r


def reinit_ok(src: Path, *args: str | os.PathLike[str]) -> Result:
    """``pinit reinit SRC ARGS``, which must succeed."""
    return ok(run_cli("reinit", src, *args))


def cnn_state_dict() -> OrderedDict[str, torch.Tensor]:
    """A small conv + BatchNorm + linear model's state dict (deterministic)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        OrderedDict(
            conv1=torch.nn.Conv2d(3, 8, 3),
            bn1=torch.nn.BatchNorm2d(8),
            conv2=torch.nn.Conv2d(8, 16, 3),
            bn2=torch.nn.BatchNorm2d(16),
            fc=torch.nn.Linear(16, 10),
        )
    )
    sd = model.state_dict()
    for k, v in sd.items():  # non-default running statistics, as after training
        if k.endswith(("running_mean", "running_var")):
            v.copy_(torch.rand(v.shape) + 0.5)
    return OrderedDict((k, v.clone()) for k, v in sd.items())


def mixed_tensors() -> dict[str, torch.Tensor]:
    """Tensors of many dtypes and shapes, including odd byte sizes, 0-d and empty ones."""
    g = torch.Generator().manual_seed(1)
    return {
        "embed.weight": torch.randn(12, 6, generator=g),
        "layer.0.weight": torch.randn(6, 6, generator=g),  # the one re-initialized
        "layer.0.bias": torch.randn(3, generator=g).half(),  # 6 bytes: breaks 8-byte alignment
        "layer.1.weight": torch.randn(6, 5, generator=g).to(torch.bfloat16),
        "layer.1.scale": torch.randn(7, generator=g).double(),
        "mask": torch.rand(5, generator=g) > 0.5,
        "ids": torch.arange(9, dtype=torch.int64) * 7 - 20,
        "codes": torch.randint(0, 255, (11,), generator=g, dtype=torch.uint8),
        "temperature": torch.tensor(0.75),
        "empty": torch.zeros(0, 4),
        "head.weight": torch.randn(4, 6, generator=g),
    }


# ---------------------------------------------------------------------------
# preservation: safetensors


@pytest.mark.parametrize("where", ["in_place", "out"])
def test_safetensors_keeps_metadata_adds_provenance_and_unselected_bytes(tmp_path: Path, where: str) -> None:
    src = tmp_path / "model.safetensors"
    tensors = mixed_tensors()
    save_file(tensors, str(src), metadata={"format": "pt", "author": "x"})
    before_meta, before = read_st(src)
    out = src if where == "in_place" else tmp_path / "new.safetensors"
    args = ["--out", out] if where == "out" else []
    reinit_ok(src, "--match", r"^layer\.0\.weight$", "--scheme", "normal", "--std", "0.5", "--seed", "5", *args)

    meta, after = read_st(out)
    assert before_meta == {"format": "pt", "author": "x"}
    assert meta is not None
    assert meta["format"] == "pt" and meta["author"] == "x"
    assert set(meta) == {"format", "author", "pinit"}
    record = json.loads(meta["pinit"])
    assert record["version"] == pinit.__version__
    assert record["seed"] == 5
    assert set(record["tensors"]) == {"layer.0.weight"}
    assert [r["scheme"] for r in record["rules"]] == ["normal"]
    assert record["rules"][0]["match"] == [r"^layer\.0\.weight$"]
    options = [r["options"] for r in record["rules"]] + [t["options"] for t in record["tensors"].values()]
    assert any(o.get("std") == 0.5 for o in options), record

    assert set(after) == set(before)
    for name, (dtype, shape, b) in before.items():
        assert after[name][:2] == (dtype, shape), name
        if name != "layer.0.weight":
            assert after[name][2] == b, f"{name} changed"
    new = as_tensor(tensors_of(out)["layer.0.weight"])
    assert torch.equal(new, expected((6, 6), "normal", 5, "layer.0.weight", mean=0.0, std=0.5))
    if where == "out":
        assert read_st(src) == (before_meta, before)  # the input is untouched
    no_temp_files(tmp_path)


def test_safetensors_no_provenance_adds_nothing(tmp_path: Path) -> None:
    src = tmp_path / "model.safetensors"
    save_file(mixed_tensors(), str(src), metadata={"format": "pt", "author": "x"})
    ok(run_cli("reinit", src, "--match", "head", "--scheme", "zeros", "--seed", "1", "--no-provenance"))
    meta, after = read_st(src)
    assert meta == {"format": "pt", "author": "x"}
    assert after["head.weight"][2] == bytes(4 * 6 * 4)


# ---------------------------------------------------------------------------
# preservation: nested (Lightning) checkpoints


def lightning_copy(tmp_path: Path) -> Path:
    p = tmp_path / "last.ckpt"
    shutil.copyfile(SAMPLES / "lightning.ckpt", p)
    return p


SELECTED_LT = "state_dict.model.fc.weight"
SELECTED_LT_RE = r"^state_dict\.model\.fc\.weight$"


@pytest.mark.parametrize("where", ["in_place", "out"])
def test_lightning_checkpoint_keeps_everything_but_the_selected_tensor(tmp_path: Path, where: str) -> None:
    src = lightning_copy(tmp_path)
    orig = torch.load(src, weights_only=False)
    out = src if where == "in_place" else tmp_path / "reinit.ckpt"
    args = ["--out", out] if where == "out" else []
    r = reinit_ok(src, "--match", SELECTED_LT_RE, "--scheme", "xavier_uniform", "--seed", "11", *args)
    assert not warnings_of(r), r.stderr

    new = torch.load(out, weights_only=False)
    assert set(new) == set(orig)
    for key in ("epoch", "global_step", "pytorch-lightning_version", "lr_schedulers"):
        assert new[key] == orig[key], key
    hp = new["hyper_parameters"]
    assert hp == orig["hyper_parameters"]
    assert isinstance(hp["data_dir"], pathlib.PosixPath) and hp["data_dir"] == pathlib.PosixPath("/data/cifar10")
    assert isinstance(hp["args"], argparse.Namespace) and hp["args"].batch_size == 32
    assert new["optimizer_states"][0]["param_groups"] == orig["optimizer_states"][0]["param_groups"]
    assert isinstance(new["state_dict"], OrderedDict)
    assert list(new["state_dict"]) == list(orig["state_dict"])

    a, b = flat_tensors(orig), flat_tensors(new)
    assert list(a) == list(b)
    assert any(k.startswith("optimizer_states.0.state.") for k in a)
    for name, t in a.items():
        assert (b[name].dtype, b[name].shape) == (t.dtype, t.shape), name
        if name != SELECTED_LT:
            assert raw(b[name]) == raw(t), f"{name} changed"
    assert torch.equal(b[SELECTED_LT], expected((10, 16), "xavier_uniform", 11, SELECTED_LT, gain=1.0))
    assert not torch.equal(b[SELECTED_LT], a[SELECTED_LT])


def test_lightning_to_safetensors_warns_listing_dropped_content(tmp_path: Path) -> None:
    src = lightning_copy(tmp_path)
    before = src.read_bytes()
    out = tmp_path / "weights.safetensors"
    r = reinit_ok(src, "--match", SELECTED_LT_RE, "--scheme", "zeros", "--seed", "0", "--out", out)
    dropped = [w for w in warnings_of(r) if "non-tensor" in w or "dropped" in w]
    assert len(dropped) == 1, r.stderr
    for item in ("epoch", "global_step", "hyper_parameters", "param_groups"):
        assert item in dropped[0], (item, dropped[0])
    assert src.read_bytes() == before
    orig = {
        k: (str(t.dtype).removeprefix("torch."), list(t.shape), raw(t))
        for k, t in flat_tensors(torch.load(src, weights_only=False)).items()
    }
    got = tensors_of(out)
    assert set(got) == set(orig)
    for name, entry in orig.items():
        if name != SELECTED_LT:
            assert got[name] == entry, name
    assert got[SELECTED_LT][2] == bytes(10 * 16 * 4)


# ---------------------------------------------------------------------------
# tied weights


@pytest.mark.parametrize("where", ["in_place", "out"])
def test_tied_weights_stay_shared_in_torch_output(tmp_path: Path, where: str) -> None:
    src = tmp_path / "tied_lm.pt"
    shutil.copyfile(SAMPLES / "tied_lm.pt", src)
    orig = torch.load(src, weights_only=True)
    assert orig["embed.weight"].untyped_storage().data_ptr() == orig["lm_head.weight"].untyped_storage().data_ptr()
    out = src if where == "in_place" else tmp_path / "new.pt"
    args = ["--out", out] if where == "out" else []
    before = src.read_bytes()
    refused = run_cli("reinit", src, "--match", r"^lm_head\.weight$", "--scheme", "normal", "--seed", "3", *args)
    assert refused.exit_code == 2 and "embed.weight" in refused.stderr and "--with-tied" in refused.stderr
    assert src.read_bytes() == before and (where == "in_place" or not out.exists())
    r = reinit_ok(
        src, "--match", r"^lm_head\.weight$", "--scheme", "normal", "--std", "0.02", "--seed", "3", "--with-tied", *args
    )
    tied = [w for w in warnings_of(r) if "embed.weight" in w and "together" in w]
    assert tied, r.stderr

    new = torch.load(out, weights_only=True)
    a, b = new["embed.weight"], new["lm_head.weight"]
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    assert torch.equal(a, b)
    assert not torch.equal(b, orig["lm_head.weight"])
    assert abs(float(b.std()) - 0.02) < 0.004 and abs(float(b.mean())) < 0.004
    for name, t in orig.items():
        if name not in ("embed.weight", "lm_head.weight"):
            assert raw(new[name]) == raw(t), name


def test_tied_weights_become_copies_in_safetensors_with_warning(tmp_path: Path) -> None:
    src = tmp_path / "tied_lm.pt"
    shutil.copyfile(SAMPLES / "tied_lm.pt", src)
    orig = torch.load(src, weights_only=True)
    out = tmp_path / "x.safetensors"
    r = ok(
        run_cli(
            "reinit", src, "--match", r"^lm_head\.weight$", "--scheme", "normal", "--seed", "3", "--with-tied",
            "--out", out,
        )
    )  # fmt: skip
    copies = [w for w in warnings_of(r) if "separate copies" in w or "copies" in w]
    assert copies and "embed.weight" in copies[0] and "lm_head.weight" in copies[0], r.stderr
    _, st = read_st(out)
    _, _, header = read_st_header(out)
    assert header["embed.weight"]["data_offsets"] != header["lm_head.weight"]["data_offsets"]
    assert st["embed.weight"][2] == st["lm_head.weight"][2]  # both hold the new values
    assert st["lm_head.weight"][2] != raw(orig["lm_head.weight"])
    for name, t in orig.items():
        if name not in ("embed.weight", "lm_head.weight"):
            assert st[name][2] == raw(t), name


# ---------------------------------------------------------------------------
# sharded checkpoints


def sharded_copy(tmp_path: Path) -> tuple[Path, str, str]:
    folder = tmp_path / "sharded"
    shutil.copytree(SAMPLES / "sharded", folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    changed = index["weight_map"]["conv1.weight"]
    other = next(f for f in set(index["weight_map"].values()) if f != changed)
    return folder, changed, other


def test_sharded_in_place_rewrites_only_the_shard_holding_the_tensor(tmp_path: Path) -> None:
    folder, changed, other = sharded_copy(tmp_path)
    before = snapshot(folder)
    stat_other = (folder / other).stat()
    stat_index = (folder / "model.safetensors.index.json").stat()
    ok(run_cli("reinit", folder, "--match", r"^conv1\.weight$", "--scheme", "zeros", "--seed", "0"))

    after = snapshot(folder)
    assert set(after) == set(before)
    assert after[other] == before[other]
    assert after["model.safetensors.index.json"] == before["model.safetensors.index.json"]
    for name, st in ((other, stat_other), ("model.safetensors.index.json", stat_index)):
        now = (folder / name).stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), f"{name} was rewritten"
    old_meta, old = parse_st(before[changed])
    new_meta, new = read_st(folder / changed)
    assert set(new) == set(old)
    for name, entry in old.items():
        assert new[name][:2] == entry[:2]
        if name != "conv1.weight":
            assert new[name][2] == entry[2], name
    assert new["conv1.weight"][2] == bytes(len(old["conv1.weight"][2]))
    assert old_meta is not None and new_meta is not None
    assert new_meta["format"] == old_meta["format"] and "pinit" in new_meta
    no_temp_files(folder)


def test_sharded_out_folder_is_a_full_copy_differing_in_one_shard(tmp_path: Path) -> None:
    folder, changed, _ = sharded_copy(tmp_path)
    before = snapshot(folder)
    dst = tmp_path / "newdir"
    ok(run_cli("reinit", folder, "--match", r"^conv1\.weight$", "--scheme", "ones", "--seed", "0", "--out", dst))
    assert snapshot(folder) == before
    copy = snapshot(dst)
    assert set(copy) == set(before)
    for name in before:
        if name != changed:
            assert copy[name] == before[name], name
    _, old = parse_st(before[changed])
    _, new = read_st(dst / changed)
    for name, entry in old.items():
        if name != "conv1.weight":
            assert new[name] == entry, name
    assert torch.equal(as_tensor(tensors_of(dst / changed)["conv1.weight"]), torch.ones(8, 3, 3, 3))


# ---------------------------------------------------------------------------
# format conversion


def torch_source_tensors() -> dict[str, torch.Tensor]:
    """Tensors as torch checkpoints hold them: views with storage offsets and non-contiguous ones too."""
    t = mixed_tensors()
    base = torch.arange(40, dtype=torch.float32) / 7
    t["shared.a"] = base[4:16].view(3, 4)  # two views of one storage at different offsets
    t["shared.b"] = base[20:30]
    t["transposed"] = torch.arange(12, dtype=torch.float32).view(3, 4).t()
    return t


CONVERSIONS = [
    ("zip", "pytorch_model.bin", "out.safetensors"),
    ("zip", "model.pt", "out.safetensors"),
    ("safetensors", "model.safetensors", "out.pt"),
    ("safetensors", "model.safetensors", "out.bin"),
    ("legacy", "legacy.pt", "out.safetensors"),
    ("legacy", "legacy.pt", "out.pt"),
    ("legacy", "legacy.pt", None),  # in place
]


@pytest.mark.parametrize(("kind", "name", "out_name"), CONVERSIONS)
def test_conversion_keeps_every_unselected_tensor_byte_identical(
    tmp_path: Path, kind: str, name: str, out_name: str | None
) -> None:
    src = tmp_path / name
    if kind == "safetensors":
        tensors = mixed_tensors()
        save_file(tensors, str(src), metadata={"format": "pt"})
    else:
        tensors = torch_source_tensors()
        torch.save(tensors, src, _use_new_zipfile_serialization=kind == "zip")
    before = tensors_of(src)
    assert set(before) == set(tensors)
    out = src if out_name is None else tmp_path / out_name
    args = ["--out", out] if out_name is not None else []
    ok(run_cli("reinit", src, "--match", r"^layer\.0\.weight$", "--scheme", "kaiming_uniform", "--seed", "9", *args))

    after = tensors_of(out)
    assert set(after) == set(before)
    for n, (dtype, shape, b) in before.items():
        assert after[n][:2] == (dtype, shape), n
        if n != "layer.0.weight":
            assert after[n][2] == b, f"{n} changed"
    want = expected((6, 6), "kaiming_uniform", 9, "layer.0.weight", a=0.0, mode="fan_in", nonlinearity="leaky_relu")
    assert torch.equal(as_tensor(after["layer.0.weight"]), want)
    if out_name is not None:
        assert tensors_of(src) == before
        with out.open("rb") as f:
            head = f.read(2)
        assert (head == b"PK") == (not out_name.endswith(".safetensors"))  # torch zip unless .safetensors
    no_temp_files(tmp_path)


def test_sample_files_reinit_in_place_and_to_safetensors(tmp_path: Path) -> None:
    """The shipped samples (zip, legacy, safetensors) all go through reinit."""
    for sample in ("tiny_cnn.pt", "legacy.pt", "tiny_cnn.safetensors"):
        src = tmp_path / sample
        shutil.copyfile(SAMPLES / sample, src)
        before = tensors_of(src)
        out = tmp_path / f"{sample}.safetensors"
        ok(run_cli("reinit", src, "--match", r"^fc\.weight$", "--scheme", "orthogonal", "--seed", "2", "--out", out))
        ok(run_cli("reinit", src, "--match", r"^fc\.weight$", "--scheme", "orthogonal", "--seed", "2"))
        for target in (out, src):
            after = tensors_of(target)
            assert set(after) == set(before)
            for n, entry in before.items():
                if n != "fc.weight":
                    assert after[n] == entry, (sample, target.name, n)
            w = as_tensor(after["fc.weight"])
            assert torch.allclose(w @ w.T, torch.eye(10), atol=1e-5), (sample, target.name)


# ---------------------------------------------------------------------------
# refusals: exit 2, one error line, nothing written


def refusal_folder(tmp_path: Path, fmt: str) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    sd = cnn_state_dict()
    sd["conv1d.weight"] = torch.randn(4, 3, 5)  # 3-D
    if fmt == "safetensors":
        save_file(dict(sd), str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(sd, folder / "model.pt")
    return folder


PLANS = {
    "bad_scheme": 'seed = 1\n[[rule]]\nmatch = "conv"\nscheme = "kaiming"\n',
    "bad_option": '[[rule]]\nmatch = "fc.weight"\nscheme = "uniform"\nstd = 1.0\n',
}

REFUSALS = {
    # id: (args, words the error line must hold)
    "empty_selection": (["--match", "no_such_tensor", "--scheme", "zeros"], ["empty"]),
    "unknown_scheme": (["--match", "fc.weight", "--scheme", "glorot"], ["glorot"]),
    "option_not_taken": (["--match", "fc.weight", "--scheme", "uniform", "--std", "1"], ["--std", "uniform"]),
    "missing_value": (["--match", "fc.weight", "--scheme", "constant"], ["--value"]),
    "missing_sparsity": (["--match", "fc.weight", "--scheme", "sparse"], ["--sparsity"]),
    "integer_tensor": (["--match", "bn", "--scheme", "zeros"], ["bn1.num_batches_tracked", "bn2.num_batches_tracked"]),
    "eye_1d": (["--match", r"^fc\.bias$", "--scheme", "eye"], ["fc.bias"]),
    "dirac_2d": (["--match", r"^fc\.weight$", "--scheme", "dirac"], ["fc.weight"]),
    "xavier_1d": (["--match", "bias", "--scheme", "xavier_uniform"], ["conv1.bias", "bn2.bias", "fc.bias"]),
    "sparse_3d": (["--match", r"^conv1d\.weight$", "--scheme", "sparse", "--sparsity", "0.5"], ["conv1d.weight"]),
    "plan_bad_scheme": (["--plan", "@bad_scheme"], ["kaiming"]),
    "plan_bad_option": (["--plan", "@bad_option"], ["std"]),
    "no_scheme_no_plan": (["--match", "fc.weight"], ["--scheme"]),
}


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
@pytest.mark.parametrize("mode", ["in_place", "out"])
@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_before_anything_is_written(tmp_path: Path, case: str, mode: str, fmt: str) -> None:
    folder = refusal_folder(tmp_path, fmt)
    src = next(folder.iterdir())
    plans = tmp_path / "plans"
    plans.mkdir()
    args, words = REFUSALS[case]
    argv = []
    for a in args:
        if a.startswith("@"):
            plan = plans / f"{a[1:]}.toml"
            plan.write_text(PLANS[a[1:]])
            a = str(plan)
        argv.append(a)
    out_args = ["--out", folder / "out.safetensors"] if mode == "out" else []
    before = snapshot(folder)
    r = run_cli("reinit", src, *argv, "--backup", "--seed", "1", *out_args)
    assert_one_error_line(r)
    for w in words:
        assert w in r.stderr, (w, r.stderr)
    assert r.stdout.strip() == ""
    assert snapshot(folder) == before  # no new file, no .bak, no temp file, input byte-identical


# ---------------------------------------------------------------------------
# --plan


CLASSIC_PLAN = """\
# the classic ResNet recipe, as model.apply(init_fn) does it
seed = 7

[[rule]]
match = 'conv\\d+\\.weight$'
scheme = "kaiming_normal"
mode = "fan_out"
nonlinearity = "relu"

[[rule]]
match = 'bn\\d+\\.weight$'
scheme = "normal"
mean = 1.0
std = 0.02

[[rule]]
match = 'bn\\d+\\.bias$'
scheme = "constant"
value = 0

[[rule]]
match = '^fc\\.weight$'
scheme = "xavier_uniform"
"""


@pytest.mark.parametrize("ext", [".safetensors", ".pt"])
def test_plan_classic_recipe_on_a_small_cnn(tmp_path: Path, ext: str) -> None:
    sd = cnn_state_dict()
    src = tmp_path / f"cnn{ext}"
    if ext == ".safetensors":
        save_file(dict(sd), str(src))
    else:
        torch.save(sd, src)
    plan = tmp_path / "plan.toml"
    plan.write_text(CLASSIC_PLAN)
    out = tmp_path / f"out{ext}"
    r = ok(run_cli("reinit", src, "--plan", plan, "--out", out, "--format", "json"))
    doc = r.json()
    assert doc["seed"] == 7 and not doc["seed_drawn"]  # the plan's seed is used
    assert "drawn" not in r.stderr

    got = {k: as_tensor(v) for k, v in tensors_of(out).items()}
    want_changed = {"conv1.weight", "conv2.weight", "bn1.weight", "bn2.weight", "bn1.bias", "bn2.bias", "fc.weight"}
    assert {t["name"] for t in doc["tensors"]} == want_changed
    for name in ("conv1.weight", "conv2.weight"):
        want = expected(tuple(sd[name].shape), "kaiming_normal", 7, name, mode="fan_out", nonlinearity="relu")
        assert torch.equal(got[name], want), name
    for name in ("bn1.weight", "bn2.weight"):
        assert torch.equal(got[name], expected(tuple(sd[name].shape), "normal", 7, name, mean=1.0, std=0.02)), name
    for name in ("bn1.bias", "bn2.bias"):
        assert torch.equal(got[name], torch.zeros_like(sd[name])), name
    assert torch.equal(got["fc.weight"], expected((10, 16), "xavier_uniform", 7, "fc.weight", gain=1.0))
    for name, t in sd.items():
        if name not in want_changed:
            assert raw(got[name]) == raw(t), f"{name} should be untouched"

    # the same plan with another seed gives other values: the seed really drives the generators
    plan.write_text(CLASSIC_PLAN.replace("seed = 7", "seed = 8"))
    ok(run_cli("reinit", src, "--plan", plan, "--out", out))
    assert not torch.equal(as_tensor(tensors_of(out)["conv1.weight"]), got["conv1.weight"])


def test_plan_first_matching_rule_wins_and_exclude_is_per_rule(tmp_path: Path) -> None:
    sd = cnn_state_dict()
    src = tmp_path / "cnn.safetensors"
    save_file(dict(sd), str(src))
    plan = tmp_path / "plan.toml"
    plan.write_text(
        textwrap.dedent(
            """\
            [[rule]]
            match = 'conv1\\.weight'
            scheme = "zeros"

            [[rule]]
            match = ['conv', '^fc\\.']
            exclude = 'bias'
            scheme = "constant"
            value = 0.5

            [[rule]]
            match = 'weight'
            exclude = ['^bn2\\.', 'conv']
            scheme = "ones"
            """
        )
    )
    ok(run_cli("reinit", src, "--plan", plan, "--seed", "0"))
    got = {k: as_tensor(v) for k, v in tensors_of(src).items()}
    assert torch.equal(got["conv1.weight"], torch.zeros_like(sd["conv1.weight"]))  # rule 1, not rule 2
    assert torch.equal(got["conv2.weight"], torch.full_like(sd["conv2.weight"], 0.5))  # rule 2
    assert torch.equal(got["fc.weight"], torch.full_like(sd["fc.weight"], 0.5))  # rule 2 before rule 3
    assert torch.equal(got["bn1.weight"], torch.ones_like(sd["bn1.weight"]))  # rule 3
    untouched = ["conv1.bias", "conv2.bias", "fc.bias", "bn2.weight", "bn1.bias", "bn1.running_mean"]
    for name in untouched:  # excluded by rule 2's / rule 3's own exclude, and no later rule takes them
        assert raw(got[name]) == raw(sd[name]), name


# ---------------------------------------------------------------------------
# --backup, --dry-run, --out naming the input


@pytest.mark.parametrize("ext", [".safetensors", ".pt"])
def test_backup_keeps_the_original_byte_identical(tmp_path: Path, ext: str) -> None:
    src = tmp_path / f"model{ext}"
    tensors = mixed_tensors()
    if ext == ".safetensors":
        save_file(tensors, str(src), metadata={"format": "pt"})
    else:
        torch.save(tensors, src)
    original = src.read_bytes()
    ok(run_cli("reinit", src, "--match", "head", "--scheme", "zeros", "--seed", "0", "--backup"))
    bak = tmp_path / f"model{ext}.bak"
    assert bak.read_bytes() == original
    assert src.read_bytes() != original
    assert tensors_of(src)["head.weight"][2] == bytes(4 * 6 * 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, bak.name])


@pytest.mark.parametrize("fmt", ["table", "json"])
@pytest.mark.parametrize("with_out", [False, True])
def test_dry_run_shows_before_and_after_and_writes_nothing(tmp_path: Path, fmt: str, with_out: bool) -> None:
    src = tmp_path / "model.safetensors"
    tensors = mixed_tensors()
    save_file(tensors, str(src), metadata={"format": "pt"})
    before = snapshot(tmp_path)
    mtime = src.stat().st_mtime_ns
    out_args = ["--out", tmp_path / "out.pt"] if with_out else []
    select = ["--match", "weight", "--exclude", "embed", "--scheme", "constant", "--value", "0.5", "--seed", "4"]
    r = reinit_ok(src, *select, "--dry-run", "--backup", "--format", fmt, *out_args)
    assert snapshot(tmp_path) == before
    assert src.stat().st_mtime_ns == mtime
    selected = ["layer.0.weight", "layer.1.weight", "head.weight"]
    if fmt == "table":
        for name in selected:
            assert name in r.stdout
        assert "embed.weight" not in r.stdout
        assert "nothing was written" in r.stdout
        return
    doc = r.json()
    assert doc["dry_run"] is True
    rows = {t["name"]: t for t in doc["tensors"]}
    assert sorted(rows) == sorted(selected)
    for name in selected:
        t = tensors[name].float()
        b, a = rows[name]["before"], rows[name]["after"]
        assert b["mean"] == pytest.approx(float(t.mean()), rel=1e-4, abs=1e-6)
        assert b["std"] == pytest.approx(float(t.std()), rel=1e-4)
        assert b["min"] == pytest.approx(float(t.min())) and b["max"] == pytest.approx(float(t.max()))
        assert a["mean"] == pytest.approx(0.5) and a["min"] == 0.5 and a["max"] == 0.5
        assert a["std"] == pytest.approx(0.0, abs=1e-7) and a["zeros"] == 0 and a["nan"] == 0


def test_dry_run_after_statistics_are_those_a_real_run_writes(tmp_path: Path) -> None:
    src = tmp_path / "model.safetensors"
    save_file(mixed_tensors(), str(src))
    args = ["--match", "layer", "--exclude", "bias|scale", "--scheme", "kaiming_normal", "--seed", "21"]
    r = ok(run_cli("reinit", src, *args, "--dry-run", "--format", "json"))
    after = {t["name"]: t["after"] for t in r.json()["tensors"]}
    out = tmp_path / "real.safetensors"
    ok(run_cli("reinit", src, *args, "--out", out))
    got = tensors_of(out)
    assert sorted(after) == ["layer.0.weight", "layer.1.weight"]
    for name, st in after.items():
        t = as_tensor(got[name]).float()
        assert st["mean"] == pytest.approx(float(t.mean()), rel=1e-4, abs=1e-6), name
        assert st["std"] == pytest.approx(float(t.std()), rel=1e-4), name
        assert st["max"] == pytest.approx(float(t.max())), name


@pytest.mark.parametrize("ext", [".safetensors", ".pt"])
def test_out_naming_the_input_behaves_like_in_place(tmp_path: Path, ext: str) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    tensors = mixed_tensors()
    if ext == ".safetensors":
        save_file(tensors, str(a / f"model{ext}"), metadata={"format": "pt", "author": "x"})
    else:
        torch.save(tensors, a / f"model{ext}")
    shutil.copyfile(a / f"model{ext}", b / f"model{ext}")  # byte-identical twins
    args = ["--match", r"^head\.weight$", "--scheme", "trunc_normal", "--std", "0.1", "--seed", "6"]
    ok(run_cli("reinit", a / f"model{ext}", *args))
    ok(run_cli("reinit", b / f"model{ext}", *args, "--out", f"{b}/./model{ext}", "--backup"))
    assert sorted(p.name for p in b.iterdir()) == sorted([f"model{ext}", f"model{ext}.bak"])
    assert tensors_of(b / f"model{ext}") == tensors_of(a / f"model{ext}")
    if ext == ".safetensors":
        assert (b / f"model{ext}").read_bytes() == (a / f"model{ext}").read_bytes()
    assert tensors_of(b / f"model{ext}.bak") == {
        k: (str(v.dtype).removeprefix("torch."), list(v.shape), raw(v)) for k, v in tensors.items()
    }


# ---------------------------------------------------------------------------
# atomicity: a failure in the middle of writing leaves the original and no temporary file


def fail_on_call(real: Any, n: int, partial: Any) -> Any:
    """Wrap ``real`` so that its n-th call does part of the work, then fails like a full disk."""
    calls = {"n": 0}

    def wrapper(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == n:
            partial(*args)
            raise OSError(28, "No space left on device")
        return real(*args)

    wrapper.calls = calls  # type: ignore[attr-defined]
    return wrapper


@pytest.mark.parametrize("func", ["pwrite_all", "copy_span"])
@pytest.mark.parametrize("mode", ["in_place", "out", "backup"])
def test_safetensors_write_failure_midway_leaves_original(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, func: str, mode: str
) -> None:
    """ENOSPC half-way through the header or new bytes (pwrite_all), or through the kernel copy
    of unchanged bytes in the writer's second thread (copy_span)."""
    src = tmp_path / "model.safetensors"
    save_file(mixed_tensors(), str(src), metadata={"format": "pt"})
    before = snapshot(tmp_path)
    real_pwrite_all, real_copy_span = pinit.writers.pwrite_all, pinit.writers.copy_span
    if func == "pwrite_all":
        wrapper = fail_on_call(
            real_pwrite_all, 2, lambda fd, data, at: real_pwrite_all(fd, memoryview(data)[: len(data) // 2], at)
        )
    else:
        wrapper = fail_on_call(real_copy_span, 1, lambda s, off, n, d, at: real_copy_span(s, off, n // 2, d, at))
    monkeypatch.setattr(pinit.writers, func, wrapper)
    extra = {"in_place": [], "out": ["--out", tmp_path / "new.safetensors"], "backup": ["--backup"]}[mode]
    r = run_cli("reinit", src, "--match", r"^layer\.0\.weight$", "--scheme", "normal", "--seed", "0", *extra)
    assert wrapper.calls["n"] >= (2 if func == "pwrite_all" else 1), "the failure was not reached"
    assert_one_error_line(r)
    assert "No space left on device" in r.stderr
    target = "new.safetensors" if mode == "out" else "model.safetensors"
    assert target in r.stderr
    assert snapshot(tmp_path) == before  # original byte-identical, no output, no .bak, no temp file


# The paths that still write through torch.save (a torch zip read by pinit is patched record by
# record instead: its faults are in test_torch_zip_write.py, and safetensors converted to .pt is
# written by pinit's own zip writer: see the next test): a legacy pickle written back as a zip.
@pytest.mark.parametrize("case", ["legacy_in_place", "legacy_out"])
def test_torch_write_failure_midway_leaves_original(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    src = tmp_path / "model.pt"
    torch.save(mixed_tensors(), src, _use_new_zipfile_serialization=False)
    before = snapshot(tmp_path)
    real_save = torch.save
    writes = {"n": 0}

    class FullDisk:
        """A file whose second write stores half its bytes, then fails like a full disk."""

        def __init__(self, f: Any) -> None:
            self.f = f

        def write(self, b: Any) -> int:
            writes["n"] += 1
            if writes["n"] == 2:
                self.f.write(bytes(memoryview(b)[: len(memoryview(b)) // 2]))
                self.f.flush()
                raise OSError(28, "No space left on device")
            return self.f.write(b)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.f, name)

    def failing_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        real_save(obj, FullDisk(f), *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    out_args = [] if case == "legacy_in_place" else ["--out", tmp_path / "new.pt"]
    r = run_cli("reinit", src, "--match", r"^layer\.0\.weight$", "--scheme", "zeros", "--seed", "0", *out_args)
    assert writes["n"] >= 2, "the failure was not reached"
    assert_one_error_line(r)
    assert "No space left on device" in r.stderr, r.stderr
    assert ("model.pt" if case == "legacy_in_place" else "new.pt") in r.stderr
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("pending", [False, True])
def test_safetensors_to_pt_failure_midway_leaves_original(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pending: bool
) -> None:
    """A full disk after some records of pinit's own torch-zip writer (an unchanged tensor's
    record, or a new one's) were written."""
    import pinit.formats.torch_zip_write as tzw

    src = tmp_path / "model.safetensors"
    save_file(mixed_tensors(), str(src))
    before = snapshot(tmp_path)
    real = tzw._aligned_info
    calls = {"n": 0}
    fail_at = 4 + (len(mixed_tensors()) if pending else 2)  # 4 small members, then the records

    def full_disk(name: str, size: int, offset: int) -> Any:
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise OSError(28, "No space left on device")
        return real(name, size, offset)

    monkeypatch.setattr(tzw, "_aligned_info", full_disk)
    r = run_cli("reinit", src, "--match", r"^layer\.0\.weight$", "--scheme", "zeros", "--out", tmp_path / "new.pt")
    assert calls["n"] >= fail_at, "the failure was not reached"
    assert_one_error_line(r)
    assert "No space left on device" in r.stderr and "new.pt" in r.stderr, r.stderr
    assert snapshot(tmp_path) == before


def test_safetensors_to_pt_is_torch_loadable_and_streamed(tmp_path: Path) -> None:
    """pinit's own torch-zip writer: what torch.load(weights_only=True) reads back equals the
    input, for every dtype torch can save (typed and untyped storages), records 64-byte aligned."""
    import zipfile

    src = tmp_path / "all.safetensors"
    tensors = {
        "f32": torch.randn(3, 4),
        "bf16": torch.randn(5).to(torch.bfloat16),
        "f16": torch.randn(2, 2).half(),
        "i64": torch.arange(6).reshape(2, 3),
        "fp8": torch.randn(4).to(torch.float8_e4m3fn),
        "u16": torch.ones(3, dtype=torch.uint16),
        "empty": torch.ones(0, 3),
        "scalar": torch.tensor(2.5),
        "flag": torch.tensor([True, False]),
    }
    save_file(tensors, str(src))
    out = tmp_path / "out.pt"
    r = run_cli("reinit", src, "--match", "^f32$", "--scheme", "zeros", "--out", out)
    assert r.exit_code == 0, r.stderr
    got = torch.load(out, weights_only=True)
    assert list(got) == list(load_file(str(src)))  # the file's order
    for name, t in tensors.items():
        want = torch.zeros_like(t) if name == "f32" else t
        assert got[name].dtype == t.dtype and got[name].shape == t.shape, name
        assert got[name].reshape(-1).view(torch.uint8).tolist() == want.reshape(-1).view(torch.uint8).tolist(), name
    with zipfile.ZipFile(out) as zf, open(out, "rb") as f:
        assert zf.testzip() is None
        for info in zf.infolist():
            if "/data/" in info.filename:
                f.seek(info.header_offset + 26)
                n, extra = struct.unpack("<HH", f.read(4))
                assert (info.header_offset + 30 + n + extra) % 64 == 0, info.filename
    assert run_cli("diff", src, out).exit_code == 1  # f32 changed, the rest equal
    assert run_cli("diff", src, out, "--match", "^(?!f32$)").exit_code == 0


@pytest.mark.slow  # subprocesses that import torch
@pytest.mark.parametrize("ext", [".safetensors", ".pt"])
def test_real_file_size_limit_midway_leaves_original(tmp_path: Path, ext: str) -> None:
    """A genuine failure, not a mock: the child may write at most 64 KiB per file (RLIMIT_FSIZE)."""
    src = tmp_path / f"model{ext}"
    tensors = {"a": torch.randn(200, 200), "b": torch.randn(200, 200), "c": torch.randn(10)}
    if ext == ".safetensors":
        save_file(tensors, str(src))
    else:
        torch.save(tensors, src)
    before = snapshot(tmp_path)

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    p = subprocess.run(
        [sys.executable, "-m", "pinit", "reinit", src, "--match", "^c$", "--scheme", "zeros", "--seed", "0"],
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=120,
    )
    assert_one_error_line(Result(p.returncode, p.stdout, p.stderr))
    assert "cannot write" in p.stderr and src.name in p.stderr, p.stderr
    assert "internal error" not in p.stderr
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------
# memory: reinit of one small tensor streams a large safetensors file


BIG_NUMEL = 25_000_000  # 100 MB of float32 per tensor
BIG_NAMES = ["big.0", "big.1", "small", "big.2", "big.3"]  # data order; "small" sits between big ones
CHUNK = 5_000_000

RSS_WRAPPER = """\
import json, resource, subprocess, sys
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": p.returncode, "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "stdout": p.stdout, "stderr": p.stderr}))
"""


def write_big_safetensors(path: Path) -> dict[str, tuple[int, int]]:
    """~400 MB safetensors file, written chunk by chunk; returns each tensor's data range."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    pos = 0
    for name in BIG_NAMES:
        numel = 64 if name == "small" else BIG_NUMEL
        header[name] = {
            "dtype": "F32",
            "shape": [8, 8] if name == "small" else [numel],
            "data_offsets": [pos, pos + 4 * numel],
        }
        pos += 4 * numel
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    ranges = {}
    base = np.arange(CHUNK, dtype=np.float32) % 977
    with path.open("wb") as f:
        f.write(len(hb).to_bytes(8, "little") + hb)
        for k, name in enumerate(BIG_NAMES):
            lo, hi = header[name]["data_offsets"]
            ranges[name] = (8 + len(hb) + lo, hi - lo)
            if name == "small":
                f.write(np.full(64, 3.0, dtype=np.float32).tobytes())
                continue
            for j in range(BIG_NUMEL // CHUNK):
                f.write((base * (k + 1) + j).tobytes())
    return ranges


def peak_rss_kib(tmp_path: Path, *cmd: str | os.PathLike[str]) -> dict[str, Any]:
    wrapper = tmp_path / "rss.py"
    wrapper.write_text(RSS_WRAPPER)
    p = subprocess.run(
        [sys.executable, wrapper, *(os.fspath(c) for c in cmd)], capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def same_range(a: Path, a_range: tuple[int, int], b: Path, b_range: tuple[int, int]) -> bool:
    assert a_range[1] == b_range[1]
    step = 16 << 20
    with a.open("rb") as fa, b.open("rb") as fb:
        fa.seek(a_range[0])
        fb.seek(b_range[0])
        left = a_range[1]
        while left:
            n = min(step, left)
            if fa.read(n) != fb.read(n):
                return False
            left -= n
    return True


@pytest.mark.slow
def test_reinit_of_a_small_tensor_does_not_load_a_large_safetensors_file(tmp_path: Path) -> None:
    big = tmp_path / "big.safetensors"
    out = tmp_path / "out.safetensors"
    try:
        src_ranges = write_big_safetensors(big)
        size = big.stat().st_size
        assert size > 390_000_000

        baseline = peak_rss_kib(tmp_path, sys.executable, "-c", "import torch, pinit.cli")
        assert baseline["rc"] == 0, baseline["stderr"]
        cmd = ["-m", "pinit", "reinit", big, "--match", "small", "--scheme", "zeros", "--out", out, "--seed", "0"]
        run = peak_rss_kib(tmp_path, sys.executable, *cmd)
        assert run["rc"] == 0, run["stderr"]
        growth = (run["maxrss_kib"] - baseline["maxrss_kib"]) * 1024
        print(f"baseline {baseline['maxrss_kib']} KiB, reinit {run['maxrss_kib']} KiB, file {size} bytes")
        assert growth < 0.25 * size, f"peak RSS grew by {growth / 1e6:.0f} MB for a {size / 1e6:.0f} MB file"

        n, meta, header = read_st_header(out)
        assert meta is not None and meta["format"] == "pt" and "pinit" in meta
        out_ranges = {
            k: (8 + n + v["data_offsets"][0], v["data_offsets"][1] - v["data_offsets"][0]) for k, v in header.items()
        }
        assert sorted(out_ranges) == sorted(BIG_NAMES)
        assert all(header[k]["dtype"] == "F32" for k in BIG_NAMES)
        assert header["small"]["shape"] == [8, 8]
        with out.open("rb") as f:
            f.seek(out_ranges["small"][0])
            assert f.read(256) == bytes(256)
        for name in BIG_NAMES:
            if name != "small":
                assert header[name]["shape"] == [BIG_NUMEL]
                assert same_range(big, src_ranges[name], out, out_ranges[name]), f"{name} changed"
    finally:
        big.unlink(missing_ok=True)
        out.unlink(missing_ok=True)


def read_st_header(path: Path) -> tuple[int, dict[str, str] | None, dict[str, Any]]:
    """(header length, metadata, tensor entries) of a safetensors file, reading only its header."""
    with path.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    meta = header.pop("__metadata__", None)
    return n, meta, header


# the safetensors writer copies unchanged bytes in a second thread while new values are computed


@pytest.mark.parametrize("exc", [pinit.PinitError("scheme exploded"), KeyboardInterrupt()])
@pytest.mark.parametrize("mode", ["in_place", "out"])
def test_failure_while_new_values_are_computed_leaves_original(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException, mode: str
) -> None:
    """new values fail (or Ctrl-C) while the copy thread is writing: the thread is stopped and
    joined, the temporary file removed, and the original is untouched."""
    import pinit.reinitialize

    src = tmp_path / "model.safetensors"
    save_file(mixed_tensors(), str(src))
    before = snapshot(tmp_path)

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise exc

    monkeypatch.setattr(pinit.reinitialize, "new_values", boom)
    out = {"in_place": None, "out": tmp_path / "new.safetensors"}[mode]
    with pytest.raises(type(exc)):
        pinit.reinit(src, match=[r"^layer\.0\.weight$"], scheme="normal", seed=0, out=out)
    assert not [t for t in __import__("threading").enumerate() if t.name == "pinit-copy"]
    assert snapshot(tmp_path) == before


def test_writer_output_equals_save_file_for_every_layout(tmp_path: Path) -> None:
    """Unchanged tensors before, between and after the changed ones; tied, strided and empty
    tensors from a .pt source: the streamed file equals safetensors' own save_file of the same
    tensors (header order aside, compared through safetensors' loader) and its data section is
    laid out contiguously in header order."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    tensors: dict[str, torch.Tensor] = {
        "a": torch.randn(3, 4, generator=g),
        "b.weight": torch.randn(7, 3, generator=g),
        "c": base.t(),  # strided view
        "d": torch.zeros(0, 3),
        "e.weight": torch.randn(2, 2, generator=g).to(torch.bfloat16),
        "f": torch.arange(10, dtype=torch.int64),
    }
    src = tmp_path / "model.pt"
    torch.save(tensors, src)
    out = tmp_path / "out.safetensors"
    res = pinit.reinit(src, match=[r"weight$"], scheme="normal", seed=3, out=out, provenance=False)
    assert sorted(c.name for c in res.changes) == ["b.weight", "e.weight"]
    from safetensors.torch import load_file

    got = load_file(str(out))
    for name, t in tensors.items():
        if name.endswith("weight"):
            assert got[name].dtype == t.dtype and got[name].shape == t.shape
            assert not torch.equal(got[name], t)
        else:
            assert torch.equal(got[name], t.contiguous()), name
    raw = out.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    offsets = [v["data_offsets"] for k, v in header.items() if k != "__metadata__"]
    assert offsets[0][0] == 0 and all(a[1] == b[0] for a, b in itertools.pairwise(offsets))
    assert offsets[-1][1] == len(raw) - 8 - n


@pytest.mark.slow  # subprocesses that import torch
def test_cli_output_is_complete_when_torch_was_loaded(tmp_path: Path) -> None:
    """The CLI exits without the interpreter's teardown once torch is loaded: what it printed
    must still all arrive, through a pipe, with the right exit code."""
    from conftest import run_subprocess

    src = tmp_path / "model.pt"
    torch.save({f"layer.{i}.weight": torch.ones(2, 2) for i in range(3000)}, src)  # JSON far over a pipe's 64 KB
    r = run_subprocess("reinit", src, "--match", ".", "--scheme", "normal", "--seed", "1", "--format", "json")
    assert r.exit_code == 0, r.stderr
    doc = r.json()
    assert len(doc["tensors"]) == 3000
    r = run_subprocess("reinit", src, "--match", "^nothing$", "--scheme", "normal")  # fails before torch loads
    assert r.exit_code == 2 and r.stderr.startswith("error:")
    # fails after torch has drawn the values (torch output, into a folder that does not exist)
    missing = tmp_path / "missing" / "out.pt"
    r = run_subprocess("reinit", src, "--match", ".", "--scheme", "normal", "--out", missing)
    assert r.exit_code == 2 and r.stderr.startswith("error:") and len(r.stderr.splitlines()) == 1, r.stderr
    assert not missing.parent.exists()


@pytest.mark.slow  # subprocesses that import torch
def test_main_called_from_python_returns_control_after_torch_was_loaded(tmp_path: Path) -> None:
    """Only the console script skips the interpreter's teardown; ``pinit.cli.main`` ends in
    SystemExit, so a Python caller goes on after it (here: twice, then prints)."""
    src = tmp_path / "model.pt"
    torch.save({"w": torch.ones(3, 3)}, src)
    script = textwrap.dedent(
        f"""
        import sys
        from pinit.cli import main
        codes = []
        for seed in ("1", "2"):
            sys.argv = ["pinit", "reinit", {str(src)!r}, "--match", "w", "--scheme", "normal", "--seed", seed, "-q"]
            try:
                main()
            except SystemExit as e:
                codes.append(e.code)
        print("continued", codes, "torch" in sys.modules)
        """
    )
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith("continued [0, 0] True"), p.stdout


@pytest.mark.slow
def test_reinit_of_many_tensors_holds_one_new_tensor_at_a_time(tmp_path: Path) -> None:
    """SPEC section 8: re-initializing every tensor of a safetensors file keeps peak memory near
    the largest selected tensor (new values are drawn and written one by one), not their sum."""
    n_tensors, numel = 6, 8_000_000  # 6 x 32 MB
    src = tmp_path / "many.safetensors"
    save_file({f"layer.{i}.weight": torch.zeros(numel // 1000, 1000) for i in range(n_tensors)}, str(src))
    out = tmp_path / "out.safetensors"
    baseline = peak_rss_kib(tmp_path, sys.executable, "-c", "import torch, numpy, pinit.cli")
    run = peak_rss_kib(tmp_path, sys.executable, "-m", "pinit", "reinit", src, "--match", ".", "--scheme", "normal",
                       "--seed", "0", "--out", out)  # fmt: skip
    assert run["rc"] == 0, run["stderr"]
    growth_mb = (run["maxrss_kib"] - baseline["maxrss_kib"]) / 1024
    one_mb = numel * 4 / 2**20
    print(f"growth {growth_mb:.0f} MB; one tensor {one_mb:.0f} MB, all {n_tensors * one_mb:.0f} MB")
    assert growth_mb < 3.5 * one_mb, f"peak RSS grew by {growth_mb:.0f} MB"
    from safetensors.torch import load_file

    got = load_file(str(out))
    assert all(float(t.std()) == pytest.approx(1.0, rel=0.01) for t in got.values())
