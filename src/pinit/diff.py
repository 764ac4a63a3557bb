"""``diff``: compare two checkpoints tensor by tensor, streaming both in step."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pinit import dtypes, stats
from pinit.checkpoint import Checkpoint
from pinit.errors import PinitError
from pinit.grouping import storage_groups
from pinit.selection import Selector
from pinit.storage import CHUNK_BYTES, TensorEntry

if TYPE_CHECKING:  # numpy is imported where values are decoded in Python (not for bytes the kernel compares)
    import numpy as np

STATUSES = ("identical", "within_tolerance", "changed", "shape_changed", "dtype_changed", "only_in_a", "only_in_b")
SAME = ("identical", "within_tolerance")


@dataclass
class TensorDiff:
    name: str
    status: str
    shape_a: tuple[int, ...] | None = None
    shape_b: tuple[int, ...] | None = None
    dtype_a: str | None = None
    dtype_b: str | None = None
    max_abs_diff: float | None = None
    rel_l2_diff: float | None = None
    mismatched: int | None = None  # elements outside the tolerance
    # the value comparison, also for tensors whose dtype changed (both upcast to float64):
    # identical | within_tolerance | changed, or None where values were not compared
    values: str | None = None
    nan_mismatch: int | None = None  # positions where exactly one side is NaN
    inf_mismatch: int | None = None  # positions, NaN on neither side, where an infinity meets another value
    nan_only_in_a: int = 0  # NaN in A where B has a number (not in JSON: the table's note)
    nan_only_in_b: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "shape_a": list(self.shape_a) if self.shape_a is not None else None,
            "shape_b": list(self.shape_b) if self.shape_b is not None else None,
            "dtype_a": self.dtype_a,
            "dtype_b": self.dtype_b,
            "max_abs_diff": _num(self.max_abs_diff),
            "rel_l2_diff": _num(self.rel_l2_diff),
            "mismatched": self.mismatched,
            "values": self.values,
            "nan_mismatch": self.nan_mismatch,
            "inf_mismatch": self.inf_mismatch,
        }


def _num(v: float | None) -> float | str | None:
    if v is None or math.isfinite(v):
        return v
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


@dataclass
class DiffReport:
    a: str
    b: str
    atol: float
    rtol: float
    tensors: list[TensorDiff]
    ties_only_in_a: list[list[str]] = field(default_factory=list)  # storage shared in A, not in B
    ties_only_in_b: list[list[str]] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return all(t.status in SAME for t in self.tensors)

    def summary(self) -> dict[str, Any]:
        counts = {s: sum(t.status == s for t in self.tensors) for s in STATUSES}
        return {**counts, "tensors": len(self.tensors), "equal": self.equal}

    def as_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "atol": self.atol,
            "rtol": self.rtol,
            "tensors": [t.as_json() for t in self.tensors],
            "ties": {"only_in_a": self.ties_only_in_a, "only_in_b": self.ties_only_in_b},
            "summary": self.summary(),
        }


def diff_checkpoints(
    a: Checkpoint,
    b: Checkpoint,
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
    match: Sequence[str] = (),
    progress: Callable[[int], None] | None = None,
    threads: int = 2,
) -> DiffReport:
    """Compare ``a`` and ``b``: names only in one, shape/dtype changes, value differences.

    Values are equal within tolerance when ``|a - b| <= atol + rtol * |b|`` element-wise
    (``torch.allclose``); NaN equals NaN at the same position, and infinities of the same
    sign are equal.  ``max_abs_diff`` and ``rel_l2_diff = ||a - b|| / ||a||`` are over
    positions where both values are finite.  ``progress`` is called with the bytes of ``a``
    done, over every selected tensor of ``a`` that ``b`` also has (compared or not). Bytes are
    compared first (on ``threads`` worker threads where the C kernel can read both files); only
    tensors whose bytes differ are decoded.
    """
    if atol < 0 or rtol < 0:
        raise PinitError("--atol and --rtol must not be negative")
    for ckpt in (a, b):  # never "equal" for what was not read
        problem = ckpt.coverage.problem() if ckpt.coverage is not None else None
        if problem is not None:
            raise PinitError(f"cannot compare: {problem}", ckpt.path)
    selector = Selector(match, ())
    in_a = {e.name: e for e in a.tensors if selector(e.name)}
    in_b = {e.name: e for e in b.tensors if selector(e.name)}
    if match and not in_a and not in_b:
        raise PinitError(f"no tensor of either checkpoint matches {', '.join(repr(m) for m in match)}")
    out: list[TensorDiff] = []
    with _ByteCompare(in_a, in_b, threads) as equal_bytes:
        for name, ea in in_a.items():
            eb = in_b.get(name)
            if eb is None:
                out.append(TensorDiff(name, "only_in_a", shape_a=ea.shape, dtype_a=ea.dtype))
                continue
            out.append(_compare_pair(name, ea, eb, atol, rtol, equal_bytes.result(name), progress))
    for name, eb in in_b.items():
        if name not in in_a:
            out.append(TensorDiff(name, "only_in_b", shape_b=eb.shape, dtype_b=eb.dtype))
    only_a, only_b = _ties_changed(a, b, set(in_a) & set(in_b))
    return DiffReport(a.path, b.path, atol, rtol, out, only_a, only_b)


def _compare_pair(
    name: str,
    ea: TensorEntry,
    eb: TensorEntry,
    atol: float,
    rtol: float,
    equal_bytes: bool | None,
    progress: Callable[[int], None] | None,
) -> TensorDiff:
    """The comparison of the tensors named ``name`` in A and B (``equal_bytes``: whether their bytes
    are known to be equal, None when not known)."""
    d = TensorDiff(name, "identical", ea.shape, eb.shape, ea.dtype, eb.dtype)
    if equal_bytes:  # same dtype and shape, same bytes: identical, nothing to decode
        _Acc().finish(d)
        if progress is not None:
            progress(ea.nbytes)
        return d
    if ea.shape != eb.shape:
        d.status = "shape_changed"
    elif ea.dtype == eb.dtype or _upcast_kind(ea.dt, eb.dt) is not None:
        _compare_values(ea, eb, atol, rtol, d, progress)
        if ea.dtype != eb.dtype:  # a dtype change is a difference whatever the values
            d.status = "dtype_changed"
        return d
    else:
        d.status = "dtype_changed"
    if progress is not None:  # not compared: counted as done
        progress(ea.nbytes)
    return d


_KERNEL_KINDS = {"float32": 0, "bfloat16": 1, "float16": 2, "float64": 3}


def _kernel() -> Any:
    """pinit's C kernel, or None (not built, or turned off: see pinit.stats)."""
    return stats._kernel


