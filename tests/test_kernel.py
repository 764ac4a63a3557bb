"""The C kernel (``pinit._kernel``) against float64 numpy, value by value and chunk by chunk.

``test_stats.py`` runs every statistics test through both paths against a float64 reference;
this file covers what is particular to the kernel: the decoding of every bfloat16 and float16 bit
pattern, unaligned buffers, block boundaries, its argument checks, and the same JSON from the CLI
with the kernel and without it.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pinit.stats
from conftest import SAMPLES, run_subprocess
from pinit.stats import _FloatAccumulator

kernel = pinit.stats._load_kernel()
needs_kernel = pytest.mark.skipif(kernel is None, reason="pinit._kernel is not built")

F32, BF16, F16 = 0, 1, 2
TINY32 = float(np.finfo(np.float32).tiny)
TINY16 = float(np.finfo(np.float16).tiny)


def test_kernel_is_built_in_ci():
    """CI builds the package with a C compiler: a silent fallback to numpy must not go unnoticed."""
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        pytest.skip("only enforced in CI")
    assert pinit.stats.kernel_available()


def kernel_acc(raw: np.ndarray | bytes, kind: int, tiny: float, max_abs: float = 1e6) -> _FloatAccumulator:
    acc = _FloatAccumulator(tiny, max_abs)
    acc.add_reduced(kernel.float_stats(raw, kind, tiny, max_abs))
    return acc


def assert_matches_reference(
    acc: _FloatAccumulator, values: np.ndarray, tiny: float, max_abs: float = 1e6, tol: float = 1e-6
) -> None:
    """Counts, min and max exact; mean and spread within ``tol`` (1e-6: test_stats' rule) of the
    data's scale, against a plain float64 computation."""
    with np.errstate(invalid="ignore"):  # signalling NaN patterns
        x = values.astype(np.float64)
    fin = x[np.isfinite(x)]
    assert acc.n == fin.size
    assert acc.nan == int(np.isnan(x).sum())
    assert acc.inf == int(np.isinf(x).sum())
    assert acc.zeros == int((fin == 0).sum())
    assert acc.subnormal == int(((fin != 0) & (np.abs(fin) < tiny)).sum())
    assert acc.huge == int((np.abs(fin) > max_abs).sum())
    if not fin.size:
        return
    assert (acc.min, acc.max) == (fin.min(), fin.max())
    mean = fin.mean()
    m2 = float(((fin - mean) ** 2).sum())
    scale = max(abs(mean), math.sqrt(m2 / fin.size))
    assert abs(acc.mean - mean) <= tol * scale
    assert abs(math.sqrt(max(acc.m2, 0.0) / fin.size) - math.sqrt(m2 / fin.size)) <= tol * scale


def classify(v: float, tiny: float) -> dict[str, int]:
    return {
        "nan": int(math.isnan(v)),
        "inf": int(math.isinf(v)),
        "zeros": int(v == 0),
        "subnormal": int(v != 0 and abs(v) < tiny),
    }


@needs_kernel
@pytest.mark.parametrize("kind", [BF16, F16], ids=["bfloat16", "float16"])
def test_every_16_bit_pattern_decodes_exactly(kind):
    bits = np.arange(1 << 16, dtype=np.uint32)
    if kind == BF16:
        want = (bits << 16).view(np.float32)
        tiny = TINY32
    else:
        want = bits.astype(np.uint16).view(np.float16).astype(np.float32)
        tiny = TINY16
    raw = bits.astype("<u2").view(np.uint8)
    for i in range(1 << 16):
        n, mean, m2, _, lo, hi, zeros, nan, inf, sub, huge = kernel.float_stats(raw[2 * i : 2 * i + 2], kind, tiny, 1e6)
        v = float(want[i])
        assert {"nan": nan, "inf": inf, "zeros": zeros, "subnormal": sub} == classify(v, tiny), hex(i)
        if math.isfinite(v):
            assert (n, lo, hi, mean, m2) == (1, v, v, v, 0.0), hex(i)
            assert huge == int(abs(v) > 1e6), hex(i)
        else:
            assert n == 0, hex(i)


@needs_kernel
@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    n=st.integers(0, 5000),
    seed=st.integers(0, 2**32 - 1),
    offset=st.integers(0, 3),
    loc=st.sampled_from([0.0, 1.0, -3e3, 1e7]),
    scale=st.sampled_from([1.0, 1e-6, 1e-40, 1e3, 1e35]),
    specials=st.sampled_from([0.0, 0.001, 0.3]),
)
def test_float32_chunks_match_reference(n, seed, offset, loc, scale, specials):
    """Random float32 chunks across block boundaries (2,048 values), at every byte alignment,
    with NaN, infinities, zeros, subnormals and huge values sprinkled in."""
    rng = np.random.default_rng(seed)
    x = (loc + scale * rng.standard_normal(n)).astype(np.float32)
    pool = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-39, -3e-42, 3e38, -2e7], dtype=np.float32)
    hit = rng.random(n) < specials
    x[hit] = rng.choice(pool, size=int(hit.sum()))
    raw = np.zeros(n * 4 + offset, dtype=np.uint8)
    raw[offset:] = x.view(np.uint8)
    assert_matches_reference(kernel_acc(raw[offset:], F32, TINY32), x, TINY32)


