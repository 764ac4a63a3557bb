"""Issue 15: the C kernel's one-pass statistics (each instruction set it has), ``file_stats``
(the kernel reading a file region itself), and its diff primitives, against float64 numpy.

``test_kernel.py`` holds the kernel's default path to the reference; here every instruction set
this CPU offers (portable, AVX2, AVX-512) is held to the same rules, with the float32, bfloat16
and float16 decoders, the exponent-field test for zeros and subnormals (used when ``tiny`` is the
dtype's own smallest normal) and the smallest-magnitude test (any other ``tiny``: float8 decoded
to float32), NaN and infinities at block edges, and the float64 accuracy of the sums.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pinit.stats
from pinit.diff import TensorDiff, _Acc
from pinit.stats import _FloatAccumulator
from test_kernel import assert_matches_reference

kernel = pinit.stats._load_kernel()
pytestmark = pytest.mark.skipif(kernel is None, reason="pinit._kernel is not built")

F32, BF16, F16, F64 = 0, 1, 2, 3
TINY32 = float(np.finfo(np.float32).tiny)
TINY16 = float(np.finfo(np.float16).tiny)
ISAS = list(range(kernel.isa()[1] + 1)) if kernel is not None else []
ISA_IDS = [["portable", "avx2", "avx512"][i] for i in ISAS]


def reference_check(part: tuple, values: np.ndarray, tiny: float, max_abs: float = 1e6, tol: float = 1e-6) -> None:
    """One reduced part against a plain float64 computation (test_kernel's reference)."""
    acc = _FloatAccumulator(tiny, max_abs)
    acc.add_reduced(part)
    assert_matches_reference(acc, values, tiny, max_abs, tol)


def encode(x32: np.ndarray, kind: int) -> tuple[np.ndarray, np.ndarray]:
    """(raw little-endian bytes, the float32 values they hold) of float32 values in ``kind``."""
    if kind == F32:
        return x32.view(np.uint8), x32
    if kind == BF16:
        bits = (x32.view(np.uint32) >> 16).astype("<u2")
        return bits.view(np.uint8), (bits.astype(np.uint32) << 16).view(np.float32)
    with np.errstate(over="ignore"):
        h = x32.astype("<f2")
    return h.view(np.uint8), h.astype(np.float32)


def test_isa_reports_a_level_and_refuses_what_the_cpu_lacks():
    name, level = kernel.isa()
    assert name in ("portable", "avx2", "avx512") and level in (0, 1, 2)
    raw = np.ones(8, dtype=np.float32).view(np.uint8)
    if level < 2:
        with pytest.raises(ValueError, match="instruction set"):
            kernel.float_stats(raw, F32, TINY32, 1e6, level + 1)
    # every level up to the best gives the same answer on a simple input
    assert {kernel.float_stats(raw, F32, TINY32, 1e6, i)[:6] for i in ISAS} == {(8, 1.0, 0.0, 8.0, 1.0, 1.0)}


@pytest.mark.parametrize("isa", ISAS, ids=ISA_IDS)
@pytest.mark.parametrize("kind", [BF16, F16], ids=["bfloat16", "float16"])
def test_every_16_bit_pattern_at_every_lane(isa, kind):
    """All 65,536 bit patterns in one buffer, in 2,048-value blocks: each pattern sits in some vector
    lane, with NaN and infinities in 8 of 32 blocks only (the others are reduced by the fast loop)."""
    bits = np.arange(1 << 16, dtype=np.uint32)
    if kind == BF16:
        values = (bits << 16).view(np.float32)
        tiny = TINY32
    else:
        values = bits.astype(np.uint16).view(np.float16).astype(np.float32)
        tiny = TINY16
    raw = bits.astype("<u2").view(np.uint8)
    for lo in range(0, 1 << 16, 1 << 13):  # several calls: the fast loop's blocks and NaN blocks
        part = kernel.float_stats(raw[2 * lo : 2 * (lo + (1 << 13))], kind, tiny, 1e6, isa)
        reference_check(part, values[lo : lo + (1 << 13)], tiny, tol=1e-12)


@pytest.mark.parametrize("isa", ISAS, ids=ISA_IDS)
@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    n=st.integers(0, 5000),
    seed=st.integers(0, 2**32 - 1),
    offset=st.integers(0, 3),
    kind=st.sampled_from([F32, BF16, F16]),
    loc=st.sampled_from([0.0, 1.0, -3e3, 1e7]),
    scale=st.sampled_from([1.0, 1e-6, 1e-40, 1e3, 1e35]),
    specials=st.sampled_from([0.0, 0.001, 0.3]),
    own_tiny=st.booleans(),
)
def test_chunks_match_reference(isa, n, seed, offset, kind, loc, scale, specials, own_tiny):
    """Random chunks of each dtype across block edges, at every byte alignment, with NaN,
    infinities, zeros, subnormals and huge values; ``tiny`` the dtype's own (exponent test) or
    another (smallest-magnitude test, as for float8 decoded to float32)."""
    rng = np.random.default_rng(seed)
    x = (loc + scale * rng.standard_normal(n)).astype(np.float32)
    pool = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-39, -3e-42, 3e38, -2e7, 1e-6], dtype=np.float32)
    hit = rng.random(n) < specials
    x[hit] = rng.choice(pool, size=int(hit.sum()))
    raw, values = encode(x, kind)
    tiny = (TINY16 if kind == F16 else TINY32) if own_tiny else 2.0**-6
    buf = np.zeros(raw.size + offset, dtype=np.uint8)
    buf[offset:] = raw
    reference_check(kernel.float_stats(buf[offset:], kind, tiny, 1e6, isa), values, tiny)


