"""Statistics (SPEC section 3) against a float64 numpy reference.

The reference converts the stored tensor with torch to float64 (``t.double().numpy()``), which is
exact for every floating dtype, and then takes the finite values only for mean/std/min/max/abs_max.

Tolerance rule (one rule, used everywhere in this file):
  * ``mean`` and ``std``: ``|got - ref| <= 1e-6 * max(|ref_mean|, ref_std)`` -- relative to the
    magnitude of the data (a mean of ~0 for data of spread 1 is compared with tolerance 1e-6, not 0);
    when that scale is 0 (all finite values 0, or one finite value 0) the values must be equal.
  * ``min``, ``max``, ``abs_max``: exact, since they are stored values after the dtype's own rounding.
  * ``numel``, ``zeros``, ``nan``, ``inf``, ``subnormal``: exact counts.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import pinit.stats
from conftest import run_cli
from pinit import open_checkpoint
from pinit.stats import compute_stats
from pinit.storage import CHUNK_BYTES

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2]
INT_DTYPES = [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool]

HYP = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)

# Raw-bit views: (unsigned numpy type for random bits, signed torch type of the same width to view from).
BITS = {
    torch.float32: (np.uint32, torch.int32),
    torch.float16: (np.uint16, torch.int16),
    torch.bfloat16: (np.uint16, torch.int16),
    torch.float8_e4m3fn: (np.uint8, torch.uint8),
    torch.float8_e5m2: (np.uint8, torch.uint8),
}


def dname(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@pytest.fixture(autouse=True, params=["kernel", "numpy"])
def stats_path(request, monkeypatch):
    """Every test here runs twice: with pinit's C kernel and with its numpy fallback."""
    if request.param == "numpy":
        monkeypatch.setattr(pinit.stats, "_kernel", None)
    elif not pinit.stats.kernel_available():
        pytest.skip("pinit._kernel is not built (test_kernel.py fails on this in CI)")
    return request.param


# ---------------------------------------------------------------- reference


def reference(t: torch.Tensor) -> dict:
    """SPEC section 3, computed plainly in float64 from the stored values."""
    a = t.detach().double().reshape(-1).numpy()
    finite = a[np.isfinite(a)]
    tiny = torch.finfo(t.dtype).tiny
    ref = {
        "numel": a.size,
        "zeros": int(np.count_nonzero(a == 0)),
        "nan": int(np.count_nonzero(np.isnan(a))),
        "inf": int(np.count_nonzero(np.isinf(a))),
        "subnormal": int(np.count_nonzero((finite != 0) & (np.abs(finite) < tiny))),
        "mean": None,
        "std": None,
        "min": None,
        "max": None,
        "abs_max": None,
    }
    if finite.size:
        ref["mean"] = float(finite.mean())
        ref["min"] = float(finite.min())
        ref["max"] = float(finite.max())
        ref["abs_max"] = float(np.abs(finite).max())
    if finite.size >= 2:
        ref["std"] = float(finite.std(ddof=1))
    return ref


def int_reference(t: torch.Tensor) -> dict:
    vals = [int(v) for v in t.reshape(-1).tolist()]
    return {
        "numel": len(vals),
        "zeros": sum(v == 0 for v in vals),
        "min": min(vals) if vals else None,
        "max": max(vals) if vals else None,
        "mean": sum(vals) / len(vals) if vals else None,
    }


def assert_close(got: float | None, want: float | None, scale: float, what: str) -> None:
    """The tolerance rule of this module: 1e-6 relative to the data's scale (exact when scale is 0)."""
    if want is None:
        assert got is None, (what, got)
        return
    assert got is not None, what
    assert math.isfinite(got), (what, got, want)
    assert abs(got - want) <= 1e-6 * scale, (what, got, want, scale)


