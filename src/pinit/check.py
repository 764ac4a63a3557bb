"""``check``: the CI gate.  Runs the flags of every tensor of every checkpoint, compares with a
reference, and decides pass or fail against a severity threshold."""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pinit.checkpoint import (
    CHECKPOINT_SUFFIXES,
    INDEX_SUFFIXES,
    Checkpoint,
    Coverage,
    LoadOptions,
    open_checkpoint,
)
from pinit.errors import PinitError, UnsafeGlobalError
from pinit.files import MAX_INDEX_BYTES, is_url, read_regular
from pinit.flags import DEFAULT_MAX_ABS, ERROR, FLAG_CODES, WARNING, assess
from pinit.selection import Selector, compile_patterns

REFERENCE_CODES = {
    "missing": "a tensor of the reference is not in the file",
    "unexpected": "a tensor of the file is not in the reference",
    "shape_mismatch": "a tensor's shape differs from the reference",
    "dtype_mismatch": "a tensor's dtype differs from the reference",
    "prefix_mismatch": "the file's tensor names carry a prefix (module., model., state_dict., ...) that the "
    "model's names lack: --strip-prefix PREFIX removes it",
}
FILE_CODES = {
    "unreadable": "the file cannot be read: corrupt, truncated, an unsafe pickle, missing, or not a checkpoint",
    "no_tensors": "nothing checkable was read: no tensor in the file, tensors inside content pinit does not "
    "interpret, or --exclude left none",
}
CHECK_CODES: dict[str, str] = {
    **{code: sev for code, (sev, _) in FLAG_CODES.items()},
    **dict.fromkeys(REFERENCE_CODES, ERROR),
    "unreadable": ERROR,
    "no_tensors": ERROR,
}
SEVERITIES = ("off", WARNING, ERROR)
_RANK = {WARNING: 1, ERROR: 2}


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str
    message: str
    tensor: str | None = None
    globals: tuple[str, ...] = ()  # unreadable because of refused pickle globals: every one of them

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"tensor": self.tensor, "code": self.code, "severity": self.severity}
        doc["message"] = self.message
        if self.globals:
            doc["globals"] = list(self.globals)
        return doc


@dataclass
class FileResult:
    path: str
    format: str | None  # None when unreadable
    tensors: int
    findings: list[Finding]
    fail_on: str
    coverage: Coverage | None = None  # None when unreadable

    @property
    def failed(self) -> bool:
        return any(_RANK[f.severity] >= _RANK[self.fail_on] for f in self.findings)

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "tensors": self.tensors,
            "status": "fail" if self.failed else "pass",
            "coverage": self.coverage.as_json() if self.coverage is not None else None,
            "findings": [f.as_json() for f in self.findings],
        }


@dataclass
class CheckSettings:
    fail_on: str = ERROR
    rules: dict[str, str] = field(default_factory=dict)
    max_abs: float = DEFAULT_MAX_ABS
    exclude: list[str] = field(default_factory=list)
    reference: str | None = None
    model: Checkpoint | None = None  # check --model: the live model (pinit.live), compared like a reference
    strip_prefix: str | None = None  # check --model --strip-prefix: removed from the file's names first

    def severity(self, code: str) -> str:
        return self.rules.get(code, CHECK_CODES[code])


@dataclass
class CheckReport:
    files: list[FileResult]
    settings: CheckSettings

    @property
    def failed(self) -> bool:
        return any(f.failed for f in self.files)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def summary(self) -> dict[str, Any]:
        findings = [x for f in self.files for x in f.findings]
        return {
            "files": len(self.files),
            "failed_files": sum(f.failed for f in self.files),
            "errors": sum(x.severity == ERROR for x in findings),
            "warnings": sum(x.severity == WARNING for x in findings),
            "fail_on": self.settings.fail_on,
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "files": [f.as_json() for f in self.files],
            "summary": self.summary(),
            "exit_code": self.exit_code,
        }

    def as_sarif(self) -> dict[str, Any]:
        """The SARIF 2.1.0 log of this report (``--format sarif``): see ``pinit.sarif``."""
        from pinit.sarif import check_sarif

        return check_sarif(self)


def parse_rule(text: str) -> tuple[str, str]:
    """``CODE=off|warning|error`` as given to --rule."""
    code, sep, sev = text.partition("=")
    code, sev = code.strip(), sev.strip().lower()
    if not sep or code not in CHECK_CODES:
        raise PinitError(
            f"--rule expects CODE=off|warning|error with CODE one of {', '.join(CHECK_CODES)}; got '{text}'"
        )
    if sev not in SEVERITIES:
        raise PinitError(f"--rule {code}: severity must be off, warning or error, not '{sev}'")
    return code, sev


