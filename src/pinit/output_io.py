"""Write a checkpoint back with some tensors replaced, in safetensors or torch format.

Preservation rules (SPEC section 5, reinit): unselected tensors are byte-identical;
non-tensor content of torch checkpoints is kept; safetensors ``__metadata__`` is
kept and gets a ``pinit`` provenance record; tied storage stays tied in torch
output and becomes separate copies in safetensors output (with a warning); only
the shards holding changed tensors are rewritten.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pinit.checkpoint import Checkpoint, LoadOptions
from pinit.errors import PinitError
from pinit.flatten import flatten
from pinit.grouping import storage_groups
from pinit.writers import OutTensor, atomic_file, check_write, write_error, write_safetensors


def output_format(ckpt: Checkpoint, out: str | os.PathLike[str] | None) -> str:
    """'safetensors' or 'torch' for a single file; 'sharded' for a sharded checkpoint."""
    if ckpt.format == "sharded":
        return "sharded"
    if out is None:
        return ckpt.format
    return "safetensors" if os.fspath(out).endswith(".safetensors") else "torch"


@dataclass
class PendingValues:
    """New tensor bytes known by name first and produced on demand, one tensor (with the names
    that share it) at a time: a writer can copy the unchanged data while they are computed
    (which starts with a second of ``import torch``) and hold only one new tensor at a time."""

    names: frozenset[str]
    produce: Callable[[], Iterator[tuple[Sequence[str], np.ndarray]]]

    def get(self) -> dict[str, np.ndarray]:
        """All new values at once (for writers that need them together)."""
        return {name: data for names, data in self.produce() for name in names}


Values = Mapping[str, np.ndarray] | PendingValues
ProgressFn = Callable[[int], None]


def progress_write_bytes(ckpt: Checkpoint, names: frozenset[str], out: str | os.PathLike[str] | None) -> int:
    """About the bytes :func:`write_checkpoint` reports to its ``progress``: the tensor data of
    each torch file it writes, as written; for safetensors, the unchanged tensors it copies, once
    the file is written (the new values are the caller's to count, as they are drawn)."""

    def file_bytes(c: Checkpoint, fmt: str) -> int:
        if fmt == "torch":
            return sum({e.view_key: e.nbytes for e in c.tensors}.values())
        return _copied_bytes(c, names)

    fmt = output_format(ckpt, out)
    if fmt == "sharded":
        return sum(file_bytes(s, s.format) for s in ckpt.shards if any(e.name in names for e in s.tensors))
    return file_bytes(ckpt, fmt)


def _copied_bytes(ckpt: Checkpoint, names: frozenset[str] | Mapping[str, Any]) -> int:
    """The bytes of the tensors a safetensors output of ``ckpt`` copies unchanged."""
    return sum(e.nbytes for e in ckpt.tensors if e.name not in names)


class _CountingWriter:
    """A binary file that reports each write's size to ``progress`` (for ``torch.save``)."""

    def __init__(self, f: Any, progress: ProgressFn) -> None:
        self.f, self.progress = f, progress

    def write(self, data: Any) -> int:
        n = self.f.write(data)
        self.progress(len(memoryview(data)) if n is None else n)
        return n

    def flush(self) -> None:
        self.f.flush()


def write_checkpoint(
    ckpt: Checkpoint,
    values: Values,
    *,
    out: str | os.PathLike[str] | None,
    backup: bool,
    provenance: str | None,
    load_options: LoadOptions,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> tuple[list[str], str, list[str]]:
    """Write ``ckpt`` with the tensors in ``values`` (raw bytes) replaced.

    Returns the files written, the output format and warnings. ``force`` lets a
    write-protected file be replaced (see :func:`check_targets`). ``progress`` is called with
    the bytes written to each torch file (see :func:`progress_write_bytes`).
    """
    warnings: list[str] = []
    fmt = output_format(ckpt, out)
    names = values.names if isinstance(values, PendingValues) else frozenset(values)
    check_targets(ckpt, out, names=names, backup=backup, force=force)
    if fmt == "sharded":
        if isinstance(values, PendingValues):
            values = values.get()
        written = _write_sharded(ckpt, values, out, backup, provenance, load_options, warnings, force, progress)
        return written, fmt, warnings
    target = os.fspath(out) if out is not None else ckpt.path
    _write_file(ckpt, values, target, fmt, backup, provenance, load_options, warnings, force, progress)
    return [target], fmt, warnings


def check_targets(
    ckpt: Checkpoint,
    out: str | os.PathLike[str] | None,
    *,
    names: frozenset[str] | None = None,
    backup: bool = False,
    force: bool = False,
) -> None:
    """Refuse, before any work, a write that must not happen (``writers.check_write``): an
    output that exists and is not a regular file, or a write-protected file without ``force``.
    For a sharded checkpoint rewritten in place these are the shards holding ``names`` (none
    checked while ``names`` is None: not known yet); a sharded ``--out`` is a new or empty folder.
    """
    if ckpt.format != "sharded":
        check_write(os.fspath(out) if out is not None else ckpt.path, backup=backup, force=force)
        return
    if names is None or (out is not None and Path(out).resolve() != Path(ckpt.path).parent.resolve()):
        return
    for shard in ckpt.shards:
        if any(e.name in names for e in shard.tensors):
            check_write(shard.path, backup=backup, force=force)


def _write_file(
    ckpt: Checkpoint,
    values: Values,
    target: str,
    fmt: str,
    backup: bool,
    provenance: str | None,
    load_options: LoadOptions,
    warnings: list[str],
    force: bool = False,
    progress: ProgressFn | None = None,
) -> None:
    if Path(target).is_dir():
        raise PinitError("output path is a folder; name a file", target)
    if fmt == "safetensors":
        _write_as_safetensors(ckpt, values, target, backup, provenance, warnings, force)
        if progress is not None:
            progress(_copied_bytes(ckpt, values.names if isinstance(values, PendingValues) else values))
    else:
        if isinstance(values, PendingValues):
            values = values.get()
        _write_as_torch(ckpt, values, target, backup, load_options, warnings, force, progress)


def _write_as_safetensors(
    ckpt: Checkpoint,
    values: Values,
    target: str,
    backup: bool,
    provenance: str | None,
    warnings: list[str],
    force: bool = False,
) -> None:
    if ckpt.format == "torch":
        for group in storage_groups(ckpt.tensors):
            warnings.append(f"tensors sharing storage {', '.join(group.names)} become separate copies in safetensors")
        dropped = non_tensor_names(ckpt)
        if dropped:
            shown = ", ".join(dropped[:8]) + (f" and {len(dropped) - 8} more" if len(dropped) > 8 else "")
            warnings.append(f"safetensors holds tensors only; dropped non-tensor content: {shown}")
    metadata = dict(ckpt.metadata) if ckpt.metadata else None
    if provenance is not None:
        metadata = metadata or {}
        metadata.setdefault("format", "pt")
        metadata["pinit"] = provenance
    if isinstance(values, PendingValues):
        pending = values
        tensors = [OutTensor(e.name, e.dtype, e.shape, source=e, pending=e.name in pending.names) for e in ckpt.tensors]
        with atomic_file(target, backup, force=force, warnings=warnings) as fd:
            write_safetensors(fd, tensors, metadata, fill=pending.produce)
        return
    tensors = [OutTensor(e.name, e.dtype, e.shape, data=values.get(e.name), source=e) for e in ckpt.tensors]
    with atomic_file(target, backup, force=force, warnings=warnings) as fd:
        write_safetensors(fd, tensors, metadata)


def non_tensor_names(ckpt: Checkpoint) -> list[str]:
    """Flat names of the non-tensor content of a torch checkpoint's object tree.

    A container holding no tensor at all is named once, as a whole.
    """
    if ckpt.tree is None:
        return []
    tensor_names = {e.name for e in ckpt.tensors}
    names: list[str] = []

    def holds_tensor(prefix: str) -> bool:
        return any(n == prefix or n.startswith(prefix + ".") for n in tensor_names) if prefix else bool(tensor_names)

    def walk(node: Any, prefix: str) -> None:
        if prefix in tensor_names:
            return
        if prefix and not holds_tensor(prefix):
            names.append(prefix)
            return
        if isinstance(node, Mapping):
            items: Any = node.items()
        elif isinstance(node, (list, tuple)):
            items = enumerate(node)
        else:
            return
        for k, v in items:
            walk(v, f"{prefix}.{k}" if prefix else str(k))

    walk(ckpt.tree, "")
    return names


def _write_as_torch(
    ckpt: Checkpoint,
    values: Mapping[str, np.ndarray],
    target: str,
    backup: bool,
    load_options: LoadOptions,
    warnings: list[str],
    force: bool = False,
    progress: ProgressFn | None = None,
) -> None:
    import torch

    from pinit.formats import torch_load

    if ckpt.format == "torch":
        obj = torch_load.torch_load(ckpt.path, load_options.allowed, load_options.unsafe_pickle, mmap=not ckpt.legacy)
        tensors = {leaf.name: leaf.value for leaf in flatten(obj, torch_load.is_torch_tensor)}
    else:
        if ckpt.metadata:
            warnings.append("torch files have no metadata: the safetensors __metadata__ is dropped")
        obj = {}
        for e in ckpt.tensors:
            raw = values[e.name] if e.name in values else e.read_bytes()  # _to_torch copies it
            obj[e.name] = _to_torch(raw, e.dtype, e.shape)
        tensors = obj
    with torch.no_grad():
        for name, raw in values.items():
            t = tensors[name]
            if ckpt.format == "torch":
                t.copy_(_to_torch(raw, str(t.dtype).removeprefix("torch."), tuple(t.shape)))
    with atomic_file(target, backup, force=force, warnings=warnings) as fd, os.fdopen(os.dup(fd), "wb") as f:
        try:
            pickler = torch_load.pickle_module_for(load_options.allowed, load_options.unsafe_pickle)
            torch.save(obj, f if progress is None else _CountingWriter(f, progress), pickle_module=pickler)
        except RuntimeError as e:
            # torch's zip writer turns a failed f.write (disk full, file-size limit) into an
            # opaque RuntimeError ("unexpected pos ..."); surface the OSError so atomic_file
            # reports "cannot write: <reason>" for the target.
            cause = _os_error_in(e)
            if cause is not None:
                raise cause from None
            raise
        f.flush()


def _os_error_in(e: BaseException) -> OSError | None:
    seen: BaseException | None = e.__cause__ or e.__context__
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _to_torch(raw: np.ndarray, dtype: str, shape: tuple[int, ...]) -> Any:
    import torch

    if raw.size == 0:  # torch.from_numpy gives an empty array stride 0, which .view(dtype) refuses
        return torch.empty(shape, dtype=getattr(torch, dtype))
    buf = torch.from_numpy(np.array(raw, dtype=np.uint8, copy=True))
    return buf.view(getattr(torch, dtype)).reshape(shape)


def _write_sharded(
    ckpt: Checkpoint,
    values: Mapping[str, np.ndarray],
    out: str | os.PathLike[str] | None,
    backup: bool,
    provenance: str | None,
    load_options: LoadOptions,
    warnings: list[str],
    force: bool = False,
    progress: ProgressFn | None = None,
) -> list[str]:
    index_path = Path(ckpt.path)
    src_dir = index_path.parent.resolve()
    dst_dir = Path(out).resolve() if out is not None else src_dir
    in_place = dst_dir == src_dir
    if not in_place:
        if dst_dir.exists() and (not dst_dir.is_dir() or any(dst_dir.iterdir())):
            raise PinitError("--out of a sharded checkpoint must be a new or empty folder", os.fspath(out))
        try:
            dst_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(dst_dir, e) from None
    written = []
    for shard in ckpt.shards:
        name = (
            Path(shard.path).relative_to(src_dir) if Path(shard.path).is_relative_to(src_dir) else Path(shard.path).name
        )
        target = dst_dir / name
        changed = {e.name: values[e.name] for e in shard.tensors if e.name in values}
        if changed:
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_file(
                shard, changed, str(target), shard.format, backup, provenance, load_options, warnings, force, progress
            )
            written.append(str(target))
        elif not in_place:
            _copy_file(Path(shard.path), target)
            written.append(str(target))
    if not in_place:
        _copy_file(index_path, dst_dir / index_path.name)
        written.append(str(dst_dir / index_path.name))
    return written


def _copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(dst) as fd, open(src, "rb") as f, os.fdopen(os.dup(fd), "wb") as w:
            shutil.copyfileobj(f, w, 16 << 20)
    except OSError as e:
        raise write_error(dst, e) from None
