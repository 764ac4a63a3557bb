"""``diff``: compare two checkpoints tensor by tensor, streaming both in step."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pinit import dtypes
from pinit.checkpoint import Checkpoint
from pinit.errors import PinitError
from pinit.grouping import storage_groups
from pinit.selection import Selector
from pinit.storage import TensorEntry

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
    a: Checkpoint, b: Checkpoint, *, atol: float = 0.0, rtol: float = 0.0, match: Sequence[str] = ()
) -> DiffReport:
    """Compare ``a`` and ``b``: names only in one, shape/dtype changes, value differences.

    Values are equal within tolerance when ``|a - b| <= atol + rtol * |b|`` element-wise
    (``torch.allclose``); NaN equals NaN at the same position, and infinities of the same
    sign are equal.  ``max_abs_diff`` and ``rel_l2_diff = ||a - b|| / ||a||`` are over
    positions where both values are finite.
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
    for name, ea in in_a.items():
        eb = in_b.get(name)
        if eb is None:
            out.append(TensorDiff(name, "only_in_a", shape_a=ea.shape, dtype_a=ea.dtype))
            continue
        d = TensorDiff(name, "identical", ea.shape, eb.shape, ea.dtype, eb.dtype)
        if ea.shape != eb.shape:
            d.status = "shape_changed"
        elif ea.dtype != eb.dtype:
            d.status = "dtype_changed"
        else:
            _compare_values(ea, eb, atol, rtol, d)
        out.append(d)
    for name, eb in in_b.items():
        if name not in in_a:
            out.append(TensorDiff(name, "only_in_b", shape_b=eb.shape, dtype_b=eb.dtype))
    only_a, only_b = _ties_changed(a, b, set(in_a) & set(in_b))
    return DiffReport(a.path, b.path, atol, rtol, out, only_a, only_b)


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


def _compare_values(ea: TensorEntry, eb: TensorEntry, atol: float, rtol: float, d: TensorDiff) -> None:
    dt = ea.dt
    max_abs = 0.0
    sq_diff = 0.0
    sq_a = 0.0
    mismatched = 0
    bitwise = True
    for ca, cb in zip(ea.iter_bytes(), eb.iter_bytes(), strict=True):
        if np.array_equal(ca, cb):
            fa = _finite_or_zero(_decode(ca, dt))
            sq_a += float(np.dot(fa, fa))
            continue
        bitwise = False
        xa, xb = _decode(ca, dt), _decode(cb, dt)
        both = np.isfinite(xa) & np.isfinite(xb)
        diff = np.abs(xa[both] - xb[both])
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
            sq_diff += float(np.dot(diff, diff))
        fa = xa[both]
        sq_a += float(np.dot(fa, fa))
        if dt.kind == "float" or (atol or rtol):
            close = np.isclose(xa, xb, rtol=rtol, atol=atol, equal_nan=True)
            mismatched += int(close.size - np.count_nonzero(close))
        else:  # integers, bools and complex parts compared exactly on their own bytes
            item = dt.itemsize if dt.kind != "complex" else dt.itemsize // 2
            va, vb = ca.view(f"V{item}"), cb.view(f"V{item}")
            mismatched += int(np.count_nonzero(va != vb))
    if bitwise:
        d.status, d.max_abs_diff, d.rel_l2_diff, d.mismatched = "identical", 0.0, 0.0, 0
        return
    d.max_abs_diff = max_abs
    norm_a = math.sqrt(sq_a)
    norm_d = math.sqrt(sq_diff)
    d.rel_l2_diff = norm_d / norm_a if norm_a > 0 else (0.0 if norm_d == 0 else math.inf)
    d.mismatched = mismatched
    d.status = "within_tolerance" if mismatched == 0 else "changed"


def _finite_or_zero(x: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(x), x, 0.0)


def _decode(raw: np.ndarray, dt: dtypes.DType) -> np.ndarray:
    if dt.kind == "float":
        return dtypes.decode_float(raw, dt.name).astype(np.float64)
    npdt = dtypes.numpy_dtype(dt.name)
    assert npdt is not None
    arr = raw.view(npdt)
    if dt.kind == "complex":
        return arr.view(np.float64 if dt.itemsize == 16 else np.float32).astype(np.float64)
    return arr.astype(np.float64)