@needs_kernel
@pytest.mark.parametrize("n", [1, 2047, 2048, 2049, 4096 * 3 + 5])
def test_one_nan_at_each_block_edge(n):
    x = np.arange(n, dtype=np.float32) - n / 2
    for pos in {0, n // 2, n - 1}:
        y = x.copy()
        y[pos] = np.nan
        assert_matches_reference(kernel_acc(y.view(np.uint8), F32, TINY32), y, TINY32)


@needs_kernel
def test_sum_overflow_in_float32_is_not_mistaken_for_infinity():
    """A block of finite values near float32's maximum overflows a float32 running sum; such a
    block is reduced again plainly, and no value is counted as infinite."""
    x = np.full(3000, 3e38, dtype=np.float32)
    x[::2] = -1e38
    got = kernel_acc(x.view(np.uint8), F32, TINY32)
    assert (got.n, got.inf, got.nan, got.huge) == (3000, 0, 0, 3000)
    assert got.mean == pytest.approx(float(x.astype(np.float64).mean()), rel=1e-12)


@needs_kernel
def test_max_abs_beyond_float32_range_counts_nothing_huge():
    x = np.array([3e38, -3e38, 1.0], dtype=np.float32)
    got = kernel_acc(x.view(np.uint8), F32, TINY32, max_abs=1e300)
    assert got.huge == 0


@needs_kernel
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((b"\x00\x00\x00", F32, TINY32, 1e6), "whole number"),
        ((b"\x00", BF16, TINY32, 1e6), "whole number"),
        ((b"\x00\x00\x00\x00", 7, TINY32, 1e6), "unknown kind"),
    ],
)
def test_bad_arguments_raise(args, message):
    with pytest.raises(ValueError, match=message):
        kernel.float_stats(*args)


def mixed_precision_file(folder) -> str:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    tensors = {
        f"{name}.{i}": (torch.randn(300, 70, generator=g) * 10**i + i).to(dtype)
        for i in range(3)
        for name, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16), ("f16", torch.float16)]
    }
    tensors["bf16.nan"] = torch.full((4, 4), float("nan"), dtype=torch.bfloat16)
    tensors["f16.sub"] = torch.full((5000,), 1e-7, dtype=torch.float16)
    path = os.path.join(folder, "mixed.safetensors")
    save_file(tensors, path)
    return path


@needs_kernel
@pytest.mark.parametrize("sample", ["uninit_cnn.safetensors", "uninit_cnn.pt", "lightning.ckpt", "sharded", "mixed"])
def test_cli_json_is_the_same_with_and_without_the_kernel(sample, tmp_path):
    path = mixed_precision_file(tmp_path) if sample == "mixed" else SAMPLES / sample
    fast = run_subprocess("inspect", path, "--format", "json")
    slow = run_subprocess("inspect", path, "--format", "json", env={"PINIT_NO_KERNEL": "1"})
    assert fast.exit_code == slow.exit_code, (fast.stderr, slow.stderr)
    a, b = fast.json(), slow.json()
    assert a["summary"] == b["summary"]
    for ta, tb in zip(a["tensors"], b["tensors"], strict=True):
        assert ta["flags"] == tb["flags"], ta["name"]
        sa, sb = ta["stats"], tb["stats"]
        if sa is None:
            assert sb is None
            continue
        for key in ("min", "max", "abs_max", "zeros", "nan", "inf", "subnormal"):
            assert sa[key] == sb[key], (ta["name"], key)
        scale = max(abs(sb["mean"] or 0.0), sb["std"] or 0.0)
        for key in ("mean", "std"):
            if sb[key] is None:
                assert sa[key] is None
            else:
                assert abs(sa[key] - sb[key]) <= 1e-6 * scale, (ta["name"], key)


@needs_kernel
@pytest.mark.parametrize("kind", [F32, BF16, F16], ids=["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("loc", [0.0, 3.0, 1e4, -2e6])
def test_sums_are_float64_accurate(kind, loc):
    """The kernel promises more than the 1e-6 of the statistics tests: its sums are float64
    sums of deviations from each block's mean, corrected by their own sum, so mean and std agree
    with a float64 computation to about 1e-12 even when the mean dwarfs the spread (a float32
    sum, or the rough mean left uncorrected, would be off by 1e-8 or more)."""
    rng = np.random.default_rng(7)
    x32 = (loc + rng.standard_normal(100_003) * (1 + abs(loc) * 1e-3)).astype(np.float32)
    if kind == F32:
        values, raw, tiny = x32, x32.view(np.uint8), TINY32
    elif kind == BF16:
        bits = (x32.view(np.uint32) >> 16).astype(np.uint16)
        values, raw, tiny = (bits.astype(np.uint32) << 16).view(np.float32), bits.view(np.uint8), TINY32
    else:
        if abs(loc) > 6e4:
            pytest.skip("beyond float16's range")
        h = x32.astype(np.float16)
        values, raw, tiny = h.astype(np.float32), h.view(np.uint8), TINY16
    acc = kernel_acc(raw, kind, tiny)
    x = values.astype(np.float64)
    mean = x.mean()
    std = x.std(ddof=1)
    assert abs(acc.mean - mean) <= 1e-12 * max(abs(mean), std)
    assert abs(math.sqrt(acc.m2 / (x.size - 1)) - std) <= 1e-11 * std
