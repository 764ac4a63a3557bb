"""Live models: ``--model MODULE:CALLABLE`` (``inspect``, ``check``) and ``pinit init``.

The user's own code is imported and called here, because they asked for it by naming it;
nothing else in pinit runs code from outside. ``MODULE:CALLABLE`` imports ``MODULE`` (with the
current folder on ``sys.path``, as ``python -m`` would); ``path/to/file.py:CALLABLE`` runs that
file as a module, with its folder on ``sys.path`` for its own imports (restored afterwards).
``CALLABLE`` may be dotted (``Outer.build``) and is called with the ``--arg key=value`` pairs
as keyword arguments (values parsed as Python literals; a value that is no literal is a string).
It must return a ``torch.nn.Module``.

A built model becomes a :class:`~pinit.checkpoint.Checkpoint` of format ``"model"`` whose
tensors are views of the model's own memory, so ``inspect``, the flags and the writers work on
it unchanged. Its tensors are ``state_dict()``'s, in that order (tied names included, sharing
one storage), then the non-persistent buffers; each is the real parameter or buffer object
(``named_parameters`` / ``named_buffers``), so ``requires_grad`` is true, and ``.grad`` is kept.

``pinit init`` (:func:`init_model`) initializes a built model and saves its state dict:

- ``--scheme default`` calls each module's own ``reset_parameters()``, every module in
  ``named_modules()`` order (parents before children), each under
  ``torch.random.fork_rng()`` with ``torch.manual_seed(derive_seed(seed, module_name))``
  (the root module's name is ``""``), so a module's values depend only on the seed, its name
  and its own code, not on the other modules. The model itself is built under
  ``torch.manual_seed(seed)`` (also inside ``fork_rng``), so whatever ``__init__`` draws is
  reproducible too. The caller's global RNG state is left unchanged.
- ``--scheme NAME`` / ``--plan FILE``: the same assignments as ``pinit reinit`` (one
  ``torch.Generator`` per tensor, seeded ``derive_seed(seed, tensor_name)``).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import re
import secrets
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pinit import dtypes
from pinit.checkpoint import Checkpoint, Coverage, Source
from pinit.errors import PinitError
from pinit.storage import MemoryStorage, Storage, TensorEntry

if TYPE_CHECKING:
    import numpy as np
    import torch

    from pinit.inspect import Report
    from pinit.stats import Stats

MODEL_FORMAT = "model"
# Error flags that mean "this tensor holds memory nobody wrote": ``init`` refuses such a result.
UNINITIALIZED_CODES = ("uninitialized", "nan", "inf")


# --------------------------------------------------------------------------- building


@dataclass(frozen=True)
class ModelSpec:
    """``MODULE:CALLABLE`` or ``path/to/file.py:CALLABLE``, with its keyword arguments."""

    text: str
    target: str  # the module name, or the file path
    attr: str  # the callable, possibly dotted
    is_file: bool
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def shown(self) -> str:
        return f"{self.target}:{self.attr}"


def parse_model_spec(text: str, args: Sequence[str] = ()) -> ModelSpec:
    """Parse ``--model`` and its ``--arg key=value`` options (bad ones: PinitError)."""
    target, sep, attr = text.rpartition(":")
    if not sep or not target or not attr:
        raise PinitError(f"--model expects MODULE:CALLABLE or path/to/file.py:CALLABLE, not '{text}'")
    if not all(part.isidentifier() for part in attr.split(".")):
        raise PinitError(f"--model '{text}': '{attr}' is not a Python name")
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    if not is_file and not all(part.isidentifier() for part in target.split(".")):
        raise PinitError(f"--model '{text}': '{target}' is neither a module name nor a path to a .py file")
    return ModelSpec(text, target, attr, is_file, parse_args(args))


def parse_args(args: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs: values are Python literals (``3``, ``0.5``, ``True``, ``None``,
    ``(1, 2)``, ``'text'``); a value that is not a literal is taken as a string (``act=relu``)."""
    out: dict[str, Any] = {}
    for a in args:
        key, sep, raw = a.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise PinitError(f"--arg expects key=value with key a Python name, not '{a}'")
        if key in out:
            raise PinitError(f"--arg {key} given twice")
        try:
            out[key] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            out[key] = raw
    return out