def assert_stats_match(got: dict, ref: dict, label: str = "") -> None:
    """``got``: a stats mapping (JSON ``stats`` or ``Stats.__dict__``); ``ref``: :func:`reference`."""
    for key in ("zeros", "nan", "inf", "subnormal"):
        assert got[key] == ref[key], (label, key, got[key], ref[key])
    for key in ("min", "max", "abs_max"):
        assert got[key] == ref[key], (label, key, got[key], ref[key])
    scale = max(abs(ref["mean"]) if ref["mean"] is not None else 0.0, ref["std"] or 0.0)
    assert_close(got["mean"], ref["mean"], scale, f"{label} mean")
    assert_close(got["std"], ref["std"], scale, f"{label} std")


# ---------------------------------------------------------------- tensor generation


def special_values(dtype: torch.dtype) -> list[float]:
    fi = torch.finfo(dtype)
    tiny = fi.tiny
    vals = [math.nan, math.inf, -math.inf, 0.0, -0.0, tiny, -tiny, tiny / 3, -tiny / 5, tiny / 2, 1.0, -1.0]
    if dtype != torch.float64:  # float64 near its max would overflow any float64 reference
        vals += [fi.max, -fi.max]
    if dtype == torch.float32:
        vals += [1e-45, -1.4e-45, 2e-39]  # deepest float32 subnormals
    if dtype == torch.float64:
        vals += [5e-324, -1e-310, 1e150, -1e150]
    if dtype == torch.bfloat16:
        vals += [9.2e-41, 1e-39]
    if dtype == torch.float16:
        vals += [6e-8, -3e-5]
    return vals


def random_values(dtype: torch.dtype, n: int, seed: int, mode: str, scale: float, special_frac: float) -> torch.Tensor:
    """A flat tensor of ``n`` values of ``dtype``: a base distribution with special values mixed in."""
    rng = np.random.default_rng(seed)
    if mode == "bits" and dtype in BITS:
        np_u, torch_view = BITS[dtype]
        bits = rng.integers(0, np.iinfo(np_u).max, size=n, dtype=np_u, endpoint=True)
        t = torch.from_numpy(bits.view(torch.empty(0, dtype=torch_view).numpy().dtype).copy()).view(dtype)
    elif mode == "bits":  # float64: every exponent up to ~1e135 (and Inf/NaN), so sums stay finite
        sign = rng.integers(0, 2, size=n, dtype=np.uint64) << np.uint64(63)
        exp = rng.integers(0, 1023 + 450, size=n, dtype=np.uint64)
        exp = np.where(rng.random(n) < 0.02, np.uint64(2047), exp)
        man = rng.integers(0, 1 << 52, size=n, dtype=np.uint64)
        t = torch.from_numpy((sign | (exp << np.uint64(52)) | man).view(np.float64).copy())
    elif mode == "ints":
        t = torch.from_numpy(rng.integers(-3, 4, size=n).astype(np.float64)).to(dtype)
    else:
        base = rng.standard_normal(n) * scale + rng.standard_normal() * scale
        t = torch.from_numpy(base).to(dtype)
    if special_frac and n:
        specials = special_values(dtype)
        mask = rng.random(n) < special_frac
        picks = rng.integers(0, len(specials), size=n)
        sv = torch.tensor([specials[i] for i in picks[mask]], dtype=torch.float64).to(dtype)
        t = t.clone()
        if dtype in BITS:  # fp8 has no masked_fill: assign through same-width integer views
            t.view(BITS[dtype][1])[torch.from_numpy(mask)] = sv.view(BITS[dtype][1])
        else:
            t[torch.from_numpy(mask)] = sv
    return t


shapes = st.one_of(
    st.just(()),
    st.lists(st.integers(0, 40), min_size=1, max_size=3).filter(lambda s: math.prod(s) <= 3000),
    st.sampled_from([(0,), (3, 0), (1, 1), (2049,), (7, 300)]),
)


