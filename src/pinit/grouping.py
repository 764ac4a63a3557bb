"""Which tensors share bytes: one grouping by storage byte ranges, for every command.

Two tensors are in one group when some byte of one's storage is also a byte of the other's:
tied weights (the very same view), and views such as ``q = qkv[0:1]`` or a transpose. Views that
interleave without touching (``x[:, 0]`` and ``x[:, 1]``) are not grouped: overlap is decided
on the exact byte runs of each view, not on its span.

A group's *root* is a member whose bytes include every other member's (``qkv`` for ``q``), or
None when no member covers the others; re-initializing a group draws its root once and every
other member takes its slice of those values.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pinit.storage import TensorEntry, contiguous_strides

if TYPE_CHECKING:
    import numpy as np

# A view whose bytes fall into more separate runs than this is treated by its span alone
# (overlap assumed where spans meet, never a root): hostile strides cannot make this slow.
MAX_RUNS = 1 << 16


@dataclass
class Group:
    """Tensors sharing storage bytes, in file order (two or more)."""

    members: list[TensorEntry]
    root: TensorEntry | None

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.members]


def byte_span(e: TensorEntry) -> tuple[int, int]:
    """The first and one-past-last byte of ``e`` in its storage (empty for 0 elements)."""
    item = e.dt.itemsize
    if e.numel == 0:
        return (e.offset * item, e.offset * item)
    strides = e.strides if e.strides is not None else contiguous_strides(e.shape)
    last = e.offset + sum((n - 1) * s for n, s in zip(e.shape, strides))
    return (e.offset * item, (last + 1) * item)


def byte_runs(e: TensorEntry) -> tuple[np.ndarray, np.ndarray] | None:
    """Disjoint sorted byte intervals (starts, ends) that ``e`` covers; None when more than MAX_RUNS."""
    import numpy as np

    item = e.dt.itemsize
    lo = byte_span(e)[0]
    if e.numel == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    strides = e.strides if e.strides is not None else contiguous_strides(e.shape)
    dims = sorted(((s * item, n) for n, s in zip(e.shape, strides) if n > 1), key=lambda d: d[0])
    run = item  # bytes of one contiguous run: the innermost dims that follow one another
    while dims and dims[0][0] == run:
        run *= dims.pop(0)[1]
    if not dims:
        return np.array([lo], np.int64), np.array([lo + run], np.int64)
    count = 1
    for _, n in dims:
        count *= n
        if count > MAX_RUNS:
            return None
    starts = np.zeros(1, np.int64) + lo
    for step, n in dims:
        starts = (starts[:, None] + np.arange(n, dtype=np.int64)[None, :] * step).reshape(-1)
    starts = np.unique(starts)
    ends = starts + run
    # merge runs that touch or overlap (a stride-0 or overlapping-stride view)
    keep = np.ones(starts.size, bool)
    keep[1:] = starts[1:] > np.maximum.accumulate(ends)[:-1]
    group_id = np.cumsum(keep) - 1
    merged_ends = np.zeros(int(group_id[-1]) + 1, np.int64)
    np.maximum.at(merged_ends, group_id, ends)
    return starts[keep], merged_ends


def overlaps(a: TensorEntry, b: TensorEntry) -> bool:
    """True when ``a`` and ``b`` share at least one storage byte."""
    import numpy as np

    if a.storage.key != b.storage.key or a.numel == 0 or b.numel == 0:
        return False
    (alo, ahi), (blo, bhi) = byte_span(a), byte_span(b)
    if ahi <= blo or bhi <= alo:
        return False
    if a.is_contiguous and b.is_contiguous:
        return True
    ra, rb = byte_runs(a), byte_runs(b)
    if ra is None or rb is None:
        return True  # too many runs to compare: spans meet, so count it as shared
    (a_starts, a_ends), (b_starts, b_ends) = ra, rb
    idx = np.searchsorted(a_starts, b_ends, side="left") - 1  # last run of a starting before each b run ends
    ok = idx >= 0
    return bool(np.any(a_ends[idx[ok]] > b_starts[ok]))


def shares_bytes(a: TensorEntry, b: TensorEntry) -> bool:
    """True when ``a`` and ``b`` are the same view or share a storage byte."""
    return a.view_key == b.view_key or overlaps(a, b)


def covers(a: TensorEntry, b: TensorEntry) -> bool:
    """True when every byte of ``b`` is a byte of ``a`` (same storage)."""
    import numpy as np

    if a.storage.key != b.storage.key:
        return False
    if b.numel == 0:
        return True
    (alo, ahi), (blo, bhi) = byte_span(a), byte_span(b)
    if blo < alo or bhi > ahi:
        return False
    if a.is_contiguous:
        return True
    if a.view_key == b.view_key:
        return True
    ra, rb = byte_runs(a), byte_runs(b)
    if ra is None or rb is None:
        return False
    (a_starts, a_ends), (b_starts, b_ends) = ra, rb
    idx = np.searchsorted(a_starts, b_starts, side="right") - 1
    return bool(np.all(idx >= 0) and np.all(a_ends[np.maximum(idx, 0)] >= b_ends))


def storage_groups(entries: Sequence[TensorEntry]) -> list[Group]:
    """Groups of tensors that share storage bytes, each in file order, groups in order of
    their first member. Tensors sharing nothing are in no group."""
    by_storage: dict[object, list[TensorEntry]] = defaultdict(list)
    for e in entries:
        if e.numel:
            by_storage[e.storage.key].append(e)
    parent: dict[int, int] = {}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)

    position = {id(e): i for i, e in enumerate(entries)}
    for views in by_storage.values():
        if len(views) < 2:
            continue
        # identical views join at once; distinct views are swept by span
        first_of: dict[tuple[object, ...], TensorEntry] = {}
        distinct: list[TensorEntry] = []
        for e in views:
            parent.setdefault(position[id(e)], position[id(e)])
            same = first_of.get(e.view_key)
            if same is None:
                first_of[e.view_key] = e
                distinct.append(e)
            else:
                union(position[id(same)], position[id(e)])
        distinct.sort(key=lambda e: byte_span(e)[0])
        active: list[tuple[int, TensorEntry]] = []  # (span end, entry) of views still open
        for e in distinct:
            lo, hi = byte_span(e)
            active = [(end, o) for end, o in active if end > lo]
            for _, o in active:
                if find(position[id(o)]) != find(position[id(e)]) and overlaps(o, e):
                    union(position[id(o)], position[id(e)])
            active.append((hi, e))
    members: dict[int, list[TensorEntry]] = defaultdict(list)
    for e in entries:
        i = position[id(e)]
        if i in parent:
            members[find(i)].append(e)
    groups = []
    for root_index in sorted(members):
        group = members[root_index]
        if len(group) > 1:
            groups.append(Group(group, _root(group)))
    return groups


def _root(group: list[TensorEntry]) -> TensorEntry | None:
    """The first member (by size, then file order) whose bytes include every other member's."""
    for candidate in sorted(group, key=lambda e: -e.nbytes):
        if all(o is candidate or o.view_key == candidate.view_key or covers(candidate, o) for o in group):
            return candidate
    return None


def group_of(groups: Sequence[Group]) -> dict[str, Group]:
    """Each grouped tensor's name to its group."""
    return {e.name: g for g in groups for e in g.members}