@contextlib.contextmanager
def _on_sys_path(folder: str) -> Iterator[None]:
    """``folder`` first on ``sys.path`` for the duration, then ``sys.path`` as it was."""
    saved = list(sys.path)
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.path[:] = saved


def _load_target(spec: ModelSpec) -> Any:
    if not spec.is_file:
        return importlib.import_module(spec.target)
    path = Path(spec.target)
    if not path.is_file():
        raise PinitError(f"cannot build model '{spec.shown}': no such file {spec.target}")
    full = path.resolve()
    digest = hashlib.sha256(str(full).encode()).hexdigest()[:12]
    name = f"pinit_user_model_{full.stem if full.stem.isidentifier() else 'file'}_{digest}"
    module_spec = importlib.util.spec_from_file_location(name, full)
    if module_spec is None or module_spec.loader is None:
        raise PinitError(f"cannot build model '{spec.shown}': cannot import {spec.target}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses, pickling and typing look their module up here
    no_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # no __pycache__ left next to the user's file by pinit
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        sys.dont_write_bytecode = no_bytecode
    return module


def build_model(spec: ModelSpec) -> torch.nn.Module:
    """Import ``spec``'s callable and call it; any failure of the user's code is one PinitError
    naming the callable (the original exception is its cause, shown with ``--debug``)."""
    import torch

    folder = str(Path(spec.target).resolve().parent) if spec.is_file else os.getcwd()
    try:
        # what the user's code prints goes to stderr: stdout holds pinit's output (one JSON document)
        with _on_sys_path(folder), contextlib.redirect_stdout(sys.stderr):
            obj: Any = _load_target(spec)
            for part in spec.attr.split("."):
                try:
                    obj = getattr(obj, part)
                except AttributeError:
                    raise PinitError(
                        f"cannot build model '{spec.shown}': {spec.target} has no attribute '{part}'"
                    ) from None
            if not callable(obj):
                raise PinitError(f"cannot build model '{spec.shown}': {spec.attr} is not callable")
            model = obj(**spec.kwargs)
    except PinitError:
        raise
    except (Exception, SystemExit) as e:  # anything the user's code raised, import errors included
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PinitError(f"cannot build model '{spec.shown}': {type(e).__name__}" + (f": {msg}" if msg else "")) from e
    if not isinstance(model, torch.nn.Module):
        got = type(model).__name__
        raise PinitError(f"cannot build model '{spec.shown}': it returned {got}, not a torch.nn.Module")
    return model


# --------------------------------------------------------------------------- as a checkpoint


class _NoData(Storage):
    """The storage of a tensor that holds no values (the meta device): reading it is an error."""

    def __init__(self, nbytes: int, key: Any, name: str) -> None:
        self.nbytes = nbytes
        self.key = key
        self.name = name

    def read_into(self, start: int, out: np.ndarray) -> None:
        raise PinitError(
            f"tensor '{self.name}' is on the meta device: it holds no values (inspect --no-stats lists it; "
            "build the model on a real device to read or save values)"
        )


@dataclass
class LiveModel(Source):
    """What only a live model has: the module, its tensors by name, and the spec it came from."""

    spec: ModelSpec
    module: torch.nn.Module
    tensors: dict[str, torch.Tensor]  # state_dict names (and non-persistent buffers) → the real objects
    state_names: list[str]  # the names of state_dict(), in order (what load_state_dict expects)
    grads: dict[str, Stats | None] = field(default_factory=dict)

    def close(self) -> None:
        """Nothing to release: the tensors are the model's own memory (Checkpoint.close calls this)."""


def _state_tensors(module: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state_dict()``'s tensors as the real parameter and buffer objects, in its order, then the
    non-persistent buffers; and the state_dict names."""
    import torch

    real: dict[str, torch.Tensor] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        real.setdefault(name, p)
    for name, b in module.named_buffers(remove_duplicate=False):
        if b is not None:
            real.setdefault(name, b)
    state = module.state_dict(keep_vars=True)
    names = [k for k, v in state.items() if isinstance(v, torch.Tensor)]
    ordered = {k: real.get(k, state[k]) for k in names}
    for k, v in real.items():
        ordered.setdefault(k, v)  # non-persistent buffers, after the state dict
    return ordered, names


def model_checkpoint(spec: ModelSpec, module: torch.nn.Module | None = None) -> Checkpoint:
    """Build the model (unless given) and list it as a Checkpoint of format ``"model"``."""
    import numpy as np
    import torch

    module = build_model(spec) if module is None else module
    try:
        tensors, names = _state_tensors(module)
    except Exception as e:  # a state_dict hook or a property of the user's module failed
        raise PinitError(f"cannot build model '{spec.shown}': state_dict() raised {type(e).__name__}: {e}") from e
    storages: dict[Any, Storage] = {}
    entries: list[TensorEntry] = []
    for i, (name, t) in enumerate(tensors.items()):
        if isinstance(t, torch.nn.parameter.UninitializedTensorMixin):
            raise PinitError(
                f"model '{spec.shown}': tensor '{name}' is not materialized yet (a lazy module such as "
                "nn.LazyLinear): run one forward pass in your factory before returning the model"
            )
        if t.layout != torch.strided or t.is_quantized:
            raise PinitError(f"model '{spec.shown}': tensor '{name}' is a {t.layout} / quantized tensor, not supported")
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in dtypes.BY_NAME:
            raise PinitError(f"model '{spec.shown}': tensor '{name}' has unsupported dtype {dtype}")
        us = t.untyped_storage()
        key: Any = (t.device.type, t.device.index, us.data_ptr() if us.nbytes() else id(us))
        storage = storages.get(key)
        if storage is None:
            if t.device.type == "meta":
                storage = _NoData(us.nbytes(), ("model", key), name)
            else:
                cpu = us if t.device.type == "cpu" else us.cpu()
                raw = torch.empty(0, dtype=torch.uint8).set_(cpu).numpy() if cpu.nbytes() else np.empty(0, np.uint8)
                raw.flags.writeable = False
                storage = MemoryStorage(raw, key=("model", key))
            storages[key] = storage
        entry = TensorEntry(
            name=name,
            dtype=dtype,
            shape=tuple(t.shape),
            storage=storage,
            offset=t.storage_offset(),
            strides=tuple(t.stride()),
            requires_grad=bool(t.requires_grad),
            index=i,
        )
        entry.validate()
        entries.append(entry)
    live = LiveModel(spec, module, tensors, names)
    return Checkpoint(spec.shown, MODEL_FORMAT, entries, source=live, coverage=Coverage(len(entries), len(entries)))


def grad_stats(ckpt: Checkpoint, names: Sequence[str], max_abs: float) -> dict[str, Stats | None]:
    """The statistics of each named tensor's ``.grad`` (None where it has none)."""
    import torch

    from pinit.stats import compute_stats

    live: LiveModel = ckpt.source
    out: dict[str, Stats | None] = {}
    for name in names:
        t = live.tensors.get(name)
        g = getattr(t, "grad", None) if t is not None else None
        if g is None or g.device.type == "meta":
            out[name] = None
            continue
        g = g.detach().to("cpu").contiguous()
        dtype = str(g.dtype).removeprefix("torch.")
        raw = g.reshape(-1).view(torch.uint8).numpy() if g.numel() else None
        if raw is None or dtype not in dtypes.BY_NAME:
            out[name] = None
            continue
        entry = TensorEntry(f"{name}.grad", dtype, tuple(g.shape), MemoryStorage(raw, key=("grad", name)))
        out[name] = compute_stats(entry, max_abs)
    return out


def attach_grads(report: Report, ckpt: Checkpoint, max_abs: float) -> None:
    """Fill the ``grad`` field of a live model's tensor reports (null, or its statistics)."""
    stats = grad_stats(ckpt, [t.name for t in report.tensors], max_abs)
    for t in report.tensors:
        t.grad = stats[t.name]


def is_live(ckpt: Checkpoint) -> bool:
    return ckpt.format == MODEL_FORMAT and isinstance(ckpt.source, LiveModel)


# --------------------------------------------------------------------------- init


@dataclass
class InitResult:
    model: str
    out: str
    format: str
    scheme: str | None
    plan: str | None
    seed: int
    seed_drawn: bool
    initialized: list[dict[str, Any]]  # {"name", "how"}: module (default) or tensor (schemes)
    not_covered: list[str]  # tensors that no rule or reset_parameters() touched
    modules_without_reset: list[str]  # modules holding their own tensors but no reset_parameters()
    uninitialized: list[str]  # tensors whose result is flagged uninitialized / nan / inf
    aliases: dict[str, str]  # safetensors: dropped tied name → the name kept
    warnings: list[str]

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "out": self.out,
            "format": self.format,
            "scheme": self.scheme,
            "plan": self.plan,
            "seed": self.seed,
            "seed_drawn": self.seed_drawn,
            "initialized": self.initialized,
            "not_covered": self.not_covered,
            "modules_without_reset": self.modules_without_reset,
            "uninitialized": self.uninitialized,
            "aliases": self.aliases,
            "warnings": self.warnings,
        }


def seeded_build(spec: ModelSpec, seed: int) -> torch.nn.Module:
    """Build the model under ``torch.manual_seed(seed)``, leaving the global RNG as it was."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_model(spec)


def reset_default(module: torch.nn.Module, seed: int, spec: ModelSpec) -> tuple[list[str], list[str], list[str]]:
    """``reset_parameters()`` of every module that has one (see the module doc for the seeding);
    returns the modules reset, the modules that hold tensors of their own but have none, and a
    note for each tensor that two modules reset (tied weights: the later module's values stay)."""
    import torch

    from pinit.reinitialize import derive_seed

    done: list[str] = []
    without: list[str] = []
    twice: list[str] = []
    reset_by: dict[int, str] = {}  # id of a parameter or buffer -> "module.name" that reset it first
    for name, m in module.named_modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            for pname, p in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]:
                full = f"{name}.{pname}" if name else pname
                if p is None:
                    continue
                if id(p) in reset_by:
                    twice.append(
                        f"{full} is the same tensor as {reset_by[id(p)]}: reset by both modules, "
                        f"{name or '(root)'}'s reset_parameters() (the later one) decides its values"
                    )
                else:
                    reset_by[id(p)] = full
            try:
                with torch.random.fork_rng(), torch.no_grad(), contextlib.redirect_stdout(sys.stderr):
                    torch.manual_seed(derive_seed(seed, name))
                    reset()
            except Exception as e:
                shown = name or "(the root module)"
                raise PinitError(
                    f"cannot build model '{spec.shown}': {shown}.reset_parameters() raised {type(e).__name__}: {e}"
                ) from e
            done.append(name)
        elif any(True for _ in m.named_parameters(recurse=False)) or any(
            b is not None for _, b in m.named_buffers(recurse=False)
        ):
            without.append(name)
    return done, without, twice


def _module_of(name: str) -> str:
    return name.rpartition(".")[0]


def init_model(
    spec: ModelSpec,
    out: str,
    *,
    scheme: str | None = None,
    options: dict[str, Any] | None = None,
    plan: str | None = None,
    match: Sequence[str] = (),
    exclude: Sequence[str] = (),
    seed: int | None = None,
    allow_uninitialized: bool = False,
    provenance: bool = True,
    force: bool = False,
) -> InitResult:
    """``pinit init``: build, initialize, check, save (see the module doc). Nothing is written
    when anything fails, including an uninitialized result without ``allow_uninitialized``."""
    import torch

    from pinit import writers
    from pinit.flags import DEFAULT_MAX_ABS, assess
    from pinit.reinitialize import Rule, derive_seed, load_plan, new_values, plan_assignments
    from pinit.selection import Selector

    if plan is not None and (scheme is not None or options):
        raise PinitError("--plan and --scheme (or scheme options) are exclusive")
    if options and (scheme or "default") == "default":
        raise PinitError("scheme options (--std, --gain, ...) go with a named --scheme, not with --scheme default")
    if (match or exclude) and (plan is None and (scheme or "default") == "default"):
        raise PinitError("--match/--exclude choose tensors for a named --scheme or a --plan, not for --scheme default")
    writers.check_write(out, force=force)  # a target that must not be replaced: refused before any work
    rules: list[Rule] = []
    if plan is not None:
        plan_seed, rules = load_plan(plan)
        if seed is None:
            seed = plan_seed
    elif scheme is not None:
        rules = [Rule(scheme, dict(options or {}), tuple(match) or (".",), tuple(exclude))]
    seed_drawn = seed is None
    if seed is None:
        seed = secrets.randbits(32)
    if seed < 0 or seed >= 1 << 64:
        raise PinitError("--seed must be between 0 and 2**64-1")
    default = plan is None and (not rules or rules[0].scheme == "default")
    label = "default" if default else (scheme if plan is None else None)

    module = seeded_build(spec, seed)
    initialized: list[dict[str, Any]] = []
    without: list[str] = []
    covered: set[str] = set()
    twice: list[str] = []
    if default:
        done, without, twice = reset_default(module, seed, spec)
        initialized = [{"name": n, "how": "reset_parameters()"} for n in done]
        done_set = set(done)
        ckpt = model_checkpoint(spec, module)
        # a module's reset_parameters() covers its own tensors (what it does to children is its own)
        covered = {e.name for e in ckpt.tensors if _module_of(e.name) in done_set}
    else:
        ckpt = model_checkpoint(spec, module)
        live: LiveModel = ckpt.source
        floats = {e.name for e in ckpt.tensors if e.dt.is_float}
        non_float = [f"^{re.escape(e.name)}$" for e in ckpt.tensors if e.name not in floats]
        for r in rules:  # integer buffers (num_batches_tracked) are never drawn; listed as not covered
            if non_float:
                r.selector = Selector(r.match, (*r.exclude, *non_float))
        assignments = plan_assignments(ckpt, rules, with_tied=True)
        with torch.no_grad():
            for a in assignments:
                root = a.entry
                values = new_values(root.shape, root.dtype, a.scheme, a.kwargs, derive_seed(seed, root.name))
                live.tensors[root.name].copy_(values.to(live.tensors[root.name].device))
                covered.update(a.group)
                initialized.append(
                    {"name": root.name, "how": a.scheme, "options": _jsonable(a.kwargs), "tied_with": a.group[1:]}
                )
        ckpt = model_checkpoint(spec, module)  # the storages again (a CUDA model's copies are stale)
    not_covered = [e.name for e in ckpt.tensors if e.name not in covered and e.name in set(ckpt.source.state_names)]
    flags = assess(ckpt.tensors, DEFAULT_MAX_ABS).flags
    bad = []
    saved = set(ckpt.source.state_names)  # a non-persistent buffer is not saved: not judged either
    for e in ckpt.tensors:
        codes = {f.code for f in flags[e.name]}
        if e.name in saved and (
            codes & set(UNINITIALIZED_CODES) or (e.name in not_covered and codes & {"all_zero", "huge"})
        ):
            bad.append(e.name)
    warnings: list[str] = list(twice)
    if without:
        warnings.append(
            "modules without reset_parameters() (their tensors keep what __init__ gave them): "
            + ", ".join(n or "(root)" for n in without)
        )
    if not_covered and not default:
        warnings.append("tensors no rule covers (kept as built): " + ", ".join(not_covered))
    if bad:
        what = (
            f"{len(bad)} tensor(s) of the initialized model look uninitialized (memory never written, "
            f"or NaN/Inf): {', '.join(bad)}"
        )
        if not allow_uninitialized:
            lacking = [n for n in without if any(_module_of(b) == n for b in bad)]
            hint = (
                "give "
                + (", ".join(f"{n or '(root)'} ({type(module.get_submodule(n)).__name__})" for n in lacking) or "them")
                + " a reset_parameters(), or use a --plan rule"
                if default
                else "cover them with a --plan rule"
            )
            raise PinitError(f"{what}; {hint}, or pass --allow-uninitialized; nothing was written")
        warnings.append(what)
    record = {
        "model": spec.text,
        "args": {k: repr(v) for k, v in spec.kwargs.items()},
        "scheme": label,
        "plan": os.fspath(plan) if plan else None,
        "seed": seed,
    }
    fmt, aliases = save_state_dict(
        model_checkpoint(spec, module), out, json.dumps(record, sort_keys=True) if provenance else None, force
    )
    return InitResult(
        spec.shown,
        out,
        fmt,
        label,
        os.fspath(plan) if plan else None,
        seed,
        seed_drawn,
        initialized,
        not_covered,
        without,
        bad,
        aliases,
        warnings,
    )


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    import math

    return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in d.items()}


