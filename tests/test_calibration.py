"""The flag rules against what garbage and health really look like (SPEC section 4).

Garbage is made by each mechanism measured in ``../shared/TORCH_EMPTY.md`` (heap junk, allocator
metadata among zeros, int64 words read as float32, fresh zero pages, float32 bytes read as
bfloat16/float16) and must be flagged; every init scheme in every floating dtype and accepted
shape must get no error. The real trained checkpoints are in test_verdicts.py.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli, save_checkpoint
from pinit.reinitialize import new_values
from pinit.schemes import SCHEMES, resolve_options

RNG = np.random.default_rng(20261201)


def codes_by_tensor(path: Path) -> dict[str, dict[str, str]]:
    r = run_cli("check", path, "--format", "json")
    assert "Traceback" not in r.stderr, r.stderr
    out: dict[str, dict[str, str]] = {}
    for x in r.json()["files"][0]["findings"]:
        out.setdefault(x["tensor"], {})[x["code"]] = x["severity"]
    return out


def f32(raw: bytes, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.frombuffer(bytearray(raw), dtype=torch.float32).reshape(shape).clone()


def heap_junk(n_bytes: int) -> bytes:
    """Freed Python objects as a small torch.empty block sees them: refcounts, type pointers
    (0x00007fxx........), lengths, ASCII of names, zeros."""
    out = bytearray()
    words = [b"weight\0\0", b"running_", b"__dict__", b"\0" * 8]
    while len(out) < n_bytes:
        out += struct.pack("<Q", int(RNG.integers(1, 6)))  # refcount
        out += struct.pack("<Q", 0x00007F0000000000 | int(RNG.integers(0, 1 << 40)))  # type pointer
        out += struct.pack("<Q", int(RNG.integers(0, 64)))  # a length
        out += words[int(RNG.integers(0, len(words)))]
    return bytes(out[:n_bytes])


def allocator_metadata(n_bytes: int, with_pointers: bool) -> bytes:
    """Zeroed memory with glibc chunk headers every 4 KiB: prev_size, size|flags and, in free
    chunks, the fd/bk free-list pointers (heap addresses 0x000055.........)."""
    out = bytearray(n_bytes)
    for at in range(0, n_bytes - 32, 4096):
        size = 0x1000 | 1
        fd = 0x0000555500000000 | int(RNG.integers(0, 1 << 32)) if with_pointers else 0
        out[at : at + 32] = struct.pack("<QQQQ", 0, size, fd, fd + 0x1000 if fd else 0)
    return bytes(out)


def int64_words(n_bytes: int) -> bytes:
    """Small int64 values (indices, sizes) read as float32: every other word is 0, the rest subnormal."""
    return np.arange(n_bytes // 8, dtype=np.int64).tobytes()


def as_half(fp32: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Stale float32 bytes read as bfloat16/float16 (an empty() of another dtype reusing them)."""
    return fp32.contiguous().view(dtype).clone()


GARBAGE = {
    # name: (tensor, flags that must be errors)
    "heap_junk_64x64": (lambda: f32(heap_junk(64 * 64 * 4), (64, 64)), {"uninitialized"}),
    "heap_junk_16": (lambda: f32(heap_junk(16 * 4), (16,)), {"uninitialized"}),
    "metadata_among_zeros_256x256": (
        lambda: f32(allocator_metadata(256 * 256 * 4, True), (256, 256)),
        {"uninitialized"},
    ),
    "size_fields_among_zeros_1024x64": (
        lambda: f32(allocator_metadata(1024 * 64 * 4, False), (1024, 64)),
        {"uninitialized"},
    ),
    "int64_as_float32_512x512": (lambda: f32(int64_words(512 * 512 * 4), (512, 512)), {"uninitialized"}),
    "fp32_read_as_bf16": (lambda: as_half(torch.randn(256, 128), torch.bfloat16), {"huge"}),
    "fp32_read_as_fp16": (lambda: as_half(torch.randn(256, 128), torch.float16), {"nan", "uninitialized"}),
}


