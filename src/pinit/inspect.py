"""``inspect``: statistics, flags and a summary for the tensors of a checkpoint."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pinit.checkpoint import Checkpoint, Coverage
from pinit.errors import PinitError
from pinit.flags import DEFAULT_MAX_ABS, ERROR, WARNING, Flag, assess
from pinit.grouping import group_of, shares_bytes, storage_groups
from pinit.selection import Selector
from pinit.storage import TensorEntry

if TYPE_CHECKING:  # numpy (behind pinit.stats) is imported only when tensor data is read
    from pinit.stats import Stats

SORT_KEYS = ("order", "name", "size")
ABSENT: Any = type("Absent", (), {"__repr__": lambda self: "ABSENT"})()  # TensorReport.grad of a file's tensor


@dataclass
class TensorReport:
    entry: TensorEntry
    stats: Stats | None = None
    flags: list[Flag] = field(default_factory=list)
    tied_with: list[str] = field(default_factory=list)
    identical: list[str] = field(default_factory=list)  # of tied_with: the very same view (tied weights)
    values: list[Any] | None = None
    hist: list[int] | None = None
    grad: Any = ABSENT  # live models only (pinit.live): None, or the Stats of the tensor's .grad

    @property
    def name(self) -> str:
        return self.entry.name

    def as_json(self) -> dict[str, Any]:
        e = self.entry
        doc: dict[str, Any] = {
            "name": e.name,
            "shape": list(e.shape),
            "dtype": e.dtype,
            "numel": e.numel,
            "nbytes": e.nbytes,
            "requires_grad": e.requires_grad,
            "tied_with": self.tied_with,
            "stats": self.stats.as_json() if self.stats else None,
            "flags": [f.as_json() for f in self.flags],
        }
        if "shard" in e.extra:
            doc["shard"] = e.extra["shard"]
        if self.values is not None:
            doc["values"] = self.values
        if self.hist is not None:
            doc["hist"] = self.hist
        if self.grad is not ABSENT:
            doc["grad"] = self.grad.as_json() if self.grad is not None else None
        return doc


@dataclass
class Report:
    path: str
    format: str
    tensors: list[TensorReport]
    tied: list[list[str]]
    coverage: Coverage | None = None

    def summary(self) -> dict[str, Any]:
        params = 0
        nbytes = 0
        by_dtype: dict[str, int] = defaultdict(int)
        # tensors sharing storage count once: the largest listed member of each group
        group_index = {name: i for i, names in enumerate(self.tied) for name in names}
        largest: dict[int, TensorEntry] = {}
        counted: list[TensorEntry] = []
        for t in self.tensors:
            i = group_index.get(t.name)
            if i is None:
                counted.append(t.entry)
            elif i not in largest or t.entry.nbytes > largest[i].nbytes:
                largest[i] = t.entry
        for e in [*counted, *largest.values()]:
            params += e.numel
            nbytes += e.nbytes
            by_dtype[e.dtype] += e.numel
        flags = [f for t in self.tensors for f in t.flags]
        return {
            "tensors": len(self.tensors),
            "parameters": params,
            "bytes": nbytes,
            "by_dtype": dict(by_dtype),
            "errors": sum(f.severity == ERROR for f in flags),
            "warnings": sum(f.severity == WARNING for f in flags),
            "tied": self.tied,
            "coverage": (self.coverage or Coverage(len(self.tensors), len(self.tensors))).as_json(),
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "tensors": [t.as_json() for t in self.tensors],
            "summary": self.summary(),
        }


ProgressFn = Callable[[int], None]
BATCH_BYTES = 4 << 20  # work of one worker task: up to 4 MiB of tensor data ...
BATCH_TENSORS = 1024  # ... or this many tensors


def compute_all_stats(
    entries: Sequence[TensorEntry],
    max_abs: float = DEFAULT_MAX_ABS,
    progress: ProgressFn | None = None,
    threads: int = 2,
) -> dict[str, Stats | None]:
    """Statistics of every entry (tied views are read once), using ``threads`` workers."""
    from pinit.stats import compute_stats

    by_view: dict[tuple[object, ...], TensorEntry] = {}
    for e in entries:
        by_view.setdefault(e.view_key, e)

    def one(e: TensorEntry) -> Stats | None:
        st = compute_stats(e, max_abs)
        if progress:
            progress(e.nbytes)
        return st

    def batch(es: Sequence[TensorEntry]) -> list[Stats | None]:
        return [one(e) for e in es]

    unique = sorted(by_view.values(), key=lambda e: -e.nbytes)
    # Small tensors go to the workers in batches: one task per tiny tensor costs more in
    # scheduling than the statistics themselves (100,000 tiny tensors ran twice as slow).
    batches: list[list[TensorEntry]] = []
    size = 0
    for e in unique:
        if not batches or size + e.nbytes > BATCH_BYTES or len(batches[-1]) >= BATCH_TENSORS:
            batches.append([])
            size = 0
        batches[-1].append(e)
        size += e.nbytes
    if threads > 1 and len(batches) > 1:
        with ThreadPoolExecutor(threads) as pool:
            done = [st for part in pool.map(batch, batches) for st in part]
    else:
        done = [st for part in batches for st in batch(part)]
    results = dict(zip((e.view_key for e in unique), done))
    return {e.name: results[e.view_key] for e in entries}


def inspect_checkpoint(
    ckpt: Checkpoint,
    *,
    selector: Selector | None = None,
    flagged: bool = False,
    stats: bool = True,
    values: int = 0,
    hist: bool = False,
    max_abs: float = DEFAULT_MAX_ABS,
    sort: str = "order",
    progress: ProgressFn | None = None,
) -> Report:
    """Build the report of ``inspect``: selected tensors, their statistics, flags and a summary."""
    if sort not in SORT_KEYS:
        raise PinitError(f"--sort must be one of {', '.join(SORT_KEYS)}, not '{sort}'")
    if flagged and not stats:
        raise PinitError("--flagged needs statistics; drop --no-stats")
    if values < 0:
        raise PinitError("--values must be 0 or more")
    if not max_abs > 0:
        raise PinitError("--max-abs must be a positive number")
    selector = selector or Selector()
    chosen = [e for e in ckpt.tensors if selector(e.name)]
    reports = [TensorReport(e) for e in chosen]
    # ties and overlapping views among all the checkpoint's tensors, listed or not
    verdict = assess(chosen, max_abs, context=ckpt.tensors, progress=progress) if stats else None
    groups = verdict.groups if verdict is not None else storage_groups(ckpt.tensors)
    in_group = group_of(groups)
    chosen_names = {e.name for e in chosen}
    tied = [g.names for g in groups if any(n in chosen_names for n in g.names)]
    for r in reports:
        g = in_group.get(r.name)
        if g is not None:  # the members whose bytes it shares itself (q and k of one qkv share none)
            r.tied_with = [o.name for o in g.members if o is not r.entry and shares_bytes(o, r.entry)]
            r.identical = [o.name for o in g.members if o is not r.entry and o.view_key == r.entry.view_key]
    if verdict is not None:
        for r in reports:
            r.stats = verdict.stats[r.name]
            r.flags = verdict.flags[r.name]
        if hist:
            from pinit.stats import histogram

            for r in reports:
                if r.stats is not None:
                    r.hist = histogram(r.entry, r.stats)
    if values:
        from pinit.stats import first_values

        for r in reports:
            r.values = first_values(r.entry, values)
    if flagged:
        reports = [r for r in reports if any(f.severity == ERROR for f in r.flags)]
    if sort == "name":
        reports.sort(key=lambda r: r.name)
    elif sort == "size":
        reports.sort(key=lambda r: (-r.entry.nbytes, r.entry.index))
    return Report(ckpt.path, ckpt.format, reports, tied, ckpt.coverage)
