"""``reinit``: rewrite chosen tensors with a ``torch.nn.init`` scheme, reproducibly, and save.

    import pinit
    result = pinit.reinit("model.pt", match=["conv.*weight"], scheme="kaiming_normal",
                          options={"mode": "fan_out", "nonlinearity": "relu"}, seed=0)

Each tensor gets its own ``torch.Generator`` seeded with :func:`derive_seed`
from ``(seed, name)``, so its new values depend only on the seed, its name, the
scheme and its shape.  Everything is validated before anything is written, and
every write is atomic.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pinit import __version__, defaults
from pinit.checkpoint import Checkpoint, LoadOptions, open_checkpoint
from pinit.errors import PinitError
from pinit.files import MAX_INDEX_BYTES, read_regular
from pinit.flags import DEFAULT_MAX_ABS, ERROR, assess
from pinit.grouping import group_of, storage_groups
from pinit.schemes import SCHEMES, canonical_name, resolve_options
from pinit.selection import Selector
from pinit.stats import Stats, compute_stats
from pinit.storage import MemoryStorage, TensorEntry, contiguous_strides

if TYPE_CHECKING:
    import torch

SEED_BITS = 63


def derive_seed(seed: int, name: str) -> int:
    """The generator seed of tensor ``name``: the first 8 bytes of
    ``sha256(f"{seed}:{name}")``, little-endian, keeping the low 63 bits."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << SEED_BITS) - 1)


@dataclass
class Rule:
    """Tensors matching ``match`` (and not ``exclude``) get ``scheme`` with ``options``."""

    scheme: str
    options: dict[str, Any] = field(default_factory=dict)
    match: Sequence[str] = ()
    exclude: Sequence[str] = ()
    where: str = ""  # for messages: "rule 2 of plan.toml"

    def __post_init__(self) -> None:
        try:
            self.scheme = canonical_name(self.scheme)
        except PinitError as e:
            if self.where:
                e.message = f"{e.message} ({self.where})"
            raise
        self.selector = Selector(self.match, self.exclude)
        if self.scheme != "default":
            self.kwargs = resolve_options(self.scheme, self.options, self.where)
        elif self.options:
            raise PinitError(
                f"scheme 'default' takes no options (--{next(iter(self.options))})"
                + (f" ({self.where})" if self.where else "")
            )


@dataclass
class Assignment:
    """One draw: ``entry`` (a tensor, or the root of a group of tensors sharing storage) gets
    ``scheme``; every member of ``members`` takes its bytes from that one draw."""

    entry: TensorEntry
    rule_scheme: str  # as the user chose it ("default" stays "default")
    scheme: str  # the torch scheme actually applied
    kwargs: dict[str, Any]
    members: list[TensorEntry]  # every tensor that changes with it, itself included, in file order

    @property
    def group(self) -> list[str]:
        return [e.name for e in self.members]


@dataclass
class TensorChange:
    name: str
    scheme: str
    applied: str
    options: dict[str, Any]
    tied_with: list[str]
    before: Stats | None = None
    after: Stats | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scheme": self.scheme,
            "applied": self.applied,
            "options": self.options,
            "tied_with": self.tied_with,
            "before": self.before.as_json() if self.before else None,
            "after": self.after.as_json() if self.after else None,
        }


@dataclass(frozen=True)
class ReinitWarning:
    """A warning of a reinit.  ``lost_content``: about something the output does not keep
    (non-tensor content or metadata dropped, tied tensors become copies, other hard links keep
    the old data, an owner or group not kept); the CLI's ``--quiet`` never hides those."""

    text: str
    lost_content: bool = False

    def __str__(self) -> str:
        return self.text


ProgressFn = Callable[[int], None]
Progress = Callable[[int], AbstractContextManager[ProgressFn | None]]
"""``progress(total_bytes)`` is entered once the work is known; the function it gives (or None)
is called with each number of bytes done (drawn, then written to a torch file)."""