@pytest.mark.parametrize("name", list(GARBAGE))
@pytest.mark.parametrize("fmt", [".safetensors", ".pt"])
def test_garbage_of_each_mechanism_is_an_error(tmp_path: Path, name: str, fmt: str) -> None:
    make, must = GARBAGE[name]
    path = save_checkpoint(tmp_path / f"g{fmt}", {"layer.weight": make(), "ok.weight": torch.randn(8, 8)})
    r = run_cli("check", path)
    assert r.exit_code == 1, r.stdout
    got = codes_by_tensor(path)
    assert "ok.weight" not in got
    errors = {c for c, sev in got["layer.weight"].items() if sev == "error"}
    assert must <= errors, got


def test_fresh_zero_pages_are_flagged_all_zero(tmp_path: Path) -> None:
    """A big uninitialized layer is served fresh zero pages: all_zero, a warning by SPEC section 4
    (biases and padding rows are legitimately zero), which --fail-on warning turns into a failure."""
    path = save_checkpoint(tmp_path / "z.safetensors", {"fc.weight": torch.zeros(1024, 1024)})
    assert codes_by_tensor(path) == {"fc.weight": {"all_zero": "warning"}}
    assert run_cli("check", path, "--fail-on", "warning").exit_code == 1


def test_fp32_read_as_bf16_is_flagged_huge_and_often_nan(tmp_path: Path) -> None:
    junk = as_half(torch.randn(512, 512), torch.bfloat16)
    f = junk.float()
    assert float(f[f.isfinite()].abs().max()) > 1e10  # what the measurements show: up to 19% beyond 1e10
    path = save_checkpoint(tmp_path / "b.safetensors", {"w": junk})
    got = codes_by_tensor(path)["w"]
    assert got["huge"] == "error"


def test_subnormal_alone_is_a_warning_and_its_share_decides(tmp_path: Path) -> None:
    w = torch.randn(100, 10)
    w.view(-1)[:30] = 1e-40  # 3%: like trained Adam moments
    heavy = torch.randn(100, 10)
    heavy.view(-1)[:250] = 1e-40
    heavy.view(-1)[250:400] = 0.0  # 25% subnormal + 15% zeros: the garbage share
    path = save_checkpoint(tmp_path / "s.pt", {"few": w, "many": heavy})
    got = codes_by_tensor(path)
    assert got["few"] == {"subnormal": "warning"}
    assert got["many"] == {"uninitialized": "error"}


def test_subnormal_beside_huge_or_nan_is_uninitialized(tmp_path: Path) -> None:
    a = torch.randn(32, 32)
    a[0, 0], a[0, 1] = 1e-40, 3e20
    b = torch.randn(32, 32)
    b[0, 0], b[0, 1] = 1e-40, float("nan")
    c = torch.randn(32, 32)
    c[0, 1] = 3e20  # huge alone: huge, not uninitialized
    path = save_checkpoint(tmp_path / "h.safetensors", {"a": a, "b": b, "c": c})
    got = codes_by_tensor(path)
    assert got["a"] == {"uninitialized": "error", "huge": "error"}
    assert got["b"] == {"nan": "error", "uninitialized": "error"}
    assert got["c"] == {"huge": "error"}


def test_float16_subnormals_are_ordinary(tmp_path: Path) -> None:
    w = (torch.randn(64, 64) * 1e-5).half()  # a healthy fp16 tensor of small values: mostly subnormal
    assert int(((w != 0) & (w.abs() < torch.finfo(torch.float16).tiny)).sum()) > 2000
    path = save_checkpoint(tmp_path / "h.safetensors", {"w": w})
    assert codes_by_tensor(path) == {}


def test_optimizer_step_count_is_not_huge(tmp_path: Path) -> None:
    sd = {"state": {0: {"step": torch.tensor(2_500_000.0), "exp_avg": torch.randn(4, 4)}}, "w": torch.randn(2, 2)}
    sd["w"][0, 0] = 2e6
    path = save_checkpoint(tmp_path / "opt.pt", sd)
    assert codes_by_tensor(path) == {"w": {"huge": "error"}}


def _shapes(scheme: str) -> list[tuple[int, ...]]:
    spec = SCHEMES[scheme]
    candidates = [(257,), (48, 64), (16, 8, 3), (8, 4, 3, 3), (4, 4, 2, 2, 2), (512, 512)]
    return [s for s in candidates if spec.accepts(s)]


