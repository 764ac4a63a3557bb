"""Per-tensor statistics in one streaming pass (SPEC section 3).

Bytes arrive in chunks; each chunk is decoded to float32 (float64 stays
float64), reduced, and merged into running totals.  Means and spreads are
merged with Chan's parallel formula in float64, so accuracy does not depend on
tensor size and a NaN in one chunk does not hide the rest: mean, std, min, max
and abs_max cover the finite values only.

Floating chunks other than float64 are reduced by the C kernel ``pinit._kernel``
when it was built (see ``_kernel.c``); otherwise, and for float64, by the numpy
code below, which gives the same results at about half the speed.  A contiguous
tensor of float32, bfloat16 or float16 in a file is reduced by one kernel call
that reads the file region itself (no Python code per chunk).
"""

from __future__ import annotations

import math
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from pinit import dtypes
from pinit.storage import CHUNK_BYTES, FileStorage, TensorEntry

if TYPE_CHECKING:  # numpy is imported when a chunk is reduced in Python: the C kernel reading files needs none
    import numpy as np

# float32 chunks whose magnitudes stay below this are reduced in float32: their squares,
# summed over a chunk, cannot overflow (2^50 squared times 2^20 elements < float32's max).
_F32_FAST_LIMIT = 2.0**50
_BIG = 2.0**400  # largest magnitude accumulated unscaled: squares times counts stay far below float64's max


@dataclass
class Stats:
    numel: int
    mean: float | None = None
    std: float | None = None
    min: float | int | None = None
    max: float | int | None = None
    abs_max: float | None = None
    zeros: int = 0
    nan: int | None = None
    inf: int | None = None
    subnormal: int | None = None
    huge: int | None = None  # finite values with |x| > max_abs (evidence for the flag)
    total: float = 0.0  # float64 sum of finite values (a cheap fingerprint for duplicates)

    def as_json(self) -> dict[str, float | int | None]:
        return {
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            "abs_max": self.abs_max,
            "zeros": self.zeros,
            "nan": self.nan,
            "inf": self.inf,
            "subnormal": self.subnormal,
        }

    def fingerprint(self) -> tuple[object, ...]:
        """Equal for tensors with equal bytes. Only exact quantities: float sums may round
        differently for equal bytes (BLAS kernels depend on the buffer's alignment)."""
        return (self.numel, self.min, self.max, self.zeros, self.nan, self.inf, self.subnormal)


_KERNEL_KINDS = {"float32": 0, "bfloat16": 1, "float16": 2}


def _load_kernel() -> ModuleType | None:
    """The optional C accelerator (see _kernel.c), or None: not built, or PINIT_NO_KERNEL set
    (to anything but empty, 0, false or no)."""
    if os.environ.get("PINIT_NO_KERNEL", "").strip().lower() not in ("", "0", "false", "no"):
        return None
    try:
        from pinit import _kernel
    except ImportError:
        return None
    return _kernel


_kernel = _load_kernel()


def kernel_available() -> bool:
    return _kernel is not None


_local = threading.local()
_ROW = 4096


def _ones(n: int) -> np.ndarray:
    import numpy as np

    ones: np.ndarray | None = _local.__dict__.get("ones")
    if ones is None or ones.size < n:
        ones = _local.__dict__["ones"] = np.ones(n, dtype=np.float32)
    return ones[:n]


def _sum32(v: np.ndarray) -> float:
    """The sum of a float32 vector: rows of 4,096 summed by a matrix-vector product (BLAS, three
    times the speed of numpy's pairwise sum), the row sums added in float64. Each row's float32
    error is that of a few hundred additions (BLAS keeps several accumulators), far below the
    1e-6 the statistics promise."""
    import numpy as np

    k = v.size - v.size % _ROW
    total = 0.0
    if k:
        total = float(np.add.reduce((v[:k].reshape(-1, _ROW) @ _ones(_ROW)).astype(np.float64)))
    if k < v.size:
        total += float(np.add.reduce(v[k:], dtype=np.float64))
    return total


def scratch(name: str, n: int, dtype: type) -> np.ndarray:
    """A per-thread reusable buffer of at least ``n`` elements (fresh pages cost page faults)."""
    import numpy as np

    pool: dict[str, np.ndarray] = _local.__dict__.setdefault("pool", {})
    buf = pool.get(name)
    if buf is None or buf.size < n or buf.dtype != dtype:
        buf = pool[name] = np.empty(max(n, 1), dtype=dtype)
    return buf[:n]