# Byte comparisons are handed to the worker threads in batches of up to this many bytes or tensors
# (one task per tiny tensor costs more than the comparison).
BATCH_BYTES = 16 << 20
BATCH_TENSORS = 1024


class _ByteCompare:
    """Whether tensors of one name, dtype and shape hold equal bytes, decided up front by the C
    kernel for those that lie contiguously in files (``files_equal``: both regions read with pread
    into buffers of its own, compared with memcmp), on worker threads, batch by
    batch, while the caller goes through the results in order. Equal bytes are the common case
    (a fine-tune touches few tensors): such a pair needs no decoding at all."""

    def __init__(self, in_a: dict[str, TensorEntry], in_b: dict[str, TensorEntry], threads: int) -> None:
        self._where: dict[str, tuple[int, int]] = {}  # name -> (batch, position in it)
        self._futures: list[Future[list[bool | None]]] = []
        self._pool: ThreadPoolExecutor | None = None
        files_equal = getattr(_kernel(), "files_equal", None)
        if files_equal is None:
            return
        batches: list[list[tuple[int, int, int, int, int]]] = []
        size = 0
        for name, ea in in_a.items():
            eb = in_b.get(name)
            if eb is None or ea.dtype != eb.dtype or ea.shape != eb.shape or ea.nbytes == 0:
                continue
            ra, rb = stats.file_region(ea), stats.file_region(eb)
            if ra is None or rb is None:
                continue
            if not batches or size + ea.nbytes > BATCH_BYTES or len(batches[-1]) >= BATCH_TENSORS:
                batches.append([])
                size = 0
            self._where[name] = (len(batches) - 1, len(batches[-1]))
            batches[-1].append((*ra, *rb, ea.nbytes))
            size += ea.nbytes

        def run(batch: list[tuple[int, int, int, int, int]]) -> list[bool | None]:
            out: list[bool | None] = []
            for fa, oa, fb, ob, n in batch:
                try:
                    out.append(files_equal(fa, oa, fb, ob, n) == -1)
                except (OSError, EOFError):  # compared again chunk by chunk, which reports it
                    out.append(None)
            return out

        if threads > 1 and len(batches) > 1:
            self._pool = ThreadPoolExecutor(threads)
            self._futures = [self._pool.submit(run, b) for b in batches]
        else:
            for b in batches:
                f: Future[list[bool | None]] = Future()
                f.set_result(run(b))
                self._futures.append(f)

    def result(self, name: str) -> bool | None:
        """True: equal bytes; False: they differ; None: not compared here."""
        where = self._where.get(name)
        return None if where is None else self._futures[where[0]].result()[where[1]]

    def __enter__(self) -> _ByteCompare:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            for f in self._futures:
                f.cancel()
            self._pool.shutdown(wait=True)