def save_state_dict(
    ckpt: Checkpoint, out: str, provenance: str | None, force: bool = False
) -> tuple[str, dict[str, str]]:
    """Save the live model's ``state_dict()`` atomically: ``.safetensors`` as safetensors'
    ``save_model`` does (of tensors sharing storage one name is kept, the first by name of those
    covering the whole storage; the others are dropped and recorded in the metadata as
    ``{dropped: kept}``), anything else with ``torch.save(model.state_dict())`` (ties stay
    shared). Returns the format and the aliases."""
    import torch

    from pinit import writers
    from pinit.grouping import storage_groups

    live: LiveModel = ckpt.source
    if not Path(out).name.endswith(".safetensors"):
        with writers.atomic_file(out, force=force) as fd, os.fdopen(os.dup(fd), "wb") as f:
            torch.save(live.module.state_dict(), f)
            f.flush()
        return "torch", {}
    entries = state_entries(ckpt)
    aliases: dict[str, str] = {}
    for group in storage_groups(entries):  # the one storage-grouping function, as for files
        whole = sorted(
            m.name for m in group.members if m.is_contiguous and m.offset == 0 and m.nbytes == m.storage.nbytes
        )
        if not whole:
            raise PinitError(
                f"cannot save as safetensors: {', '.join(group.names)} share storage but none of them "
                "covers all of it (save as .pt, or clone one of them in the model)",
                out,
            )
        aliases.update({m.name: whole[0] for m in group.members if m.name != whole[0]})
    metadata = {"format": "pt", **aliases}  # "format": what transformers expects, as reinit adds it
    if provenance is not None:
        metadata["pinit"] = provenance
    tensors = [
        writers.OutTensor(e.name, e.dtype, e.shape, source=e) for e in entries if e.name not in aliases
    ]  # the bytes are read from the model's memory as the file is written
    with writers.atomic_file(out, force=force) as fd:
        writers.write_safetensors(fd, tensors, metadata or None)
    return "safetensors", aliases


# --------------------------------------------------------------------------- check --model


def state_entries(ckpt: Checkpoint) -> list[TensorEntry]:
    """The entries ``load_state_dict`` compares against: the state dict's names, in order."""
    live: LiveModel = ckpt.source
    names = set(live.state_names)
    return [e for e in ckpt.tensors if e.name in names]


def tied_aliases(ckpt: Checkpoint) -> dict[str, list[str]]:
    """For each state-dict name of the model, the other names that are the very same view."""
    by_view: dict[Any, list[str]] = {}
    for e in state_entries(ckpt):
        by_view.setdefault(e.view_key, []).append(e.name)
    return {n: [o for o in names if o != n] for names in by_view.values() for n in names if len(names) > 1}