def write(t_by_name: dict[str, torch.Tensor], folder: Path, kind: str) -> Path:
    if kind == "safetensors":
        path = folder / "t.safetensors"
        save_file({k: v.contiguous() for k, v in t_by_name.items()}, path)
    else:
        path = folder / "t.pt"
        torch.save(t_by_name, path)
    return path


def core_stats(path: Path, name: str, chunk_bytes: int = CHUNK_BYTES):
    with open_checkpoint(path) as ckpt:
        (entry,) = [e for e in ckpt.tensors if e.name == name]
        return compute_stats(entry, chunk_bytes=chunk_bytes)


# ---------------------------------------------------------------- floating tensors, core


@HYP
@given(
    dtype=st.sampled_from(FLOAT_DTYPES),
    shape=shapes,
    seed=st.integers(0, 2**32 - 1),
    mode=st.sampled_from(["normal", "bits", "ints"]),
    scale=st.sampled_from([1.0, 1e-3, 1e-30, 1e4, 1e30]),
    special_frac=st.sampled_from([0.0, 0.01, 0.2, 1.0]),
    kind=st.sampled_from(["safetensors", "pt"]),
    layout=st.sampled_from(["contiguous", "transposed", "offset"]),
    chunk_bytes=st.sampled_from([1, 3, 8, 64, 1000, 4096, CHUNK_BYTES]),
)
def test_float_stats_match_reference(dtype, shape, seed, mode, scale, special_frac, kind, layout, chunk_bytes):
    n = math.prod(shape)
    if kind == "pt" and layout == "offset":
        # a view into the middle of a larger storage
        big = random_values(dtype, n + 5, seed, mode, scale, special_frac)
        t = big[3 : 3 + n].view(shape)
    else:
        t = random_values(dtype, n, seed, mode, scale, special_frac).reshape(shape)
        if kind == "pt" and layout == "transposed" and t.ndim >= 2:
            t = t.transpose(0, -1)  # a non-contiguous view, saved with its strides
    ref = reference(t)
    with tempfile.TemporaryDirectory() as d:
        path = write({"w": t}, Path(d), kind)
        got = core_stats(path, "w", chunk_bytes)
    assert got is not None
    assert got.numel == ref["numel"]
    assert_stats_match(got.as_json(), ref, f"{dname(dtype)} {tuple(shape)}")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dname)