def find_pyproject(start: Path | None = None) -> Path | None:
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def load_pyproject_settings(pyproject: Path | None) -> dict[str, Any]:
    """The ``[tool.pinit.check]`` table of ``pyproject`` (keys with - or _), validated."""
    if pyproject is None:
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        doc = tomllib.loads(read_regular(str(pyproject), MAX_INDEX_BYTES, "pyproject.toml").decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise PinitError(f"cannot read [tool.pinit.check]: {e}", str(pyproject)) from None
    table = doc.get("tool", {}).get("pinit", {}).get("check", {})
    if not isinstance(table, dict):
        raise PinitError("[tool.pinit.check] must be a table", str(pyproject))
    out: dict[str, Any] = {}
    for key, value in table.items():
        k = key.replace("-", "_")
        if k not in ("fail_on", "rules", "max_abs", "exclude", "reference"):
            raise PinitError(f"unknown key '{key}' in [tool.pinit.check]", str(pyproject))
        out[k] = value
    for k, ok, what in (
        ("fail_on", lambda v: isinstance(v, str), "a string: error or warning"),
        ("max_abs", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
        (
            "exclude",
            lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
            "a regular expression or a list of them",
        ),
        ("reference", lambda v: isinstance(v, str), "a path"),
    ):
        if k in out and not ok(out[k]):
            raise PinitError(f"[tool.pinit.check] {k.replace('_', '-')} must be {what}, not {out[k]!r}", str(pyproject))
    if "rules" in out:
        rules = out["rules"]
        if not isinstance(rules, dict):
            raise PinitError("[tool.pinit.check] rules must be a table of CODE = severity", str(pyproject))
        out["rules"] = dict(parse_rule(f"{c}={s}") for c, s in rules.items())
    if "exclude" in out:
        ex = out["exclude"]
        out["exclude"] = [ex] if isinstance(ex, str) else list(ex)
    if "reference" in out and out["reference"] is not None:
        ref = Path(str(out["reference"]))
        out["reference"] = str(ref if ref.is_absolute() else pyproject.parent / ref)
    return out


def merge_settings(
    pyproject: Mapping[str, Any],
    *,
    fail_on: str | None,
    rules: Sequence[str],
    max_abs: float | None,
    exclude: Sequence[str],
    reference: str | None,
) -> CheckSettings:
    """Options win over ``[tool.pinit.check]``; --rule adds to (and overrides) the file's rules."""
    s = CheckSettings()
    s.fail_on = (fail_on or pyproject.get("fail_on") or ERROR).lower()
    if s.fail_on not in (WARNING, ERROR):
        raise PinitError(f"--fail-on must be error or warning, not '{s.fail_on}'")
    s.rules = {**pyproject.get("rules", {}), **dict(parse_rule(r) for r in rules)}
    s.max_abs = float(max_abs if max_abs is not None else pyproject.get("max_abs", DEFAULT_MAX_ABS))
    if not s.max_abs > 0:
        raise PinitError("--max-abs must be a positive number")
    s.exclude = [*pyproject.get("exclude", []), *exclude]
    compile_patterns(s.exclude, "--exclude")  # a bad regex is bad usage (exit 2), not an unreadable file
    s.reference = reference if reference is not None else pyproject.get("reference")
    return s


def expand_paths(paths: Sequence[str]) -> list[str]:
    """Files, folders (searched for checkpoints; a sharded checkpoint counts once) and globs."""
    out: list[str] = []
    for p in paths:
        if is_url(p):  # a remote file, index or folder (pinit.remote)
            from pinit.remote import expand

            out.extend(expand(p))
        elif not os.path.exists(p) and glob.has_magic(p):
            matches = sorted(glob.glob(p, recursive=True))
            if not matches:
                raise PinitError(f"no file matches '{p}'")
            for m in matches:
                out.extend(_expand_one(m))
        else:
            out.extend(_expand_one(p))
    return list(dict.fromkeys(out))


def _expand_one(p: str) -> list[str]:
    path = Path(p)
    if not path.is_dir():
        return [p]  # a missing file is reported as unreadable
    found: list[str] = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if ".metadata" in files and any(f.endswith(".distcp") for f in files):
            found.append(root)  # a torch.distributed.checkpoint folder: one checkpoint
            continue
        indexes = sorted(f for f in files if f.endswith(INDEX_SUFFIXES))
        shards: set[str] = set()
        for idx in indexes:
            found.append(os.path.join(root, idx))
            shards |= _shard_files(Path(root) / idx)
        for f in sorted(files):
            if f.endswith(CHECKPOINT_SUFFIXES) and f not in shards:
                found.append(os.path.join(root, f))
    return found


def _shard_files(index: Path) -> set[str]:
    import json

    try:
        doc = json.loads(read_regular(str(index), MAX_INDEX_BYTES, "shard index").decode("utf-8"))
        return {Path(v).name for v in doc.get("weight_map", {}).values() if isinstance(v, str)}
    except Exception:  # a broken index is reported when the index itself is checked
        return set()


def check_checkpoint(
    ckpt: Checkpoint,
    settings: CheckSettings,
    reference: Checkpoint | None,
    progress: Callable[[int], None] | None = None,
) -> list[Finding]:
    selector = Selector((), settings.exclude)
    entries = [e for e in ckpt.tensors if selector(e.name)]
    flags = assess(entries, settings.max_abs, context=ckpt.tensors, progress=progress).flags
    findings = [Finding(f.code, f.severity, f.message, e.name) for e in entries for f in flags[e.name]]
    if reference is not None:
        findings += compare_reference(entries, [e for e in reference.tensors if selector(e.name)])
    if settings.model is not None:
        findings += compare_model(entries, settings.model, settings.strip_prefix, selector)
    problem = ckpt.coverage.problem() if ckpt.coverage is not None else None
    if problem is None and not ckpt.tensors:
        problem = "no tensor found in the file"
    if problem is None and not entries:
        problem = f"--exclude left none of the file's {len(ckpt.tensors)} tensors to check"
    if problem is not None:  # never pass what was not read
        findings.insert(0, Finding("no_tensors", ERROR, problem))
    return _apply_rules(findings, settings)


def compare_reference(entries: Sequence[Any], ref_entries: Sequence[Any], what: str = "reference") -> list[Finding]:
    mine = {e.name: e for e in entries}
    ref = {e.name: e for e in ref_entries}
    out = []
    for name, r in ref.items():
        e = mine.get(name)
        if e is None:
            out.append(Finding("missing", ERROR, f"not in this file; the {what} has {r.dtype}{list(r.shape)}", name))
            continue
        if tuple(e.shape) != tuple(r.shape):
            out.append(Finding("shape_mismatch", ERROR, f"shape {list(e.shape)}, {what} {list(r.shape)}", name))
        if e.dtype != r.dtype:
            out.append(Finding("dtype_mismatch", ERROR, f"dtype {e.dtype}, {what} {r.dtype}", name))
    for name, e in mine.items():
        if name not in ref:
            out.append(Finding("unexpected", ERROR, f"not in the {what} ({e.dtype}{list(e.shape)})", name))
    return out


COMMON_PREFIXES = ("module.", "model.", "state_dict.", "_orig_mod.", "net.", "network.", "base_model.")


def detect_prefix(names: Sequence[str], model_names: Sequence[str]) -> tuple[str, int] | None:
    """The prefix of the file's names whose removal makes the most of them model names (and
    more than as they are): a known one (``module.`` of DataParallel/DDP, ``model.`` or
    ``state_dict.`` of Lightning, ``_orig_mod.`` of torch.compile, ...) or any leading run of
    up to three name components; with the number of names that then match. None: no prefix helps."""
    wanted = set(model_names)
    now = sum(n in wanted for n in names)
    candidates: dict[str, int] = dict.fromkeys(COMMON_PREFIXES, 0)
    for n in names:
        parts = n.split(".")
        for k in range(1, min(3, len(parts) - 1) + 1):
            p = ".".join(parts[:k]) + "."
            candidates[p] = candidates.get(p, 0) + 1
    best: tuple[str, int] | None = None
    for p, _ in sorted(candidates.items(), key=lambda kv: -kv[1])[:64]:
        hits = sum(n[len(p) :] in wanted for n in names if n.startswith(p))
        if hits > now and (best is None or hits > best[1]):
            best = (p, hits)
    return best


def compare_model(entries: Sequence[Any], model: Checkpoint, strip_prefix: str | None, selector: Any) -> list[Finding]:
    """What ``model.load_state_dict(sd, strict=True)`` would refuse, from names, shapes and dtypes
    only (the file's tensor data is not read): the codes of --reference, ``missing`` meaning
    "the model has it, the file does not". ``load_state_dict`` casts a tensor of another dtype
    (``copy_``), so ``dtype_mismatch`` is a warning here. With ``strip_prefix`` only the file's
    names under that prefix are compared, without it (what ``model.load_state_dict`` of
    ``ckpt["state_dict"]`` stripped of ``"model."`` sees; optimizer state and the rest are left
    out). A name the model ties to another (the same parameter twice) is not missing when the
    file has the other: safetensors' ``save_model`` stores one of them, and ``load_model``
    restores both. When some prefix of the file's names would make them fit, one
    ``prefix_mismatch`` says which, followed by what would still not fit once it is stripped
    (not by every name it explains). Tensors a pickled model keeps as plain attributes are not
    in its state dict and are left out."""
    entries = [e for e in entries if not getattr(e, "extra", {}).get("attribute")]
    if strip_prefix:
        prefix = strip_prefix if strip_prefix.endswith(".") else strip_prefix + "."
        entries = [_Renamed(e.name[len(prefix) :], e.dtype, e.shape) for e in entries if e.name.startswith(prefix)]
        if not entries:
            return [Finding("prefix_mismatch", ERROR, f"no tensor name of the file starts with '{prefix}'")]
    found = detect_prefix([e.name for e in entries], [r.name for r in _model_entries(model, entries, selector)])
    if found is None:
        out = _compare_to_model(entries, model, selector)
        sub = detect_prefix([r.name for r in _model_entries(model, entries, selector)], [e.name for e in entries])
        if sub is not None and sub[1] == len(entries):  # the file holds the state of one of the submodules
            name = sub[0][:-1]
            out.insert(
                0,
                Finding(
                    "prefix_mismatch",
                    ERROR,
                    f"all {sub[1]} of the file's tensor names are the model's names without the prefix '{sub[0]}': "
                    f"the file holds the state of the submodule '{name}' (load it with "
                    f"model.get_submodule('{name}').load_state_dict(sd))",
                ),
            )
        return out
    prefix, hits = found
    stripped = [_Renamed(e.name[len(prefix) :], e.dtype, tuple(e.shape)) for e in entries if e.name.startswith(prefix)]
    rest = _compare_to_model(stripped, model, selector)
    again = f"--strip-prefix {(strip_prefix or '').rstrip('.') + '.' if strip_prefix else ''}{prefix}"
    return [
        Finding(
            "prefix_mismatch",
            ERROR,
            f"{hits} of the file's {len(entries)} tensor names fit the model once the prefix '{prefix}' is removed: "
            f"rerun with {again} (and load only the tensors under that prefix, without it)"
            + (f"; even then {len(rest)} finding(s) remain, listed here" if rest else "; then every name fits"),
        ),
        *rest,
    ]


def _model_entries(model: Checkpoint, entries: Sequence[Any], selector: Any) -> list[Any]:
    from pinit.live import state_entries, tied_aliases

    have = {e.name for e in entries}
    aliases = tied_aliases(model)
    return [
        r
        for r in state_entries(model)
        if selector(r.name) and (r.name in have or not any(a in have for a in aliases.get(r.name, ())))
    ]


def _compare_to_model(entries: Sequence[Any], model: Checkpoint, selector: Any) -> list[Finding]:
    out = compare_reference(entries, _model_entries(model, entries, selector), "model")
    return [  # load_state_dict copies a tensor of another dtype into the parameter, casting it
        replace(f, severity=WARNING, message=f"{f.message} (load_state_dict casts it to the model's dtype)")
        if f.code == "dtype_mismatch"
        else f
        for f in out
    ]


@dataclass(frozen=True)
class _Renamed:
    name: str
    dtype: str
    shape: tuple[int, ...]


def _apply_rules(findings: Sequence[Finding], settings: CheckSettings) -> list[Finding]:
    out = []
    for f in findings:
        sev = settings.rules.get(f.code, f.severity)  # a flag may set its own severity (empty)
        if sev != "off":
            out.append(Finding(f.code, sev, f.message, f.tensor, f.globals))
    return out


ProgressFn = Callable[[int], None]
Progress = Callable[[int], AbstractContextManager[ProgressFn | None]]
"""``progress(total_bytes)`` is entered once the files are known (``total_bytes``: their size on
disk); the function it gives (or None) is called with each number of bytes done."""


def _disk_bytes(path: str) -> int:
    """The size of a checkpoint file; of an index, that of the shards it names."""
    p = Path(path)
    try:
        if p.name.endswith(INDEX_SUFFIXES):
            return sum((p.parent / n).stat().st_size for n in _shard_files(p) if (p.parent / n).is_file())
        return p.stat().st_size
    except OSError:
        return 0


def run_check(
    paths: Sequence[str],
    settings: CheckSettings,
    load_options: LoadOptions | None = None,
    progress: Progress | None = None,
    jobs: int = 1,
) -> CheckReport:
    """Check every checkpoint under ``paths``; an unreadable file is a finding, not a stop.
    ``progress``: see :data:`Progress` (the tensor bytes read, each file made up to its size).
    ``jobs``: files checked in that many processes at once (same report, in input order)."""
    if not paths:
        raise PinitError("give at least one checkpoint file, folder or glob")
    files = expand_paths(paths)
    if not files:
        raise PinitError(f"no checkpoint found under {', '.join(paths)}")
    reference = None
    if settings.reference:
        reference = open_checkpoint(settings.reference, load_options)  # unreadable reference: usage error
    results = []
    sizes = [_disk_bytes(f) for f in files] if progress is not None else [0] * len(files)
    try:
        with progress(sum(sizes)) if progress is not None else nullcontext() as advance:
            if jobs > 1 and len(files) > 1 and settings.model is None and _picklable(settings, load_options):
                results = _check_in_processes(files, sizes, settings, load_options, jobs, advance)
            else:
                for path, size in zip(files, sizes):
                    done = _Counter(advance)
                    results.append(_check_file(path, settings, load_options, reference, done if advance else None))
                    done.up_to(size)
    finally:
        if reference is not None:
            reference.close()
    return CheckReport(results, settings)


def _check_file(
    path: str,
    settings: CheckSettings,
    load_options: LoadOptions | None,
    reference: Checkpoint | None,
    progress: Callable[[int], None] | None,
) -> FileResult:
    shown = path
    if is_url(path):  # never the user info or query of a URL (credentials)
        from pinit.remote import redact

        shown = redact(path)
    try:
        with open_checkpoint(path, load_options) as ckpt:
            findings = check_checkpoint(ckpt, settings, reference, progress)
            return FileResult(shown, ckpt.format, len(ckpt.tensors), findings, settings.fail_on, ckpt.coverage)
    except PinitError as e:
        refused = tuple(e.globals) if isinstance(e, UnsafeGlobalError) else ()
        finding = Finding("unreadable", settings.severity("unreadable"), e.message, None, refused)
        kept = [finding] if finding.severity != "off" else []
        return FileResult(shown, None, 0, kept, settings.fail_on)


def _picklable(*objs: Any) -> bool:
    """Whether the settings can go to worker processes (else the files are checked in this one)."""
    import pickle

    try:
        pickle.dumps(objs)
    except Exception:
        return False
    return True


def _check_in_processes(
    files: list[str],
    sizes: list[int],
    settings: CheckSettings,
    load_options: LoadOptions | None,
    jobs: int,
    advance: ProgressFn | None,
) -> list[FileResult]:
    """``check --jobs N``: one file (a sharded checkpoint: all its shards) per task, on N worker
    processes (spawned: the parent may run threads), the results kept in input order."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from pinit import remote

    context = multiprocessing.get_context("spawn")
    workers = min(jobs, len(files))
    results: list[FileResult] = []
    init = {"initializer": _worker_init, "initargs": (remote.settings,)}
    with ProcessPoolExecutor(workers, mp_context=context, **init) as pool:
        futures = [pool.submit(_worker_check, path, settings, load_options) for path in files]
        try:
            for future, size in zip(futures, sizes):
                results.append(future.result())
                if advance is not None and size:
                    advance(size)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results


_worker_reference: dict[str, Checkpoint] = {}


def _worker_init(remote_settings: Any) -> None:
    from pinit import remote

    remote.settings = remote_settings


def _worker_check(path: str, settings: CheckSettings, load_options: LoadOptions | None) -> FileResult:
    reference = None
    if settings.reference:
        reference = _worker_reference.get(settings.reference)
        if reference is None:
            reference = _worker_reference[settings.reference] = open_checkpoint(settings.reference, load_options)
    return _check_file(path, settings, load_options, reference, None)


class _Counter:
    """Passes each advance on to ``advance`` (from the statistics' worker threads) and counts
    it, so that a file's progress can be made up to its size once it is done."""

    def __init__(self, advance: ProgressFn | None) -> None:
        import threading

        self.advance, self.done, self.lock = advance, 0, threading.Lock()

    def __call__(self, n: int) -> None:
        with self.lock:
            self.done += n
        if self.advance is not None:
            self.advance(n)

    def up_to(self, total: int) -> None:
        if self.advance is not None and total > self.done:
            self(total - self.done)