_F32_MAX = 3.4028234663852886e38


def _to_float32(x: float) -> float:
    """``x`` rounded to the nearest float32 (|x| below float32's overflow threshold)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _float32_at_most(x: float) -> float:
    """The largest float32 not above ``x`` (x > 0; infinity from float32's maximum on), as
    ``np.nextafter(np.float32(x), 0)`` where np.float32(x) rounds up, without numpy."""
    if x >= _F32_MAX:
        return math.inf  # no finite float32 is larger
    m = _to_float32(x)
    if m > x:
        (bits,) = struct.unpack("<I", struct.pack("<f", m))
        m = struct.unpack("<f", struct.pack("<I", bits - 1))[0]
    return m


class _FloatAccumulator:
    """Running totals over float chunks (Chan et al. merge of count, mean, M2)."""

    def __init__(self, tiny: float, max_abs: float) -> None:
        self.tiny = tiny
        self.max_abs = max_abs
        # the largest float32 not above max_abs: for a float32 x, |x| > max_abs exactly when
        # |x| > max_abs32, compared in float32 (max_abs itself may round up, e.g. 0.1)
        self.max_abs32 = _float32_at_most(max_abs)
        self.n = 0  # finite values
        self.mean = 0.0
        self.m2 = 0.0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.zeros = 0
        self.nan = 0
        self.inf = 0
        self.subnormal = 0
        self.huge = 0
        # tiny² in float32: 0 for float32/bfloat16 (squares below ~4e-23 flush to 0 as well)
        self.tiny_sq = _to_float32(_to_float32(tiny) ** 2)
        # mean and m2 are kept in units of 1/scale, a power of two below 1 once float64 values
        # beyond _BIG arrive (garbage near 1e308 would otherwise overflow sums and squares)
        self.scale = 1.0

    def _scratch(self, n: int) -> np.ndarray:
        import numpy as np

        return scratch("work", n, np.float64)

    def _squares(self, n: int) -> np.ndarray:
        import numpy as np

        return scratch("squares", n, np.float32)

    def add(self, x: np.ndarray) -> None:
        """Merge a chunk of float32/float64 values (x is not modified)."""
        import numpy as np

        n = x.size
        if n == 0:
            return
        lo, hi = float(x.min()), float(x.max())  # NaN propagates into both
        if not (math.isfinite(lo) and math.isfinite(hi)):
            finite = np.isfinite(x)
            n_fin = int(np.count_nonzero(finite))
            n_nan = int(np.count_nonzero(np.isnan(x)))
            self.nan += n_nan
            self.inf += n - n_fin - n_nan
            if n_fin == 0:
                return
            x = x[finite]
            n = n_fin
            lo, hi = float(x.min()), float(x.max())
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        big = max(-lo, hi)
        if x.dtype == np.float32 and big < _F32_FAST_LIMIT:
            self._add_f32(x, lo, hi, big)
        else:
            self._add_wide(x, big)

    def add_reduced(self, part: tuple[int, float, float, float, float, float, int, int, int, int, int]) -> None:
        """Merge a chunk already reduced by the C kernel (float32-wide values: scale is 1)."""
        n, mean, m2, total, lo, hi, zeros, nan, inf, subnormal, huge = part
        self.zeros += zeros
        self.nan += nan
        self.inf += inf
        self.subnormal += subnormal
        self.huge += huge
        if n:
            self.min = min(self.min, lo)
            self.max = max(self.max, hi)
            self._merge(n, mean, max(m2, 0.0), total)

    def assign_reduced(self, part: tuple[int, float, float, float, float, float, int, int, int, int, int]) -> None:
        """Take the totals of a tensor the C kernel reduced chunk by chunk, merging the chunks as
        :meth:`add_reduced` does (the same numbers as one add_reduced per chunk); fresh only."""
        assert self.n == 0 and self.scale == 1.0 and not (self.zeros or self.nan or self.inf)
        self.n, self.mean, self.m2, self.total, lo, hi, self.zeros, self.nan, self.inf, self.subnormal, self.huge = part
        if self.n:
            self.min, self.max = lo, hi

    def _add_f32(self, x: np.ndarray, lo: float, hi: float, big: float) -> None:
        """The fast path for float32 chunks of moderate magnitude: six passes over the chunk,
        in float32 (sums by rows of a few thousand, see _sum32), merged in float64."""
        import numpy as np

        n = x.size
        sq = np.square(x, out=self._squares(n))
        if float(sq.min()) <= self.tiny_sq:  # maybe a zero or subnormal: count them exactly
            zeros = n - int(np.count_nonzero(x))
            self.zeros += zeros
            if self.tiny:
                self.subnormal += int(np.count_nonzero(np.abs(x) < self.tiny)) - zeros
        if big > self.max_abs:
            self.huge += int(np.count_nonzero(np.abs(x) > np.float32(self.max_abs32)))
        s = _sum32(x)
        if lo == hi:
            self._merge(n, lo * self.scale, 0.0, s)
            return
        mean = s / n
        m2 = _sum32(sq) - s * mean
        if mean * mean * (n - 1) > 0.25 * max(m2, 0.0):
            # The mean is large against the spread: sums of squares would cancel. Shift by the
            # mean first (once more if that shift was itself too rough).
            for _ in range(2):
                d = np.subtract(x, np.float32(mean), out=self._squares(n))
                s1 = _sum32(d)
                np.square(d, out=d)
                m2 = _sum32(d) - s1 * s1 / n
                mean = float(np.float32(mean)) + s1 / n
                if (s1 / n) ** 2 * (n - 1) <= 1e-3 * max(m2, 0.0):
                    break
        # the running totals may be in scaled units (after huge float64 values): convert
        self._merge(n, mean * self.scale, max(m2, 0.0) * self.scale * self.scale, s)

    def _add_wide(self, x: np.ndarray, big: float) -> None:
        """Float64 chunks, and float32 chunks holding huge magnitudes (uninitialized garbage)."""
        import numpy as np

        n = x.size
        work = self._scratch(n)
        np.copyto(work, x, casting="safe")
        absw = np.abs(work)
        zeros = n - int(np.count_nonzero(work))
        self.zeros += zeros
        if self.tiny:
            self.subnormal += int(np.count_nonzero(absw < self.tiny)) - zeros
        if big > self.max_abs:
            self.huge += int(np.count_nonzero(absw > self.max_abs))
        if big * self.scale > _BIG:
            self._rescale(2.0 ** math.floor(math.log2(_BIG / big)))
        total = float(np.add.reduce(work))  # a fingerprint only: inf for garbage near 1e308 is fine
        if self.scale != 1.0:
            np.multiply(work, self.scale, out=work)
        mean = float(np.add.reduce(work)) / n
        np.subtract(work, mean, out=work)
        np.square(work, out=work)
        m2 = float(np.add.reduce(work))
        self._merge(n, mean, m2, total)

    def _rescale(self, scale: float) -> None:
        f = scale / self.scale
        self.mean *= f
        self.m2 *= f * f
        self.scale = scale

    def _merge(self, n: int, mean: float, m2: float, s: float) -> None:
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total
        self.total += s

    def result(self, numel: int) -> Stats:
        st = Stats(numel=numel, zeros=self.zeros, nan=self.nan, inf=self.inf, subnormal=self.subnormal, huge=self.huge)
        st.total = self.total
        if self.n:
            st.mean = self.mean / self.scale
            st.min = self.min + 0.0  # + 0.0: -0.0 becomes 0.0 (which zero comes first is an accident)
            st.max = self.max + 0.0
            st.abs_max = max(abs(self.min), abs(self.max))
            st.std = math.sqrt(max(self.m2, 0.0) / (self.n - 1)) / self.scale if self.n > 1 else None
        return st


class _IntAccumulator:
    def __init__(self) -> None:
        self.n = 0
        self.total = 0.0
        self.min: int | None = None
        self.max: int | None = None
        self.zeros = 0

    def add(self, x: np.ndarray) -> None:
        import numpy as np

        if x.size == 0:
            return
        if x.dtype == np.bool_:
            x = x.view(np.uint8)
        self.n += x.size
        self.zeros += x.size - int(np.count_nonzero(x))
        self.total += float(np.add.reduce(x, dtype=np.float64))
        lo, hi = int(x.min()), int(x.max())
        self.min = lo if self.min is None else min(self.min, lo)
        self.max = hi if self.max is None else max(self.max, hi)

    def result(self, numel: int) -> Stats:
        st = Stats(numel=numel, zeros=self.zeros, min=self.min, max=self.max)
        st.total = self.total
        if self.n:
            st.mean = self.total / self.n
        return st


def compute_stats(entry: TensorEntry, max_abs: float = 1e6, chunk_bytes: int = CHUNK_BYTES) -> Stats | None:
    """Statistics of one tensor, reading its bytes once; None for complex tensors.

    The bytes come from :meth:`TensorEntry.stat_parts`, in storage order: a broadcast view's
    elements are read once each and stand for ``repeat`` equal elements (see :func:`_repeat`)."""
    dt = entry.dt
    numel = entry.numel
    if dt.kind == "complex":
        return None
    if dt.kind == "float":
        acc = _FloatAccumulator(dt.tiny, max_abs)
        if chunk_bytes == CHUNK_BYTES and _whole_in_kernel(acc, entry):
            return acc.result(numel)
    import numpy as np

    buf = scratch("read", chunk_bytes, np.uint8)
    if dt.kind == "float":
        for i, (repeat, chunks) in enumerate(entry.stat_parts(chunk_bytes, buf=buf)):
            part = acc if i == 0 else _FloatAccumulator(dt.tiny, max_abs)
            _add_float_chunks(part, chunks, dt)
            _repeat(part, repeat)
            if part is not acc:
                _absorb(acc, part)
        return acc.result(numel)
    npdt = dtypes.numpy_dtype(dt.name)
    assert npdt is not None
    iacc = _IntAccumulator()
    for i, (repeat, chunks) in enumerate(entry.stat_parts(chunk_bytes, buf=buf)):
        ipart = iacc if i == 0 else _IntAccumulator()
        for raw in chunks:
            ipart.add(raw.view(npdt))
        _repeat(ipart, repeat)
        if ipart is not iacc:
            _absorb(iacc, ipart)
    return iacc.result(numel)


def file_region(entry: TensorEntry) -> tuple[int, int] | None:
    """(fd, offset) of a contiguous tensor's bytes in a file, for the C kernel to read itself;
    None for other storages (a subclass of FileStorage may read otherwise) and views."""
    s = entry.storage
    if type(s) is not FileStorage or not entry.is_contiguous:
        return None
    return s.fd, s.offset + entry.offset * entry.dt.itemsize


def same_bytes_in_kernel(a: TensorEntry, b: TensorEntry) -> bool | None:
    """Whether two contiguous tensors in files hold the same bytes, compared by the C kernel
    (pread of both, memcmp: no numpy, no Python per chunk); None where that does not apply (no
    kernel, another storage, a view, a read error: compare otherwise, which reports it)."""
    files_equal = getattr(_kernel, "files_equal", None)
    ra, rb = file_region(a), file_region(b)
    if files_equal is None or ra is None or rb is None:
        return None
    if a.nbytes != b.nbytes:
        return False
    try:
        return bool(files_equal(*ra, *rb, a.nbytes) == -1)
    except (OSError, EOFError):
        return None


def _whole_in_kernel(acc: _FloatAccumulator, entry: TensorEntry) -> bool:
    """Reduce a contiguous tensor in one call of the C kernel, which reads a file region itself
    (``file_stats``: pread into a buffer of its own, no Python per chunk)
    or takes the bytes in memory whole; False where that does not apply (no kernel, another dtype,
    another kind of storage, a view) or the read failed (the chunked path then reports it)."""
    kind = _KERNEL_KINDS.get(entry.dtype)
    if _kernel is None or kind is None or not entry.is_contiguous or entry.numel == 0:
        return False
    storage = entry.storage
    item = entry.dt.itemsize
    start = entry.offset * item
    nbytes = entry.nbytes
    tiny, max_abs = entry.dt.tiny, float(acc.max_abs32)
    step = max(1, CHUNK_BYTES // item) * item  # the chunks of iter_bytes: the same numbers as that path
    region = file_region(entry)
    if region is not None and hasattr(_kernel, "file_stats"):
        try:
            part = _kernel.file_stats(*region, nbytes, kind, tiny, max_abs, step)
        except (OSError, EOFError):
            return False
    else:
        mem = storage.view(start, nbytes)
        if mem is None:
            return False
        part = _kernel.float_stats(mem, kind, tiny, max_abs, -1, step)
    acc.assign_reduced(part)
    return True


def _add_float_chunks(acc: _FloatAccumulator, chunks: Iterator[np.ndarray], dt: dtypes.DType) -> None:
    """Reduce raw chunks of a floating dtype into ``acc`` (the C kernel when built)."""
    import numpy as np

    if _kernel is not None and dt.name != "float64":
        reduce = _kernel.float_stats
        kind = _KERNEL_KINDS.get(dt.name)
        for raw in chunks:
            if kind is None:  # float8: decoded by table to float32 first
                raw = dtypes.decode_float(raw, dt.name, out=scratch("decoded", raw.size, np.float32))
            code = _KERNEL_KINDS["float32"] if kind is None else kind
            acc.add_reduced(reduce(raw, code, dt.tiny, float(acc.max_abs32)))
        return
    for raw in chunks:
        if dt.name in ("float32", "float64"):
            acc.add(dtypes.decode_float(raw, dt.name))
        else:
            n = raw.size // dt.itemsize
            acc.add(dtypes.decode_float(raw, dt.name, out=scratch("decoded", n, np.float32)))


def _absorb(acc: _FloatAccumulator | _IntAccumulator, part: _FloatAccumulator | _IntAccumulator) -> None:
    """Merge the totals of ``part`` (values disjoint from those of ``acc``) into ``acc``."""
    acc.zeros += part.zeros
    if isinstance(acc, _IntAccumulator):
        assert isinstance(part, _IntAccumulator)
        acc.n += part.n
        acc.total += part.total
        if part.min is not None and part.max is not None:
            acc.min = part.min if acc.min is None else min(acc.min, part.min)
            acc.max = part.max if acc.max is None else max(acc.max, part.max)
        return
    assert isinstance(part, _FloatAccumulator)
    acc.nan += part.nan
    acc.inf += part.inf
    acc.subnormal += part.subnormal
    acc.huge += part.huge
    if not part.n:
        return
    scale = min(acc.scale, part.scale)  # both in the units of the smaller scale
    if acc.scale != scale:
        acc._rescale(scale)
    if part.scale != scale:
        part._rescale(scale)
    acc.min = min(acc.min, part.min)
    acc.max = max(acc.max, part.max)
    acc._merge(part.n, part.mean, part.m2, part.total)


def _repeat(acc: _FloatAccumulator | _IntAccumulator, k: int) -> None:
    """Totals of the values seen, each taken ``k`` times (a broadcast view): counts and sums
    scale by k, means, minima and maxima stay, and so does every deviation from the mean, so the
    sum of squared deviations M2 scales by k as well (unbiased std: sqrt(k*M2 / (k*n - 1)))."""
    if k == 1:
        return
    acc.n *= k
    acc.total *= k
    acc.zeros *= k
    if isinstance(acc, _FloatAccumulator):
        acc.m2 *= k
        acc.nan *= k
        acc.inf *= k
        acc.subnormal *= k
        acc.huge *= k


def first_values(entry: TensorEntry, n: int) -> list[float | int | bool | str | list[float]]:
    """The first ``n`` elements in row-major order, as JSON-friendly Python values."""
    dt = entry.dt
    count = min(n, entry.numel)
    if count <= 0:
        return []
    raw = entry.read_bytes(count * dt.itemsize)
    if dt.kind == "float":
        return [_json_float(float(v)) for v in dtypes.decode_float(raw, dt.name)]
    npdt = dtypes.numpy_dtype(dt.name)
    assert npdt is not None
    arr = raw.view(npdt)
    if dt.kind == "bool":
        return [bool(v) for v in arr]
    if dt.kind == "complex":
        return [[_json_float(float(v.real)), _json_float(float(v.imag))] for v in arr]  # type: ignore[misc]
    return [int(v) for v in arr]


def _json_float(v: float) -> float | str:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def histogram(entry: TensorEntry, stats: Stats, bins: int = 16) -> list[int] | None:
    """Counts of finite values in ``bins`` equal bins between min and max (a second pass)."""
    import numpy as np

    if not entry.dt.is_float or stats.min is None or stats.max is None:
        return None
    lo, hi = float(stats.min), float(stats.max)
    # Bins computed by hand on halved values: np.histogram refuses ranges that overflow
    # (float64 near 1e308) or are too narrow for 16 distinct edges (a constant 1e20).
    width = hi / 2 - lo / 2
    dt = entry.dt
    total = [0] * bins  # Python ints: counts times repeats may pass int64 for hostile views
    for repeat, chunks in entry.stat_parts():
        counts = np.zeros(bins, dtype=np.int64)
        for raw in chunks:
            x = dtypes.decode_float(raw, dt.name)
            x = x[np.isfinite(x)].astype(np.float64)
            if width > 0:
                idx = np.clip(((x / 2 - lo / 2) / width * bins).astype(np.int64), 0, bins - 1)
            else:
                idx = np.zeros(x.size, dtype=np.int64)
            counts += np.bincount(idx, minlength=bins)
        total = [t + int(c) * repeat for t, c in zip(total, counts)]
    return total