def test_float_stats_across_default_chunks(tmp_path, dtype):
    """Tensors over 1 MiB, read with the default chunk size, in both formats."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    n = (CHUNK_BYTES * 5 // 2) // itemsize + 3  # 2.5 chunks and a ragged tail
    t = random_values(dtype, n, seed=7, mode="bits" if dtype in BITS else "normal", scale=1.0, special_frac=0.001)
    t = t.reshape(-1, 1) if n % 2 else t.reshape(2, -1)
    ref = reference(t)
    assert ref["nan"] and ref["zeros"] and ref["subnormal"]  # the mix really is there
    for kind in ("safetensors", "pt"):
        path = write({"big": t}, tmp_path, kind)
        got = core_stats(path, "big")
        assert_stats_match(got.as_json(), ref, f"{kind} {dname(dtype)}")


@pytest.mark.parametrize("chunk_bytes", [CHUNK_BYTES, 4096])
def test_nan_in_one_chunk_does_not_hide_the_rest(tmp_path, chunk_bytes):
    n = 3 * CHUNK_BYTES // 4  # float32: three default chunks
    t = torch.from_numpy(np.random.default_rng(3).standard_normal(n).astype(np.float32) * 2 + 5)
    t[CHUNK_BYTES // 4 + 17] = math.nan  # inside the second chunk
    ref = reference(t)
    assert ref["nan"] == 1 and ref["mean"] is not None
    path = write({"x": t.reshape(-1, 64)}, tmp_path, "safetensors")
    got = core_stats(path, "x", chunk_bytes)
    assert got.nan == 1
    assert got.inf == 0
    assert_stats_match(got.as_json(), ref)
    # the finite statistics are those of the tensor without its NaN
    without = torch.cat([t[: CHUNK_BYTES // 4 + 17], t[CHUNK_BYTES // 4 + 18 :]])
    assert got.min == float(without.min()) and got.max == float(without.max())
    assert abs(got.mean - float(without.double().mean())) <= 1e-6 * float(without.double().std())


def test_all_non_finite_gives_null_statistics(tmp_path):
    t = torch.tensor([[math.nan, math.inf], [-math.inf, math.nan]])
    path = write({"x": t}, tmp_path, "safetensors")
    got = core_stats(path, "x").as_json()
    assert got == {
        "mean": None,
        "std": None,
        "min": None,
        "max": None,
        "abs_max": None,
        "zeros": 0,
        "nan": 2,
        "inf": 2,
        "subnormal": 0,
    }


def test_one_finite_value_has_mean_but_no_std(tmp_path):
    t = torch.tensor([math.nan, -2.5, math.inf])
    got = core_stats(write({"x": t}, tmp_path, "safetensors"), "x")
    assert (got.mean, got.std, got.min, got.max, got.abs_max) == (-2.5, None, -2.5, -2.5, 2.5)


def test_empty_and_scalar_tensors(tmp_path):
    tensors = {
        "empty": torch.zeros(0),
        "empty2d": torch.zeros(3, 0, dtype=torch.bfloat16),
        "scalar": torch.tensor(-0.75),
        "scalar_sub": torch.tensor(1e-40),
    }
    for kind in ("safetensors", "pt"):
        path = write(tensors, tmp_path, kind)
        for name, t in tensors.items():
            got = core_stats(path, name)
            assert got.numel == t.numel()
            assert_stats_match(got.as_json(), reference(t), f"{kind} {name}")
    got = core_stats(path, "empty")
    assert (got.zeros, got.nan, got.inf, got.subnormal) == (0, 0, 0, 0)
    assert got.mean is None and got.std is None


def test_subnormal_counts_per_dtype(tmp_path):
    """Exactly the non-zero finite values below the dtype's own tiny are counted."""
    cases = {
        torch.float32: [1e-45, -1e-40, 1.1754943508222875e-38, 1e-38, 0.0, -0.0, 1.0],  # 3 subnormal
        torch.float64: [5e-324, 2.2250738585072014e-308, -1e-310, 0.0, 1e-300],  # 2 subnormal
        torch.bfloat16: [1e-39, -5e-40, 1.2e-38, 0.0, 3.0],  # 2 subnormal
        torch.float16: [6e-8, 6.103515625e-05, -3e-5, 0.0, 1e-3],  # 2 subnormal
        torch.float8_e4m3fn: [0.005, -0.01, 0.015625, 0.0, 1.0],  # 2 subnormal
        torch.float8_e5m2: [1.6e-5, 3.1e-5, 6.2e-5, 0.0, 1.0],  # 2 subnormal
    }
    want = {
        torch.float32: 3,
        torch.float64: 2,
        torch.bfloat16: 2,
        torch.float16: 2,
        torch.float8_e4m3fn: 2,
        torch.float8_e5m2: 2,
    }
    tensors = {dname(dt): torch.tensor(v, dtype=torch.float64).to(dt) for dt, v in cases.items()}
    path = write(tensors, tmp_path, "safetensors")
    for dt, t in ((dt, tensors[dname(dt)]) for dt in cases):
        assert reference(t)["subnormal"] == want[dt], dt  # the hand count and the reference agree
        assert core_stats(path, dname(dt)).subnormal == want[dt], dt