OPTIONS = {"constant": {"value": 0.5}, "sparse": {"sparsity": 0.1}}


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_every_healthy_init_gets_no_error(tmp_path: Path, dtype: str) -> None:
    tensors = {}
    for scheme in SCHEMES:
        if scheme == "default":
            continue
        for shape in _shapes(scheme):
            kwargs = resolve_options(scheme, OPTIONS.get(scheme, {}), "")
            t = new_values(shape, dtype, scheme, kwargs, seed=len(tensors))
            tensors[f"{scheme}.{'x'.join(map(str, shape))}"] = t
    path = save_checkpoint(tmp_path / f"init_{dtype}.safetensors", tensors)
    r = run_cli("check", path, "--format", "json")
    findings = r.json()["files"][0]["findings"]
    errors = [x for x in findings if x["severity"] == "error"]
    assert not errors, errors
    assert r.exit_code == 0
    assert {x["code"] for x in findings} <= {"all_zero", "constant"}, findings


def test_adam_moments_of_a_sparse_embedding_are_not_garbage(tmp_path: Path) -> None:
    """AdamW on an embedding whose vocabulary is 45% unused: never-seen rows keep exact zeros in
    exp_avg, and rows last used a while ago decay by 0.9 a step through the subnormals."""
    emb = torch.nn.Embedding(4000, 16)
    opt = torch.optim.AdamW(emb.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    used = torch.randperm(4000, generator=gen)[:2200]
    for step in range(900):
        opt.zero_grad()
        # early on most used rows appear; later only a shrinking set, so old rows decay
        active = used[: max(40, 2200 - 3 * step)]
        idx = active[torch.randint(len(active), (64,), generator=gen)]
        emb(idx).pow(2).sum().backward()
        opt.step()
    sd = {"state_dict": emb.state_dict(), "optimizer_states": [opt.state_dict()]}
    exp_avg = sd["optimizer_states"][0]["state"][0]["exp_avg"]
    zeros = int((exp_avg == 0).sum())
    subnormal = int(((exp_avg != 0) & (exp_avg.abs() < torch.finfo(torch.float32).tiny)).sum())
    assert zeros >= 0.40 * exp_avg.numel() and subnormal > 0, (zeros, subnormal)  # the case the rule must pass
    path = save_checkpoint(tmp_path / "adam.ckpt", sd)
    got = codes_by_tensor(path)
    assert all(sev != "error" for flags in got.values() for sev in flags.values()), got


def test_transformer_engine_extra_state_is_not_a_zero3_save(tmp_path: Path) -> None:
    """TransformerEngine saves every ``_extra_state`` as an empty uint8 tensor (without FP8):
    half the tensors of a Megatron layer are empty, but no floating parameter is."""
    sd = {}
    for i in range(6):
        p = f"decoder.layers.{i}"
        sd[f"{p}.self_attention.linear_qkv.weight"] = torch.randn(48, 16)
        sd[f"{p}.self_attention.linear_qkv._extra_state"] = torch.empty(0, dtype=torch.uint8)
        sd[f"{p}.self_attention.linear_proj.weight"] = torch.randn(16, 16)
        sd[f"{p}.self_attention.linear_proj._extra_state"] = torch.empty(0, dtype=torch.uint8)
        sd[f"{p}.mlp.linear_fc1._extra_state"] = torch.empty(0, dtype=torch.uint8)
    path = save_checkpoint(tmp_path / "megatron.pt", sd)
    r = run_cli("check", path, "--fail-on", "warning")
    assert r.exit_code == 0, r.stdout


def test_batchnorm_with_many_dead_channels_is_not_garbage(tmp_path: Path) -> None:
    """A BatchNorm layer whose input is 0 on 60% of its channels: their running statistics decay
    by 0.9 a step and stall at 4 * 2**-149, so most of the buffer is subnormal."""
    bn = torch.nn.BatchNorm1d(32)
    gen = torch.Generator().manual_seed(0)
    alive = torch.zeros(32, dtype=torch.bool)
    alive[:12] = True
    for _ in range(1200):
        bn(torch.randn(16, 32, generator=gen) * alive + 3.0 * alive)
    var = bn.running_var
    assert int(((var != 0) & (var < torch.finfo(torch.float32).tiny)).sum()) >= 19
    path = save_checkpoint(tmp_path / "bn.pt", {f"bn.{k}": v for k, v in bn.state_dict().items()})
    got = codes_by_tensor(path)
    assert all(sev != "error" for flags in got.values() for sev in flags.values()), got
    assert got["bn.running_var"] == {"subnormal": "warning"}
