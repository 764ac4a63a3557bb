"""Degenerate-value flags (SPEC section 4) and duplicate buffers: one pipeline for every command.

The rules for never-written memory follow the measurements in ``TORCH_EMPTY.md`` and the real
trained checkpoints in ``tests/data/real`` (their numbers are in the README):

- Garbage from recycled allocator blocks reads as subnormals (allocator pointers and small
  integers seen as float32) next to values of wildly different magnitude: huge ones (> 1e10),
  NaN/Inf, or a block of exact zeros. Trained tensors hold a few subnormals too (BatchNorm
  statistics of dead channels decaying towards 0, Adam moments), but never beside such values:
  across the real set, no tensor with subnormals had a huge value or NaN, and subnormals plus
  zeros never made more than 31.25% of a tensor (10 of 32, a MobileNetV2 running_mean).
- So ``uninitialized`` (error) fires on subnormals together with NaN/Inf, with |x| > 1e10, or
  with subnormals and zeros making at least 40% of the tensor while subnormals are at least 10%
  of its non-zero values (in the Adam moments of a sparsely used embedding, never-seen rows are
  exact zeros and decaying rows pass through the subnormals: 45% zeros, but 0.05% of the
  non-zero values subnormal). Decaying statistics (BatchNorm running statistics, optimizer
  moments) stall at subnormals by construction, so for them only NaN/Inf or |x| > 1e10 beside
  subnormals counts. Other subnormals are a ``subnormal`` warning. Float16 and fp8
  hold subnormals in ordinary small weights: for them only NaN/Inf beside subnormals counts.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

from pinit.grouping import Group, group_of, storage_groups
from pinit.storage import TensorEntry, contiguous_strides, remote_files_unchanged

if TYPE_CHECKING:
    from pinit.stats import Stats

ERROR = "error"
WARNING = "warning"

# code -> (default severity, one-line description with the threshold)
FLAG_CODES: dict[str, tuple[str, str]] = {
    "nan": (ERROR, "any NaN"),
    "inf": (ERROR, "any +Inf or -Inf"),
    "uninitialized": (
        ERROR,
        "the signature of never-written memory: subnormals beside NaN/Inf, beside |x| > 1e10, or subnormals "
        "and zeros together >= 40% of the values with subnormals >= 10% of the non-zero ones "
        "(float16/fp8: beside NaN/Inf only)",
    ),
    "subnormal": (WARNING, "some subnormal values without that signature (float32, float64, bfloat16)"),
    "empty": (
        WARNING,
        "a floating tensor with 0 elements; error when two thirds of the floating tensors, or a quarter and 8 or more, "
        "are empty, the signature of an unconverted DeepSpeed ZeRO-3 save",
    ),
    "huge": (ERROR, "any finite |x| > max_abs (default 1e6, --max-abs); not an optimizer's one-element step count"),
    "all_zero": (WARNING, "floating tensor with ndim >= 2, every element 0"),
    "constant": (WARNING, "floating tensor with ndim >= 2, > 1 element, all equal and non-zero"),
    "duplicate": (WARNING, "floating tensor with ndim >= 2, same bytes as another tensor, different storage"),
}

DEFAULT_MAX_ABS = 1e6
GARBAGE_MAGNITUDE = 1e10  # |x| beyond this beside subnormals: bytes that never held this dtype
GARBAGE_SHARE = 0.40  # subnormals and zeros together make this share of the values ...
GARBAGE_NONZERO_SHARE = 0.10  # ... and subnormals this share of the non-zero ones: allocator metadata
EMPTY_SHARE = 0.25  # empty tensors among all ...
EMPTY_MIN = 8  # ... and at least this many: an unconverted ZeRO-3 partitioned save (one had 309 of 851)


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


def _pct(part: int, whole: int) -> str:
    share = 100 * part / whole if whole else 0.0
    return f"{share:.3g}%" if share >= 0.01 or part == 0 else "<0.01%"


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
    sub = st.subnormal or 0
    if sub:
        why = _garbage_signature(entry, st)
        if why is not None:
            out.append(_flag("uninitialized", f"looks like never-written memory: {sub} subnormal of {n} values {why}"))
        elif dt.subnormal_is_rare:
            out.append(
                _flag(
                    "subnormal",
                    f"{sub} subnormal of {n} values ({_pct(sub, n)}, |x| < {_g(dt.tiny)}), no other sign of garbage",
                )
            )
    if st.huge and st.abs_max is not None and not _is_step_counter(entry):
        out.append(_flag("huge", f"{st.huge} of {n} values have |x| > {_g(max_abs)} (largest {_g(st.abs_max)})"))
    if len(entry.shape) >= 2 and n > 0:
        if st.zeros == n:
            out.append(_flag("all_zero", f"all {n} values are 0"))
        elif n > 1 and st.nan == 0 and st.inf == 0 and st.min == st.max:
            out.append(_flag("constant", f"all {n} values equal {_g(float(st.min or 0.0))}"))
    return out


def _is_step_counter(entry: TensorEntry) -> bool:
    """An optimizer's step count (``optimizer.state.3.step``): torch stores it as a float
    tensor of one element, and long runs take it past any weight magnitude (a real shipped
    checkpoint held 996,744). It is a count, not a weight: ``huge`` does not apply."""
    return entry.numel == 1 and entry.name.rpartition(".")[2] == "step"


# Tensors that decay geometrically towards 0 where their input is 0, and stall there as
# subnormals (x * 0.9 rounds back to 4 * 2**-149): BatchNorm running statistics of dead channels,
# and the optimizer moments of parameters that no longer get gradients (a sparse embedding's
# unused rows). Zeros and subnormals in any share are their normal state.
_DECAYING = re.compile(
    r"(^|\.)(running_mean|running_var)$"
    r"|(^|\.)state\..+\.(exp_avg|exp_avg_sq|max_exp_avg_sq|momentum_buffer|square_avg|acc_delta|exp_inf|sum)$"
)


def _decaying_statistic(entry: TensorEntry) -> bool:
    return _DECAYING.search(entry.name) is not None


def _garbage_signature(entry: TensorEntry, st: Stats) -> str | None:
    """Why subnormals in this tensor look like never-written memory, or None."""
    n = st.numel
    if st.nan or st.inf:
        return f"beside {st.nan or 0} NaN and {st.inf or 0} Inf"
    if not entry.dt.subnormal_is_rare:
        return None
    if st.abs_max is not None and st.abs_max > GARBAGE_MAGNITUDE:
        return f"beside values up to {_g(st.abs_max)}"
    if _decaying_statistic(entry):
        return None
    sub = st.subnormal or 0
    junk = sub + st.zeros
    if junk >= GARBAGE_SHARE * n and sub >= GARBAGE_NONZERO_SHARE * (n - st.zeros):
        if not st.zeros:
            return f"({_pct(sub, n)} of the tensor)"
        of_nonzero = _pct(sub, n - st.zeros)
        return f"and {st.zeros} zeros: together {_pct(junk, n)} of the tensor ({of_nonzero} of its non-zero values)"
    return None


def empty_flags(entries: Sequence[TensorEntry], context: Sequence[TensorEntry] | None = None) -> dict[str, Flag]:
    """``empty`` for each 0-element floating tensor of ``entries``; an error when at least two
    thirds of the floating tensors of ``context`` (the whole checkpoint; two or more) are empty,
    or at least a quarter and at least 8 of them. Integer and byte tensors are left out:
    TransformerEngine saves every ``_extra_state`` as an empty uint8 tensor, and a ZeRO-3 save
    empties floating parameters."""
    context = entries if context is None else context
    empties = [e for e in entries if e.numel == 0 and e.dt.is_float]
    if not empties:
        return {}
    floating = [e for e in context if e.dt.is_float]
    total = len(floating)
    n_empty = sum(e.numel == 0 for e in floating)
    if (n_empty >= 2 and 3 * n_empty >= 2 * total) or (n_empty >= EMPTY_MIN and n_empty >= EMPTY_SHARE * total):
        msg = (
            f"0 elements, like {n_empty} of the checkpoint's {total} floating tensors: the signature of an unconverted "
            "DeepSpeed ZeRO-3 save (its weights live in the partitioned optimizer files; convert with zero_to_fp32.py)"
        )
        return {e.name: Flag("empty", ERROR, f"shape {list(e.shape)}: {msg}") for e in empties}
    return {e.name: Flag("empty", WARNING, f"shape {list(e.shape)}: 0 elements") for e in empties}


@dataclass
class Assessment:
    """What the flag pipeline found: each tensor's statistics and flags, and the storage groups
    (ties and overlapping views) of the whole checkpoint."""

    stats: dict[str, Stats | None]
    flags: dict[str, list[Flag]]
    groups: list[Group]


def assess(
    entries: Sequence[TensorEntry],
    max_abs: float = DEFAULT_MAX_ABS,
    *,
    context: Sequence[TensorEntry] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Assessment:
    """The one flag pipeline of inspect, check, ``reinit --flagged`` and live models: statistics
    (each stored view read once), value flags, ``empty`` (judged against ``context``, the whole
    checkpoint, default ``entries``), duplicates, and the ties among ``context``."""
    from pinit.inspect import compute_all_stats

    context = entries if context is None else context
    groups = storage_groups(context)
    stats = compute_all_stats(entries, max_abs, progress)
    remote_files_unchanged(entries)  # no verdict on bytes of two versions
    return Assessment(stats, checkpoint_flags(entries, stats, max_abs, context, groups), groups)


def checkpoint_flags(
    entries: Sequence[TensorEntry],
    stats: Mapping[str, Stats | None],
    max_abs: float = DEFAULT_MAX_ABS,
    context: Sequence[TensorEntry] | None = None,
    groups: Sequence[Group] | None = None,
) -> dict[str, list[Flag]]:
    """Every flag of every entry from known statistics: value flags, ``empty`` (judged against
    ``context``), then duplicates (tensors in one of ``groups`` share storage: tied, not
    duplicated). :func:`assess` computes the statistics and calls this."""
    out: dict[str, list[Flag]] = {e.name: [] for e in entries}
    for e in entries:
        st = stats.get(e.name)
        if st is not None:
            out[e.name] += value_flags(e, st, max_abs)
    for name, flag in empty_flags(entries, context).items():
        out[name].append(flag)
    found = {n: s for n, s in stats.items() if s is not None}
    for group in duplicate_groups(entries, found, groups):
        for name in group:
            out[name].append(Flag("duplicate", WARNING, duplicate_message(name, group)))
    return out


def duplicate_groups(
    entries: Sequence[TensorEntry], stats: dict[str, Stats], groups: Sequence[Group] | None = None
) -> list[list[str]]:
    """Groups of floating tensors (ndim >= 2) with equal bytes but separate storage.

    Candidates must agree on shape, dtype and statistics; only those are
    compared byte by byte.  All-zero and constant tensors are left out: they
    are flagged as such, and equal constants are expected to be equal.
    """
    buckets: dict[tuple[object, ...], list[TensorEntry]] = defaultdict(list)
    in_group = group_of(storage_groups(entries) if groups is None else groups)
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
    from pinit.stats import same_bytes_in_kernel

    same = same_bytes_in_kernel(a, b)  # contiguous tensors in files: memcmp in C, no numpy
    if same is not None:
        return same
    import numpy as np

    if a.dtype == b.dtype and a.shape == b.shape and _strides(a) == _strides(b):
        # One layout (a broadcast or transposed view, say): the tensors are equal exactly when
        # their storages agree at the positions the view reaches, each compared once, in storage
        # order (a 32768x32768 broadcast of one row compares one row).
        for (ka, pa), (kb, pb) in zip(a.stat_parts(), b.stat_parts(), strict=True):
            if ka != kb or not all(np.array_equal(ca, cb) for ca, cb in zip(pa, pb, strict=True)):
                return False
        return True
    # Both iterate in chunks of the same size, so the chunks line up.
    return all(np.array_equal(ca, cb) for ca, cb in zip(a.iter_bytes(), b.iter_bytes()))


def _strides(e: TensorEntry) -> tuple[int, ...]:
    return e.strides if e.strides is not None else contiguous_strides(e.shape)