def test_float64_extreme_magnitudes(tmp_path):
    """float64 garbage (an uninitialized buffer) spans up to 1e300: no overflow in mean or std."""
    rng = np.random.default_rng(11)
    exps = rng.integers(-300, 300, size=5000)
    vals = rng.choice([-1.0, 1.0], size=5000) * rng.random(5000) * 10.0 ** exps.astype(np.float64)
    vals[:4] = [1e300, -1e300, 3e299, 1.0]
    t = torch.from_numpy(vals).reshape(50, 100)
    # Reference computed after scaling by a power of two (exact), so numpy itself does not overflow.
    k = 2.0**-600
    a = vals * k
    ref_mean = float(a.mean()) / k
    ref_std = float(a.std(ddof=1)) / k
    for chunk in (CHUNK_BYTES, 800):
        got = core_stats(write({"g": t}, tmp_path, "safetensors"), "g", chunk)
        assert got.min == -1e300 and got.max == 1e300 and got.abs_max == 1e300
        assert_close(got.mean, ref_mean, max(abs(ref_mean), ref_std), "mean")
        assert_close(got.std, ref_std, max(abs(ref_mean), ref_std), "std")
    r = run_cli("inspect", tmp_path / "t.safetensors", "--format", "json")
    assert r.exit_code == 0, r.stderr
    stats = r.json()["tensors"][0]["stats"]
    assert math.isfinite(stats["std"]) and math.isfinite(stats["mean"])


@pytest.mark.parametrize("huge_first", [False, True])
def test_float64_huge_values_after_many_small_chunks(tmp_path, huge_first):
    """Accumulated state from moderate chunks is carried over when a chunk near 1e308 arrives."""
    rng = np.random.default_rng(12)
    small = rng.standard_normal(4000) * 1e3 + 7.0
    huge = rng.choice([-1.0, 1.0], size=40) * 10.0 ** rng.uniform(290, 307, size=40)
    vals = np.concatenate([huge, small] if huge_first else [small, huge])
    t = torch.from_numpy(vals).reshape(-1, 10)
    k = 2.0**-700  # exact scaling for the reference; the small values stay normal numbers
    ref_mean = float((vals * k).mean()) / k
    ref_std = float((vals * k).std(ddof=1)) / k
    got = core_stats(write({"g": t}, tmp_path, "pt"), "g", chunk_bytes=512)
    scale = max(abs(ref_mean), ref_std)
    assert_close(got.mean, ref_mean, scale, "mean")
    assert_close(got.std, ref_std, scale, "std")
    assert got.max == vals.max() and got.min == vals.min()
    # the moderate values alone are still summarised exactly when nothing huge is present
    got_small = core_stats(write({"s": torch.from_numpy(small)}, tmp_path, "pt"), "s", chunk_bytes=512)
    assert_close(got_small.mean, float(small.mean()), float(small.std(ddof=1)), "small mean")
    assert_close(got_small.std, float(small.std(ddof=1)), float(small.std(ddof=1)), "small std")


# ---------------------------------------------------------------- integer and bool tensors


@HYP
@given(
    dtype=st.sampled_from(INT_DTYPES),
    shape=shapes,
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["safetensors", "pt"]),
    chunk_bytes=st.sampled_from([1, 5, 64, CHUNK_BYTES]),
    narrow=st.booleans(),
)
def test_int_stats_match_reference(dtype, shape, seed, kind, chunk_bytes, narrow):
    rng = np.random.default_rng(seed)
    n = math.prod(shape)
    if dtype == torch.bool:
        t = torch.from_numpy(rng.random(n) < 0.5).reshape(shape)
    else:
        info = torch.iinfo(dtype)
        lo, hi = (-3, 3) if narrow else (info.min, info.max)
        lo = max(lo, info.min)
        t = torch.from_numpy(rng.integers(lo, hi, size=n, endpoint=True, dtype=np.int64)).to(dtype).reshape(shape)
    ref = int_reference(t)
    with tempfile.TemporaryDirectory() as d:
        got = core_stats(write({"i": t}, Path(d), kind), "i", chunk_bytes)
    assert (got.numel, got.zeros, got.min, got.max) == (ref["numel"], ref["zeros"], ref["min"], ref["max"])
    if ref["mean"] is None:
        assert got.mean is None
    else:
        assert abs(got.mean - ref["mean"]) <= 1e-6 * max(abs(ref["min"]), abs(ref["max"]), 1)


