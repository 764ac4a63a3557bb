"""Degenerate-value flags (SPEC section 4), tied storage and duplicate buffers."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

from pinit.grouping import group_of, storage_groups
from pinit.storage import TensorEntry

if TYPE_CHECKING:
    from pinit.stats import Stats

ERROR = "error"
WARNING = "warning"

# code -> (default severity, one-line description with the threshold)
FLAG_CODES: dict[str, tuple[str, str]] = {
    "nan": (ERROR, "any NaN"),
    "inf": (ERROR, "any +Inf or -Inf"),
    "subnormal": (ERROR, "any subnormal value (float32, float64, bfloat16 only)"),
    "huge": (ERROR, "any finite |x| > max_abs (default 1e6, --max-abs)"),
    "all_zero": (WARNING, "floating tensor with ndim >= 2, every element 0"),
    "constant": (WARNING, "floating tensor with ndim >= 2, > 1 element, all equal and non-zero"),
    "duplicate": (WARNING, "floating tensor with ndim >= 2, same bytes as another tensor, different storage"),
}

DEFAULT_MAX_ABS = 1e6


@dataclass(frozen=True)
class Flag:
    code: str
    severity: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {"code": self.code, "severity": self.severity, "message": self.message}


def _flag(code: str, message: str) -> Flag:
    return Flag(code, FLAG_CODES[code][0], message)


def _g(x: float) -> str:
    return f"{x:.6g}"


def value_flags(entry: TensorEntry, st: Stats, max_abs: float = DEFAULT_MAX_ABS) -> list[Flag]:
    """The flags that one tensor's own statistics raise."""
    dt = entry.dt
    if not dt.is_float:
        return []
    n = st.numel
    out = []
    if st.nan:
        out.append(_flag("nan", f"{st.nan} NaN of {n} values"))
    if st.inf:
        out.append(_flag("inf", f"{st.inf} Inf of {n} values"))
    if st.subnormal and dt.subnormal_is_error:
        out.append(_flag("subnormal", f"{st.subnormal} subnormal of {n} values (|x| < {_g(dt.tiny)})"))
    if st.huge and st.abs_max is not None:
        out.append(_flag("huge", f"{st.huge} of {n} values have |x| > {_g(max_abs)} (largest {_g(st.abs_max)})"))
    if len(entry.shape) >= 2 and n > 0:
        if st.zeros == n:
            out.append(_flag("all_zero", f"all {n} values are 0"))
        elif n > 1 and st.nan == 0 and st.inf == 0 and st.min == st.max:
            out.append(_flag("constant", f"all {n} values equal {_g(float(st.min or 0.0))}"))
    return out


def duplicate_groups(entries: Sequence[TensorEntry], stats: dict[str, Stats]) -> list[list[str]]:
    """Groups of floating tensors (ndim >= 2) with equal bytes but separate storage.

    Candidates must agree on shape, dtype and statistics; only those are
    compared byte by byte.  All-zero and constant tensors are left out: they
    are flagged as such, and equal constants are expected to be equal.
    """
    buckets: dict[tuple[object, ...], list[TensorEntry]] = defaultdict(list)
    in_group = group_of(storage_groups(entries))
    seen_groups: set[int] = set()
    for e in entries:
        st = stats.get(e.name)
        if st is None or not e.dt.is_float or len(e.shape) < 2 or e.numel == 0:
            continue
        if st.zeros == st.numel or (st.min is not None and st.min == st.max):
            continue
        group = in_group.get(e.name)
        if group is not None:  # shares storage with one already bucketed: tied, not a duplicate
            if id(group) in seen_groups:
                continue
            seen_groups.add(id(group))
        buckets[(e.dtype, e.shape, st.fingerprint())].append(e)
    out = []
    for candidates in buckets.values():
        remaining = list(candidates)
        while len(remaining) > 1:
            first, rest = remaining[0], remaining[1:]
            same = [first.name] + [o.name for o in rest if _same_bytes(first, o)]
            if len(same) > 1:
                out.append(same)
            found = set(same)  # a set: with thousands of equal tiny tensors a list made this quadratic
            remaining = [o for o in rest if o.name not in found]
    return out


DUPLICATE_NAMES_SHOWN = 5


def duplicate_message(name: str, group: Sequence[str]) -> str:
    """The evidence of a duplicate: the other names of its group, at most a few of them
    (a group of 10,000 equal tensors must not give each one a message naming 9,999 others)."""
    shown = list(islice((n for n in group if n != name), DUPLICATE_NAMES_SHOWN))
    more = len(group) - 1 - len(shown)
    return f"same bytes as {', '.join(shown)}" + (f" and {more:,} more" if more > 0 else "") + " (separate storage)"


def _same_bytes(a: TensorEntry, b: TensorEntry) -> bool:
    import numpy as np

    # Both iterate in chunks of the same size, so the chunks line up.
    return all(np.array_equal(ca, cb) for ca, cb in zip(a.iter_bytes(), b.iter_bytes()))