@pytest.mark.parametrize("isa", ISAS, ids=ISA_IDS)
@pytest.mark.parametrize("kind", [F32, BF16, F16], ids=["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("loc", [0.0, 3.0, 1e4, -2e6])
def test_sums_are_float64_accurate(isa, kind, loc):
    """Mean and std to about 1e-12 of a float64 computation, also when the mean dwarfs the spread."""
    if kind == F16 and abs(loc) > 6e4:
        pytest.skip("beyond float16's range")
    rng = np.random.default_rng(11)
    x32 = (loc + rng.standard_normal(100_003) * (1 + abs(loc) * 1e-3)).astype(np.float32)
    raw, values = encode(x32, kind)
    tiny = TINY16 if kind == F16 else TINY32
    acc = _FloatAccumulator(tiny, 1e6)
    acc.add_reduced(kernel.float_stats(raw, kind, tiny, 1e6, isa))
    x = values.astype(np.float64)
    mean, std = x.mean(), x.std(ddof=1)
    assert abs(acc.mean - mean) <= 1e-12 * max(abs(mean), std)
    assert abs(math.sqrt(acc.m2 / (x.size - 1)) - std) <= 1e-11 * std


@pytest.mark.parametrize("isa", ISAS, ids=ISA_IDS)
@pytest.mark.parametrize("n", [1, 31, 32, 33, 2047, 2048, 2049, 4096 * 3 + 5])
def test_specials_at_lane_and_block_edges(isa, n):
    base = np.arange(n, dtype=np.float32) - n / 2
    for kind in (F32, BF16, F16):
        for special in (np.nan, np.inf, 0.0, 1e-41):
            for pos in sorted({0, 15, 16, 31, n // 2, n - 1} & set(range(n))):
                y = base.copy()
                y[pos] = special
                raw, values = encode(y, kind)
                tiny = TINY16 if kind == F16 else TINY32
                reference_check(kernel.float_stats(raw, kind, tiny, 1e6, isa), values, tiny)


def test_isas_agree_closely_on_a_large_buffer():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(1 << 20) * 0.02).astype(np.float32)
    for kind in (F32, BF16, F16):
        raw, values = encode(x, kind)
        tiny = TINY16 if kind == F16 else TINY32
        parts = [kernel.float_stats(raw, kind, tiny, 1e6, i) for i in ISAS]
        for p in parts:
            reference_check(p, values, tiny, tol=1e-12)
            assert p[:1] + p[4:] == parts[0][:1] + parts[0][4:]  # counts, min and max: exactly equal


# ---------------------------------------------------------------------------------------- file_stats


needs_pread = pytest.mark.skipif(kernel is None or not hasattr(kernel, "file_stats"), reason="no pread here")


@pytest.mark.parametrize("kind", [F32, BF16, F16], ids=["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("chunk", [1 << 20, 3 * 8192, 1000])
def test_chunked_call_gives_the_numbers_of_one_call_per_chunk(kind, chunk):
    """float_stats(..., chunk) merges its chunks as pinit.stats merges the tuples of one call per
    chunk: exactly the same numbers (so the path a tensor takes does not show in its statistics)."""
    rng = np.random.default_rng(9)
    x = (rng.standard_normal(700_001) * 3 + 1).astype(np.float32)
    x[::997] = np.nan
    x[5::1009] = 0.0
    raw, _ = encode(x, kind)
    tiny = TINY16 if kind == F16 else TINY32
    step = chunk - chunk % (4 if kind == F32 else 2)
    one = _FloatAccumulator(tiny, 1e6)
    for at in range(0, raw.size, step):
        one.add_reduced(kernel.float_stats(raw[at : at + step], kind, tiny, 1e6))
    whole = _FloatAccumulator(tiny, 1e6)
    whole.assign_reduced(kernel.float_stats(raw, kind, tiny, 1e6, -1, step))
    assert vars(whole) == vars(one)


@needs_pread
@pytest.mark.parametrize("kind", [F32, BF16, F16], ids=["float32", "bfloat16", "float16"])
@pytest.mark.parametrize(("chunk", "io"), [(1 << 20, 1 << 18), (1 << 20, 8192), (3 * 8192, 8192), (1 << 20, 1000)])
def test_file_stats_equals_float_stats_of_the_same_bytes(tmp_path: Path, kind, chunk, io):
    """Reading in pieces of whole blocks changes nothing: exactly the same tuple as float_stats."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(300_001) * 3 + 1).astype(np.float32)
    x[::997] = np.nan
    x[5::1009] = 0.0
    raw, _ = encode(x, kind)
    path = tmp_path / "data.bin"
    path.write_bytes(b"\x07" * 13 + raw.tobytes() + b"\x01" * 5)  # an odd offset, bytes after
    fd = os.open(path, os.O_RDONLY)
    try:
        got = kernel.file_stats(fd, 13, raw.size, kind, TINY32, 1e6, chunk, io)
    finally:
        os.close(fd)
    want = kernel.float_stats(raw, kind, TINY32, 1e6, -1, chunk)
    if io % (2048 * (4 if kind == F32 else 2)) == 0:
        assert got == want
    else:  # blocks cut at other places: the same counts, sums to rounding
        assert got[:1] + got[4:] == want[:1] + want[4:]
        assert got[1] == pytest.approx(want[1], rel=1e-12)
        assert got[2] == pytest.approx(want[2], rel=1e-12)


@needs_pread
def test_file_stats_reports_a_short_file_and_bad_arguments(tmp_path: Path):
    path = tmp_path / "short.bin"
    path.write_bytes(b"\x00" * 100)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(EOFError):
            kernel.file_stats(fd, 0, 200, F32, TINY32, 1e6)
        with pytest.raises(ValueError):
            kernel.file_stats(fd, 0, 6, F32, TINY32, 1e6)  # not whole float32 values
        with pytest.raises(ValueError):
            kernel.file_stats(fd, -1, 4, F32, TINY32, 1e6)
        with pytest.raises(ValueError):
            kernel.file_stats(fd, 0, 4, F32, TINY32, 1e6, 6)  # a chunk of partial values
        assert kernel.file_stats(fd, 0, 0, F32, TINY32, 1e6)[0] == 0
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        kernel.file_stats(fd, 0, 4, F32, TINY32, 1e6)  # closed


@needs_pread
def test_files_equal_finds_the_first_differing_chunk(tmp_path: Path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, 1_000_003, dtype=np.uint8)
    other = data.copy()
    other[777_777] ^= 1
    pa, pb = tmp_path / "a.bin", tmp_path / "b.bin"
    pa.write_bytes(b"xx" + data.tobytes())
    pb.write_bytes(b"yyy" + other.tobytes())
    fa, fb = os.open(pa, os.O_RDONLY), os.open(pb, os.O_RDONLY)
    try:
        assert kernel.files_equal(fa, 2, fb, 3, 777_777) == -1
        assert kernel.files_equal(fa, 2, fb, 3, data.size) == 777_777 // 524288 * 524288
        assert kernel.files_equal(fa, 2, fb, 3, data.size, 1000) == 777_000
        assert kernel.files_equal(fa, 2, fa, 2, data.size) == -1
        with pytest.raises(EOFError):
            kernel.files_equal(fa, 2, fa, 2, data.size + 10)
    finally:
        os.close(fa)
        os.close(fb)


# ---------------------------------------------------------------------------------------- diff_float


def numpy_diff(xa: np.ndarray, xb: np.ndarray, atol: float, rtol: float) -> TensorDiff:
    """The numpy path of pinit.diff (pinit.diff._Acc) on decoded float64 values."""
    acc = _Acc()
    acc.exact = False
    acc.values(xa, xb)
    acc.close(xa, xb, atol, rtol)
    d = TensorDiff("t", "changed")
    acc.finish(d)
    return d


@pytest.mark.parametrize("isa", ISAS, ids=ISA_IDS)
@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(
    n=st.integers(1, 3000),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from([F32, BF16, F16, F64]),
    changed=st.sampled_from([0.0, 0.01, 0.5, 1.0]),
    specials=st.sampled_from([0.0, 0.05]),
    atol=st.sampled_from([0.0, 1e-3]),
    rtol=st.sampled_from([0.0, 1e-2]),
)
def test_diff_float_matches_the_numpy_path(isa, n, seed, kind, changed, specials, atol, rtol):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n)
    b = a.copy()
    hit = rng.random(n) < changed
    b[hit] += rng.standard_normal(int(hit.sum())) * rng.choice([1e-4, 1e-2, 1.0], size=int(hit.sum()))
    pool = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30])
    for arr in (a, b):
        s = rng.random(n) < specials
        arr[s] = rng.choice(pool, size=int(s.sum()))
    if kind == F64:
        ra, rb = a.astype("<f8").view(np.uint8), b.astype("<f8").view(np.uint8)
        xa, xb = ra.view("<f8").astype(np.float64), rb.view("<f8").astype(np.float64)
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            ra, va = encode(a.astype(np.float32), kind)
            rb, vb = encode(b.astype(np.float32), kind)
        xa, xb = va.astype(np.float64), vb.astype(np.float64)
    differ, max_abs, sq_diff, sq_a, mismatched, nan_a, nan_b, inf = kernel.diff_float(ra, rb, kind, atol, rtol, isa)
    width = 8 if kind == F64 else 4 if kind == F32 else 2
    assert differ == int(np.count_nonzero(ra.view(f"V{width}") != rb.view(f"V{width}")))
    want = numpy_diff(xa, xb, atol, rtol)
    assert mismatched == want.mismatched
    assert (nan_a + nan_b, inf) == (want.nan_mismatch, want.inf_mismatch)
    assert (nan_a, nan_b) == (want.nan_only_in_a, want.nan_only_in_b)
    assert max_abs == want.max_abs_diff
    both = np.isfinite(xa) & np.isfinite(xb)
    assert sq_diff == pytest.approx(float(np.sum((xa[both] - xb[both]) ** 2)), rel=1e-12, abs=0)
    assert sq_a == pytest.approx(float(np.sum(xa[both] ** 2)), rel=1e-12, abs=0)


def test_diff_float_refuses_mismatched_buffers():
    with pytest.raises(ValueError):
        kernel.diff_float(b"\x00" * 8, b"\x00" * 4, F32, 0.0, 0.0)
    with pytest.raises(ValueError):
        kernel.diff_float(b"\x00" * 6, b"\x00" * 6, F32, 0.0, 0.0)
    with pytest.raises(ValueError):
        kernel.diff_float(b"\x00" * 8, b"\x00" * 8, 9, 0.0, 0.0)


def test_bytes_equal():
    a = np.arange(1 << 17, dtype=np.uint32).view(np.uint8)
    b = a.copy()
    assert kernel.bytes_equal(a, b) is True
    b[-1] ^= 0x80
    assert kernel.bytes_equal(a, b) is False
    assert kernel.bytes_equal(a[:10], a[:11]) is False
    assert kernel.bytes_equal(b"", b"") is True