# ---------------------------------------------------------------- end to end through the CLI


def mixed_checkpoint() -> dict[str, torch.Tensor]:
    out = {}
    for i, dt in enumerate(FLOAT_DTYPES):
        mode = "bits" if dt in BITS else "normal"
        out[f"f.{dname(dt)}"] = random_values(dt, 3000, seed=100 + i, mode=mode, scale=1.0, special_frac=0.05).reshape(
            30, 100
        )
        out[f"g.{dname(dt)}"] = random_values(dt, 257, seed=200 + i, mode="normal", scale=1e-3, special_frac=0.3)
    out["scalar"] = torch.tensor(3.25)
    out["empty"] = torch.zeros(0, 4)
    out["allnan"] = torch.full((2, 2), math.nan)
    return out


@pytest.mark.parametrize("kind", ["safetensors", "pt"])
def test_cli_json_stats_match_reference(tmp_path, kind):
    tensors = mixed_checkpoint()
    ints = {
        "i.int64": torch.tensor([[0, -5, 7], [2**40, 0, 3]]),
        "i.uint8": torch.tensor([0, 255, 3], dtype=torch.uint8),
        "i.bool": torch.tensor([True, False, False]),
        "i.int8": torch.tensor([], dtype=torch.int8),
    }
    path = write({**tensors, **ints}, tmp_path, kind)
    r = run_cli("inspect", path, "--format", "json")
    assert r.exit_code == 0, r.stderr
    by_name = {t["name"]: t for t in r.json()["tensors"]}
    assert set(by_name) == set(tensors) | set(ints)
    for name, t in tensors.items():
        doc = by_name[name]
        assert doc["numel"] == t.numel()
        assert_stats_match(doc["stats"], reference(t), name)
    for name, t in ints.items():
        ref = int_reference(t)
        s = by_name[name]["stats"]
        assert by_name[name]["numel"] == ref["numel"]
        assert (s["zeros"], s["min"], s["max"]) == (ref["zeros"], ref["min"], ref["max"]), name
        if ref["mean"] is None:
            assert s["mean"] is None
        else:
            assert s["mean"] == pytest.approx(ref["mean"], rel=1e-6), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=dname)
@pytest.mark.parametrize("n", [7000, 12000, 300_001])
def test_constant_tensor_has_exactly_zero_std_and_its_own_mean(tmp_path, dtype, n):
    """Block and chunk sums of a constant are inexact when the length is not a whole number of
    blocks; the statistics must still say std 0 and the value itself, in both paths."""
    t = torch.full((n,), 0.001, dtype=dtype)
    path = write({"w": t}, tmp_path, "safetensors")
    got = core_stats(path, "w", 4096)
    value = float(t[0])
    assert (got.std, got.mean, got.min, got.max) == (0.0, value, value, value)


def test_negative_zero_is_reported_as_zero(tmp_path):
    t = torch.tensor([[-0.0, 0.0]] * 8)
    path = write({"w": t}, tmp_path, "safetensors")
    got = core_stats(path, "w")
    assert got.min == 0 and got.max == 0
    assert math.copysign(1.0, got.min) == 1.0 and math.copysign(1.0, got.max) == 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=dname)
def test_huge_compares_the_exact_values_with_max_abs(tmp_path, dtype):
    """float32(0.1) = 0.10000000149... is above 0.1: it counts as huge with --max-abs 0.1 (a
    comparison in float32, where 0.1 rounds to the same number, would miss it)."""
    t = torch.tensor([0.1, -0.1, 0.05, 0.2, 1.0], dtype=dtype)
    path = write({"w": t}, tmp_path, "safetensors")
    with open_checkpoint(path) as ckpt:
        got = compute_stats(ckpt.tensors[0], max_abs=0.1)
    want = sum(abs(v) > 0.1 for v in t.double().tolist())
    assert got.huge == want
