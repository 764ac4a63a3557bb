"""Per-tensor statistics in one streaming pass (SPEC section 3).

Bytes arrive in chunks; each chunk is decoded to float32 (float64 stays
float64), reduced, and merged into running totals.  Means and spreads are
merged with Chan's parallel formula in float64, so accuracy does not depend on
tensor size and a NaN in one chunk does not hide the rest: mean, std, min, max
and abs_max cover the finite values only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pinit import dtypes
from pinit.storage import CHUNK_BYTES, TensorEntry

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
        return (self.numel, self.mean, self.std, self.min, self.max, self.zeros, self.nan, self.inf, self.total)


class _FloatAccumulator:
    """Running totals over float chunks (Chan et al. merge of count, mean, M2)."""

    def __init__(self, tiny: float, max_abs: float) -> None:
        self.tiny = tiny
        self.max_abs = max_abs
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
        self.work: np.ndarray | None = None
        # mean and m2 are kept in units of 1/scale, a power of two below 1 once float64 values
        # beyond _BIG arrive (garbage near 1e308 would otherwise overflow sums and squares)
        self.scale = 1.0

    def _scratch(self, n: int) -> np.ndarray:
        if self.work is None or self.work.size < n:
            self.work = np.empty(n, dtype=np.float64)
        return self.work[:n]

    def add(self, x: np.ndarray) -> None:
        """Merge a chunk of float32/float64 values (x is not modified)."""
        n_all = x.size
        if n_all == 0:
            return
        self.zeros += n_all - int(np.count_nonzero(x))
        work = self._scratch(n_all)
        np.copyto(work, x, casting="safe")
        s = float(np.add.reduce(work))
        if not math.isfinite(s):
            finite = np.isfinite(work)
            n_fin = int(np.count_nonzero(finite))
            n_nan = int(np.count_nonzero(np.isnan(work)))
            self.nan += n_nan
            self.inf += n_all - n_fin - n_nan
            if n_fin == 0:
                return
            work = work[finite]
            s = float(np.add.reduce(work))
        n = work.size
        lo = float(work.min())
        hi = float(work.max())
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        absw = np.abs(work)
        if self.tiny:
            self.subnormal += int(np.count_nonzero(absw < self.tiny)) - int(n - np.count_nonzero(work))
        if max(-lo, hi) > self.max_abs:
            self.huge += int(np.count_nonzero(absw > self.max_abs))
        total = s
        if max(-lo, hi) * self.scale > _BIG:
            self._rescale(2.0 ** math.floor(math.log2(_BIG / max(-lo, hi))))
        if self.scale != 1.0:
            np.multiply(work, self.scale, out=work)
            s = float(np.add.reduce(work))
        mean = s / n
        np.subtract(work, mean, out=work)
        m2 = float(np.dot(work, work))
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
            st.min = self.min
            st.max = self.max
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
    """Statistics of one tensor, reading its bytes once; None for complex tensors."""
    dt = entry.dt
    numel = entry.numel
    if dt.kind == "complex":
        return None
    if dt.kind == "float":
        acc = _FloatAccumulator(dt.tiny, max_abs)
        decoded: np.ndarray | None = None
        for raw in entry.iter_bytes(chunk_bytes):
            if dt.name in ("float32", "float64"):
                acc.add(dtypes.decode_float(raw, dt.name))
            else:
                n = raw.size // dt.itemsize
                if decoded is None or decoded.size < n:
                    decoded = np.empty(n, dtype=np.float32)
                acc.add(dtypes.decode_float(raw, dt.name, out=decoded))
        return acc.result(numel)
    npdt = dtypes.numpy_dtype(dt.name)
    assert npdt is not None
    iacc = _IntAccumulator()
    for raw in entry.iter_bytes(chunk_bytes):
        iacc.add(raw.view(npdt))
    return iacc.result(numel)


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
    if not entry.dt.is_float or stats.min is None or stats.max is None:
        return None
    lo, hi = float(stats.min), float(stats.max)
    # Bins computed by hand on halved values: np.histogram refuses ranges that overflow
    # (float64 near 1e308) or are too narrow for 16 distinct edges (a constant 1e20).
    width = hi / 2 - lo / 2
    counts = np.zeros(bins, dtype=np.int64)
    dt = entry.dt
    for raw in entry.iter_bytes():
        x = dtypes.decode_float(raw, dt.name)
        x = x[np.isfinite(x)].astype(np.float64)
        if width > 0:
            idx = np.clip(((x / 2 - lo / 2) / width * bins).astype(np.int64), 0, bins - 1)
        else:
            idx = np.zeros(x.size, dtype=np.int64)
        counts += np.bincount(idx, minlength=bins)
    return [int(c) for c in counts]