def _ties_changed(a: Checkpoint, b: Checkpoint, common: set[str]) -> tuple[list[list[str]], list[list[str]]]:
    """Groups of common tensors that share storage in one checkpoint but not in the other (a
    conversion to safetensors unties weights: equal values now, separate copies later)."""

    def pairs(ckpt: Checkpoint) -> dict[frozenset[str], list[str]]:
        out = {}
        for g in storage_groups(ckpt.tensors):
            names = [n for n in g.names if n in common]
            if len(names) > 1:
                out[frozenset(names)] = names
        return out

    in_a, in_b = pairs(a), pairs(b)
    return [v for k, v in in_a.items() if k not in in_b], [v for k, v in in_b.items() if k not in in_a]


def _upcast_kind(da: dtypes.DType, db: dtypes.DType) -> str | None:
    """The kind whose values two different dtypes compare as (both upcast to float64): both
    floating, both integer or both complex; None for pairs of kinds that do not compare."""
    return da.kind if da.kind == db.kind and da.kind in ("float", "int", "complex") else None


@dataclass
class _Acc:
    """Running totals of one tensor's comparison."""

    max_abs: float = 0.0
    sq_diff: float = 0.0
    sq_a: float = 0.0
    mismatched: int = 0
    nan_a: int = 0
    nan_b: int = 0
    inf: int = 0
    exact: bool = True  # every value equal (bytes equal, for one dtype)

    def add_kernel(self, part: tuple[int, float, float, float, int, int, int, int]) -> None:
        """Add what the C kernel's diff_float or files_diff found (the same quantities as
        :meth:`only_a` or :meth:`values` and :meth:`close` together)."""
        differ, max_abs, sq_diff, sq_a, mismatched, nan_a, nan_b, inf = part
        self.sq_a += sq_a
        if differ:
            self.exact = False
            self.max_abs = max(self.max_abs, max_abs)
            self.sq_diff += sq_diff
            self.mismatched += mismatched
            self.nan_a += nan_a
            self.nan_b += nan_b
            self.inf += inf

    def only_a(self, xa: np.ndarray) -> None:
        """A chunk whose values are equal on both sides: only ``||a||`` grows."""
        import numpy as np

        fa = _finite_or_zero(xa)
        self.sq_a += float(np.dot(fa, fa))

    def values(self, xa: np.ndarray, xb: np.ndarray) -> None:
        import numpy as np

        both = np.isfinite(xa) & np.isfinite(xb)
        diff = np.abs(xa[both] - xb[both])
        if diff.size:
            self.max_abs = max(self.max_abs, float(diff.max()))
            self.sq_diff += float(np.dot(diff, diff))
        fa = xa[both]
        self.sq_a += float(np.dot(fa, fa))
        na, nb = np.isnan(xa), np.isnan(xb)
        self.nan_a += int(np.count_nonzero(na & ~nb))
        self.nan_b += int(np.count_nonzero(nb & ~na))
        self.inf += int(np.count_nonzero(~(na | nb) & (np.isinf(xa) | np.isinf(xb)) & (xa != xb)))

    def close(self, xa: np.ndarray, xb: np.ndarray, atol: float, rtol: float) -> None:
        import numpy as np

        ok = np.isclose(xa, xb, rtol=rtol, atol=atol, equal_nan=True)
        self.mismatched += int(ok.size - np.count_nonzero(ok))

    def finish(self, d: TensorDiff) -> None:
        d.max_abs_diff = self.max_abs
        norm_a, norm_d = math.sqrt(self.sq_a), math.sqrt(self.sq_diff)
        d.rel_l2_diff = norm_d / norm_a if norm_a > 0 else (0.0 if norm_d == 0 else math.inf)
        d.mismatched = self.mismatched
        d.nan_only_in_a, d.nan_only_in_b = self.nan_a, self.nan_b
        d.nan_mismatch, d.inf_mismatch = self.nan_a + self.nan_b, self.inf
        if self.exact:
            d.values = "identical"
        else:
            d.values = "within_tolerance" if self.mismatched == 0 else "changed"
        d.status = d.values