@dataclass
class ReinitResult:
    path: str
    out: str | None  # None for a dry run
    format: str  # of the output
    seed: int | None  # None: no selected scheme is random, and none was given
    seed_drawn: bool
    changes: list[TensorChange]
    warnings: list[ReinitWarning]
    files_written: list[str]
    dry_run: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "out": self.out,
            "format": self.format,
            "seed": self.seed,
            "seed_drawn": self.seed_drawn,
            "dry_run": self.dry_run,
            "tensors": [c.as_json() for c in self.changes],
            "files_written": self.files_written,
            "warnings": [w.text for w in self.warnings],
        }


def load_plan(path: str | os.PathLike[str]) -> tuple[int | None, list[Rule]]:
    """Read a TOML plan: optional ``seed``, and ``[[rule]]`` tables with match, exclude, scheme, options."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    p = Path(path)
    try:
        doc = tomllib.loads(read_regular(str(p), MAX_INDEX_BYTES, "plan").decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PinitError(f"plan is not valid TOML ({e})", str(p)) from None
    unknown = set(doc) - {"seed", "rule"}
    if unknown:
        raise PinitError(f"plan has unknown key(s) {', '.join(sorted(unknown))}; expected seed and [[rule]]", str(p))
    seed = doc.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise PinitError("plan seed must be a non-negative integer", str(p))
    rules_doc = doc.get("rule")
    if not isinstance(rules_doc, list) or not rules_doc:
        raise PinitError("plan has no [[rule]] tables", str(p))
    rules = []
    for i, r in enumerate(rules_doc, start=1):
        where = f"rule {i} of {p.name}"
        if not isinstance(r, dict):
            raise PinitError(f"{where} is not a table", str(p))
        r = dict(r)
        match = _str_list(r.pop("match", None), "match", where, str(p))
        exclude = _str_list(r.pop("exclude", []), "exclude", where, str(p))
        scheme = r.pop("scheme", None)
        if not isinstance(scheme, str):
            raise PinitError(f"{where} needs a scheme", str(p))
        try:
            rules.append(Rule(scheme, r, match, exclude, where))
        except PinitError as e:
            e.path = str(p)
            raise
    return seed, rules


def _str_list(v: Any, key: str, where: str, path: str) -> list[str]:
    if v is None:
        raise PinitError(f"{where} needs {key}", path)
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return v
    raise PinitError(f"{where}: {key} must be a string or a list of strings", path)


def plan_assignments(
    ckpt: Checkpoint,
    rules: Sequence[Rule],
    flagged: bool = False,
    max_abs: float = DEFAULT_MAX_ABS,
    with_tied: bool = False,
) -> list[Assignment]:
    """Which tensor gets which scheme; every problem is collected into one error.

    Tensors sharing storage bytes (tied weights, views such as ``q = qkv[0:1]``) change
    together: selecting one whose bytes an unselected tensor shares is an error naming both,
    unless ``with_tied``, which re-initializes the whole group with one draw of its root
    (the member holding every other member's bytes) under the first selected member's rule.
    """
    entries = ckpt.tensors
    flagged_names: set[str] | None = None
    if flagged:
        flags = assess(entries, max_abs).flags
        flagged_names = {name for name, fs in flags.items() if any(f.severity == ERROR for f in fs)}
    by_name = {e.name: e for e in entries}

    def rule_for(e: TensorEntry) -> Rule | None:
        if flagged_names is not None and e.name not in flagged_names:
            return None
        return next((r for r in rules if r.selector(e.name)), None)

    chosen = {e.name: rule for e in entries if (rule := rule_for(e)) is not None}
    in_group = group_of(storage_groups(entries))
    out: list[Assignment] = []
    problems: list[str] = []
    done_groups: set[int] = set()
    for e in entries:
        rule = chosen.get(e.name)
        if rule is None:
            continue
        group = in_group.get(e.name)
        if group is not None:
            if id(group) in done_groups:
                continue
            done_groups.add(id(group))
            left_out = [o.name for o in group.members if o.name not in chosen]
            if left_out and not with_tied:
                picked = [o.name for o in group.members if o.name in chosen]
                problems.append(
                    f"{', '.join(picked)} shares storage with {', '.join(left_out)}, which is not selected "
                    "(select it too, or pass --with-tied to re-initialize the whole group)"
                )
                continue
            if group.root is None:
                problems.append(
                    f"{', '.join(group.names)} overlap in storage but none of them holds all the others' bytes"
                )
                continue
            target, members = group.root, group.members
        else:
            target, members = e, [e]
        if not target.dt.is_float:
            problems.append(f"{target.name} ({target.dtype} is not a floating type; leave it out with --exclude)")
            continue
        if _overlaps_itself(target):
            problems.append(
                f"{target.name} (a broadcast or self-overlapping view: its {target.numel:,} elements share "
                "fewer stored values, which one draw cannot fill)"
            )
            continue
        if rule.scheme == "default":
            inferred = defaults.infer(target, by_name)
            if isinstance(inferred, str):
                problems.append(f"{target.name} ({inferred})")
                continue
            scheme, kwargs = inferred
        else:
            scheme, kwargs = rule.scheme, rule.kwargs
        spec = SCHEMES[scheme]
        if not spec.accepts(target.shape):
            problems.append(f"{target.name} (shape {list(target.shape)}: {scheme} takes {spec.shapes} tensors)")
            continue
        if scheme == "dirac" and target.shape[0] % kwargs.get("groups", 1):
            problems.append(f"{target.name} (dirac: dim 0 of {list(target.shape)} is not divisible by groups)")
            continue
        out.append(Assignment(target, rule.scheme, scheme, dict(kwargs), members))
    if problems:
        shown = "; ".join(problems[:20]) + (f"; and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise PinitError(f"cannot re-initialize {len(problems)} tensor(s): {shown}; nothing was written")
    if not out:
        raise PinitError("the selection is empty: no tensor matches; nothing was written")
    return out


def _overlaps_itself(e: TensorEntry) -> bool:
    """True for a view that reaches some stored element twice (``expand``, hostile strides)."""
    from pinit.grouping import byte_runs, byte_span

    strides = e.strides if e.strides is not None else contiguous_strides(e.shape)
    if any(s == 0 and n > 1 for n, s in zip(e.shape, strides)):
        return True
    lo, hi = byte_span(e)
    if hi - lo < e.nbytes:
        return True
    runs = byte_runs(e)
    return runs is not None and int((runs[1] - runs[0]).sum()) < e.nbytes


def member_bytes(root: TensorEntry, root_bytes: np.ndarray, member: TensorEntry) -> np.ndarray:
    """The new bytes of ``member``, a view inside ``root``'s bytes, once ``root`` holds
    ``root_bytes`` (row-major): the values are scattered into a buffer standing for the
    storage span of ``root``, and the member's view is gathered from it."""
    from pinit.grouping import byte_span

    lo, hi = byte_span(root)
    buf = np.zeros(hi - lo, dtype=np.uint8)

    def view(e: TensorEntry) -> np.ndarray:
        item = e.dt.itemsize
        strides = e.strides if e.strides is not None else contiguous_strides(e.shape)
        start = e.offset * item - lo
        elems = buf[start:].view(np.dtype(f"V{item}")) if item > 1 else buf[start:]
        return np.lib.stride_tricks.as_strided(elems, shape=e.shape, strides=tuple(st * item for st in strides))

    item = root.dt.itemsize
    view(root)[...] = root_bytes.view(np.dtype(f"V{item}") if item > 1 else np.uint8).reshape(root.shape)
    return np.ascontiguousarray(view(member)).view(np.uint8).reshape(-1)


def new_values(shape: Sequence[int], dtype: str, scheme: str, kwargs: dict[str, Any], seed: int) -> torch.Tensor:
    """The values a tensor gets: ``torch.nn.init.<scheme>_`` on a float32 (float64 for float64)
    tensor with a generator seeded ``seed``, cast to ``dtype``."""
    import torch

    work_dtype = torch.float64 if dtype == "float64" else torch.float32
    t = torch.empty(tuple(shape), dtype=work_dtype)
    if t.numel() == 0:  # nothing to draw (torch's fan-based schemes would warn on stderr "no-op")
        return t.to(getattr(torch, dtype))
    fn = getattr(torch.nn.init, f"{scheme}_")
    if scheme == "sparse":
        _sparse_(t, **kwargs, generator=torch.Generator().manual_seed(seed))
    elif SCHEMES[scheme].random:
        g = torch.Generator().manual_seed(seed)
        fn(t, **kwargs, generator=g)
    else:
        fn(t, **kwargs)
    return t.to(getattr(torch, dtype))


def _sparse_(t: torch.Tensor, sparsity: float, std: float, generator: torch.Generator) -> None:
    """``torch.nn.init.sparse_`` with every draw from ``generator``: torch's own draws the zero
    positions with ``torch.randperm`` from the global RNG, ignoring ``generator``, so they would
    not follow ``--seed`` (and would disturb the caller's global RNG)."""
    import torch

    rows, cols = t.shape
    num_zeros = math.ceil(sparsity * rows)
    with torch.no_grad():
        t.normal_(0, std, generator=generator)
        for col_idx in range(cols):
            t[torch.randperm(rows, generator=generator)[:num_zeros], col_idx] = 0


def tensor_bytes(t: torch.Tensor) -> np.ndarray:
    """The raw little-endian bytes of a contiguous CPU tensor, as a uint8 array."""
    import torch

    flat = t.contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy() if flat.numel() else np.empty(0, np.uint8)


def memory_entry(name: str, dtype: str, shape: tuple[int, ...], data: np.ndarray) -> TensorEntry:
    return TensorEntry(name=name, dtype=dtype, shape=shape, storage=MemoryStorage(data, key=("new", name)))


def reinit(
    path: str | os.PathLike[str],
    *,
    match: Sequence[str] = (),
    exclude: Sequence[str] = (),
    scheme: str | None = None,
    options: dict[str, Any] | None = None,
    plan: str | os.PathLike[str] | None = None,
    flagged: bool = False,
    seed: int | None = None,
    out: str | os.PathLike[str] | None = None,
    backup: bool = False,
    force: bool = False,
    with_tied: bool = False,
    dry_run: bool = False,
    provenance: bool = True,
    max_abs: float = DEFAULT_MAX_ABS,
    load_options: LoadOptions | None = None,
    progress: Progress | None = None,
) -> ReinitResult:
    """Re-initialize the selected tensors of ``path`` and write the result (see the module doc).

    ``force`` rewrites a write-protected file (no write permission) instead of refusing it.
    ``with_tied`` re-initializes every tensor sharing storage with a selected one (one draw of
    the group's root) instead of refusing the selection.  A seed is drawn (``seed`` None) only
    when a selected scheme is random; otherwise the result's seed is None.  ``progress``: see
    :data:`Progress`."""
    from pinit import output_io

    if plan is not None:
        if scheme is not None or options:
            raise PinitError("--plan and --scheme (or scheme options) are exclusive")
        plan_seed, rules = load_plan(plan)
        if plan_seed is not None and seed is None:
            seed = plan_seed
        if match or exclude:
            narrowed = Selector(match, exclude)
            for r in rules:
                r.selector = _And(r.selector, narrowed)
    else:
        if scheme is None:
            raise PinitError("choose a scheme with --scheme NAME (see 'pinit schemes') or give --plan FILE")
        if not (match or flagged):
            raise PinitError("choose tensors with --match (use --match . for every tensor) or --flagged")
        rules = [Rule(scheme, dict(options or {}), match or (".",), exclude)]
    if seed is not None and (seed < 0 or seed >= 1 << 64):
        raise PinitError("--seed must be between 0 and 2**64-1")
    with open_checkpoint(path, load_options) as ckpt:
        if not dry_run:  # refuse a target that must not be replaced before any work
            output_io.check_targets(ckpt, out, backup=backup, force=force)
        try:
            assignments = plan_assignments(ckpt, rules, flagged, max_abs, with_tied)
        except PinitError as e:
            e.path = e.path or ckpt.path
            raise
        seed_drawn = seed is None and any(SCHEMES[a.scheme].random for a in assignments)
        if seed_drawn:
            seed = secrets.randbits(32)
        seed_used = 0 if seed is None else seed  # no scheme draws: any seed gives the same values
        changes: list[TensorChange] = []
        warnings: list[ReinitWarning] = []
        for a in assignments:
            if len(a.members) > 1:
                warnings.append(
                    ReinitWarning(
                        f"{', '.join(a.group)} share storage: drawn once, as {a.entry.name} "
                        f"{list(a.entry.shape)}, and changed together"
                    )
                )
            for m in a.members:
                others = [n for n in a.group if n != m.name]
                changes.append(TensorChange(m.name, a.rule_scheme, a.scheme, _jsonable(a.kwargs), others))

        def produce() -> Iterator[tuple[list[str], np.ndarray]]:
            """Each new tensor's bytes with the names that are that very view, one view at a
            time; a group's root is drawn once and its other members are slices of it."""
            for a in assignments:
                root = a.entry
                t = new_values(root.shape, root.dtype, a.scheme, a.kwargs, derive_seed(seed_used, root.name))
                data = tensor_bytes(t)
                del t
                if advance is not None:  # bound by the `with` below, before anything is drawn
                    advance(root.nbytes)
                views: dict[tuple[object, ...], list[TensorEntry]] = {}
                for m in a.members:
                    views.setdefault(m.view_key, []).append(m)
                for key, same in views.items():
                    yield [m.name for m in same], data if key == root.view_key else member_bytes(root, data, same[0])
                del data  # before the next tensor is drawn: one new tensor in memory at a time

        pending = output_io.PendingValues(frozenset(n for a in assignments for n in a.group), produce)
        work = sum(a.entry.nbytes for a in assignments)
        if not dry_run:
            work += output_io.progress_write_bytes(ckpt, pending.names, out)
        with progress(work) if progress is not None else nullcontext() as advance:
            if dry_run:
                values = pending.get()
                by_name = {e.name: e for e in ckpt.tensors}
                for c in changes:
                    e = by_name[c.name]
                    c.before = compute_stats(e, max_abs)
                    c.after = compute_stats(memory_entry(e.name, e.dtype, e.shape, values[e.name]), max_abs)
                fmt = output_io.output_format(ckpt, out)
                return ReinitResult(ckpt.path, None, fmt, seed, seed_drawn, changes, warnings, [], True)
            record = {
                "version": __version__,
                "seed": seed,
                "rules": [
                    {
                        "match": list(r.match),
                        "exclude": list(r.exclude),
                        "scheme": r.scheme,
                        "options": _jsonable(r.options),
                    }
                    for r in rules
                ],
                "tensors": {c.name: {"scheme": c.applied, "options": c.options} for c in changes},
            }
            written, fmt, more_warnings = output_io.write_checkpoint(
                ckpt,
                pending,
                out=out,
                backup=backup,
                force=force,
                provenance=json.dumps(record, separators=(",", ":"), sort_keys=True) if provenance else None,
                load_options=load_options or LoadOptions(),
                progress=advance,
            )
            # all about what the output does not keep: ties become copies, non-tensor content or
            # metadata dropped, other hard links keep the old content, an owner or group not kept
            warnings.extend(ReinitWarning(w, lost_content=True) for w in more_warnings)
            target = os.fspath(out) if out is not None else ckpt.path
            return ReinitResult(ckpt.path, target, fmt, seed, seed_drawn, changes, warnings, written, False)


class _And:
    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b

    def __call__(self, name: str) -> bool:
        return bool(self.a(name) and self.b(name))


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in d.items()}