def _compare_values(
    ea: TensorEntry,
    eb: TensorEntry,
    atol: float,
    rtol: float,
    d: TensorDiff,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Compare the values of two tensors of one shape; sets the value fields and the status
    (the caller turns it into ``dtype_changed`` for two dtypes)."""
    acc = _Acc()
    if ea.dtype == eb.dtype:
        _same_dtype(ea, eb, atol, rtol, acc, progress)
    else:
        _upcast(ea, eb, atol, rtol, acc, progress)
    acc.finish(d)


def _same_dtype(
    ea: TensorEntry,
    eb: TensorEntry,
    atol: float,
    rtol: float,
    acc: _Acc,
    progress: Callable[[int], None] | None,
) -> None:
    dt = ea.dt
    kernel = _kernel()
    kind = _KERNEL_KINDS.get(dt.name) if kernel is not None else None
    if kind is not None and hasattr(kernel, "files_diff"):
        ra, rb = stats.file_region(ea), stats.file_region(eb)
        if ra is not None and rb is not None:  # both files read by the kernel itself: no Python per chunk
            try:
                part = kernel.files_diff(*ra, *rb, ea.nbytes, kind, atol, rtol)
            except (OSError, EOFError):  # compared again chunk by chunk, which reports it
                part = None
            if part is not None:
                acc.add_kernel(part)
                if progress is not None:
                    progress(ea.nbytes)
                return
    import numpy as np

    for ca, cb in zip(ea.iter_bytes(), eb.iter_bytes(), strict=True):
        if progress is not None:
            progress(ca.size)
        if kind is not None:  # one pass in C, numpy's semantics (see _Acc)
            acc.add_kernel(kernel.diff_float(ca, cb, kind, atol, rtol))
            continue
        if kernel.bytes_equal(ca, cb) if kernel is not None else np.array_equal(ca, cb):
            acc.only_a(_decode(ca, dt))
            continue
        acc.exact = False
        xa, xb = _decode(ca, dt), _decode(cb, dt)
        acc.values(xa, xb)
        if dt.kind == "float" or (atol or rtol):
            acc.close(xa, xb, atol, rtol)
        else:  # integers, bools and complex parts compared exactly on their own bytes
            item = dt.itemsize if dt.kind != "complex" else dt.itemsize // 2
            va, vb = ca.view(f"V{item}"), cb.view(f"V{item}")
            acc.mismatched += int(np.count_nonzero(va != vb))


def _upcast(
    ea: TensorEntry,
    eb: TensorEntry,
    atol: float,
    rtol: float,
    acc: _Acc,
    progress: Callable[[int], None] | None,
) -> None:
    """Two dtypes of one kind: both sides streamed in chunks of the same number of elements
    (so of different byte sizes), decoded to float64 and compared there; integers without a
    tolerance are compared exactly in their own types (float64 would round beyond 2**53)."""
    import numpy as np

    da, db = ea.dt, eb.dt
    per_chunk = max(1, CHUNK_BYTES // max(da.itemsize, db.itemsize))
    chunks_a = ea.iter_bytes(per_chunk * da.itemsize)
    chunks_b = eb.iter_bytes(per_chunk * db.itemsize)
    for ca, cb in zip(chunks_a, chunks_b, strict=True):
        if progress is not None:
            progress(ca.size)
        xa, xb = _decode(ca, da), _decode(cb, db)
        same = _int_equal(ca, da, cb, db) if da.kind == "int" else None
        equal = same if same is not None else (xa == xb) | (np.isnan(xa) & np.isnan(xb))
        n_equal = int(np.count_nonzero(equal))
        if n_equal == equal.size:
            acc.only_a(xa)
            continue
        acc.exact = False
        acc.values(xa, xb)
        if da.kind == "int" and not (atol or rtol):
            acc.mismatched += equal.size - n_equal
        else:
            acc.close(xa, xb, atol, rtol)


def _int_equal(ca: np.ndarray, da: dtypes.DType, cb: np.ndarray, db: dtypes.DType) -> np.ndarray:
    """Element-wise exact equality of two integer chunks of different types."""
    import numpy as np

    na, nb = dtypes.numpy_dtype(da.name), dtypes.numpy_dtype(db.name)
    assert na is not None and nb is not None
    xa, xb = ca.view(na), cb.view(nb)
    if na.kind == nb.kind or np.promote_types(na, nb).kind in "iu":
        return xa == xb
    # uint64 against a signed type: numpy would compare them as float64
    u, i = (xa, xb) if na.kind == "u" else (xb, xa)
    return (i >= 0) & (u == i.astype(np.uint64))


def _finite_or_zero(x: np.ndarray) -> np.ndarray:
    import numpy as np

    return np.where(np.isfinite(x), x, 0.0)


def _decode(raw: np.ndarray, dt: dtypes.DType) -> np.ndarray:
    import numpy as np

    if dt.kind == "float":
        return dtypes.decode_float(raw, dt.name).astype(np.float64)
    npdt = dtypes.numpy_dtype(dt.name)
    assert npdt is not None
    arr = raw.view(npdt)
    if dt.kind == "complex":
        return arr.view(np.float64 if dt.itemsize == 16 else np.float32).astype(np.float64)
    return arr.astype(np.float64)
