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

from pinit.checkpoint import (
    Checkpoint,
    LoadOptions,
    SafetensorsSource,
    ShardedSource,
    TorchLoadedSource,
    TorchZipSource,
)
from pinit.errors import PinitError
from pinit.files import FileRef, reopen, size_of
from pinit.flatten import flatten
from pinit.grouping import storage_groups
from pinit.storage import FileStorage, StreamStorage, TensorEntry, contiguous_strides, remote_files_unchanged
from pinit.writers import OutTensor, atomic_file, check_write, pwrite_all, write_error, write_safetensors

REMOTE_COPY_CHUNK = 8 << 20  # a remote torch zip is downloaded into the output in these pieces


def _shards(ckpt: Checkpoint) -> list[Checkpoint]:
    return ckpt.source.shards if isinstance(ckpt.source, ShardedSource) else []


def _metadata(ckpt: Checkpoint) -> dict[str, str] | None:
    return ckpt.source.metadata if isinstance(ckpt.source, SafetensorsSource) else None


def output_format(ckpt: Checkpoint, out: str | os.PathLike[str] | None) -> str:
    """The format written: in place the input's own (``torch``, ``torchscript``, ``safetensors``,
    ``dcp``), ``sharded`` for a sharded checkpoint, else by ``out``'s extension: ``.safetensors``
    or ``torch``."""
    if isinstance(ckpt.source, ShardedSource):
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
        if fmt == "dcp":  # rewritten in place: the selected tensors' chunks
            return sum(e.nbytes for e in c.tensors if e.name in names)
        if fmt == "safetensors":
            return _copied_bytes(c, names)
        return sum({e.view_key: e.nbytes for e in c.tensors}.values())  # a torch zip (TorchScript too)

    fmt = output_format(ckpt, out)
    if fmt == "sharded":
        return sum(file_bytes(s, s.format) for s in _shards(ckpt) if any(e.name in names for e in s.tensors))
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
    if fmt == "dcp":  # a torch.distributed.checkpoint folder rewritten in place, chunk by chunk
        from pinit.formats import dcp

        written = dcp.write_in_place(ckpt, values, backup=backup, force=force, warnings=warnings, progress=progress)
        return written, fmt, warnings
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
    if output_format(ckpt, out) == "dcp":  # in place: the .distcp files holding the selected tensors
        from pinit.formats import dcp

        for path in dcp.touched_files(ckpt, names or frozenset()):
            check_write(path, backup=backup, force=force)
        return
    if not isinstance(ckpt.source, ShardedSource):
        check_write(os.fspath(out) if out is not None else ckpt.path, backup=backup, force=force)
        return
    if names is None or (out is not None and Path(out).resolve() != Path(ckpt.path).parent.resolve()):
        return
    for shard in _shards(ckpt):
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
    # the one place where a file's writer is chosen: by the output format, then by what the
    # source can give (a torch zip read by pinit is patched record by record)
    if fmt == "safetensors":
        _write_as_safetensors(ckpt, values, target, backup, provenance, warnings, force)
        if progress is not None:
            progress(_copied_bytes(ckpt, values.names if isinstance(values, PendingValues) else values))
    elif isinstance(ckpt.source, TorchZipSource):
        _patch_torch_zip(ckpt, ckpt.source.fd, values, target, backup, warnings, force, progress)
    elif isinstance(ckpt.source, TorchLoadedSource):
        _save_torch_tree(ckpt, values, target, backup, load_options, warnings, force, progress)
    else:
        _save_flat_dict_as_torch(ckpt, values, target, backup, load_options, warnings, force, progress)


def _write_as_safetensors(
    ckpt: Checkpoint,
    values: Values,
    target: str,
    backup: bool,
    provenance: str | None,
    warnings: list[str],
    force: bool = False,
) -> None:
    for group in storage_groups(ckpt.tensors):  # none in a safetensors input
        warnings.append(f"tensors sharing storage {', '.join(group.names)} become separate copies in safetensors")
    dropped = non_tensor_names(ckpt)  # from the source's object tree, where it has one
    if dropped:
        warnings.append(f"safetensors holds tensors only; dropped non-tensor content: {_some(dropped)}")
    metadata = dict(_metadata(ckpt) or {}) or None
    if provenance is not None:
        metadata = metadata or {}
        metadata.setdefault("format", "pt")
        metadata["pinit"] = provenance
    if isinstance(values, PendingValues):
        pending = values
        tensors = [OutTensor(e.name, e.dtype, e.shape, source=e, pending=e.name in pending.names) for e in ckpt.tensors]
        with atomic_file(target, backup, force=force, warnings=warnings) as fd:
            write_safetensors(fd, tensors, metadata, fill=pending.produce)
            remote_files_unchanged(ckpt.tensors)  # before the rename: nothing of two versions is written
        return
    tensors = [OutTensor(e.name, e.dtype, e.shape, data=values.get(e.name), source=e) for e in ckpt.tensors]
    with atomic_file(target, backup, force=force, warnings=warnings) as fd:
        write_safetensors(fd, tensors, metadata)
        remote_files_unchanged(ckpt.tensors)


def non_tensor_names(ckpt: Checkpoint) -> list[str]:
    """Flat names of the non-tensor content of a checkpoint's object tree (a torch pickle, a
    pickled model's attributes, DCP's non-tensor values), and a TorchScript archive's code.

    A container holding no tensor at all is named once, as a whole. Of a pickled module's own
    attributes only the public ones are named (``width``, ``label``; not ``training`` nor the
    ``_forward_hooks`` bookkeeping every module carries).
    """
    from pinit.formats.torch_zip import ModulePlaceholder

    tree = ckpt.source.tree
    names: list[str] = ["TorchScript code (code/)"] if ckpt.format == "torchscript" else []
    if tree is None:
        return names
    tensor_names = {e.name for e in ckpt.tensors}

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
        elif isinstance(node, ModulePlaceholder) and node.module_items() is not None:
            items = [*(node.module_items() or ()), *((k, v) for k, v in node.module_extra() if _public(k))]
        else:
            return
        for k, v in items:
            walk(v, f"{prefix}.{k}" if prefix else str(k))

    walk(tree, "")
    return names


def _public(attribute: Any) -> bool:
    return isinstance(attribute, str) and not attribute.startswith("_") and attribute != "training"


def _some(names: Sequence[str], n: int = 8) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _save_torch_tree(
    ckpt: Checkpoint,
    values: Values,
    target: str,
    backup: bool,
    load_options: LoadOptions,
    warnings: list[str],
    force: bool = False,
    progress: ProgressFn | None = None,
) -> None:
    """A file ``torch.load`` itself read (a legacy pickle, ``--unsafe-pickle``, tensor kinds
    pinit does not model): its object tree, with the new values copied into its tensors, saved
    by ``torch.save`` as a zip (allowlisted objects stay inert placeholders)."""
    import torch

    from pinit.formats import torch_load

    if isinstance(values, PendingValues):
        values = values.get()
    tree = ckpt.source.tree
    if not getattr(ckpt.source, "legacy", False):  # a zip torch.load itself read (--unsafe-pickle, ...)
        warnings.append(
            "written again by torch.save (the file was loaded by torch itself): storage locations such as "
            "cuda:0 become cpu and the record prefix becomes 'archive/'"
        )
    tensors = {leaf.name: leaf.value for leaf in flatten(tree, torch_load.is_torch_tensor)}
    with torch.no_grad():
        for name, raw in values.items():
            t = tensors[name]
            t.copy_(_to_torch(raw, str(t.dtype).removeprefix("torch."), tuple(t.shape)))
    _torch_save(tree, target, backup, load_options, warnings, force, progress)


def _save_flat_dict_as_torch(
    ckpt: Checkpoint,
    values: Values,
    target: str,
    backup: bool,
    load_options: LoadOptions,
    warnings: list[str],
    force: bool = False,
    progress: ProgressFn | None = None,
) -> None:
    """Any other source (safetensors, a DCP folder) written as ``.pt``: the object its source
    lays out (``Source.torch_layout``: a flat state dict of the tensors by name, as
    ``torch.save(load_file(...))`` writes; for DCP the nested state dict ``dcp_to_torch_save``
    writes), streamed by pinit's own torch-zip writer: one tensor in memory at a time, no torch."""
    from pinit.formats.torch_zip_write import (
        needs_unsafe_load,
        state_dict_pickle,
        tensor_standins,
        write_state_dict_zip,
    )

    if _metadata(ckpt):
        warnings.append("torch files have no metadata: the safetensors __metadata__ is dropped")
    entries = ckpt.tensors
    specs = [(e.name, e.dtype, tuple(e.shape)) for e in entries]
    obj, dropped = ckpt.source.torch_layout(tensor_standins(specs))
    if dropped:  # e.g. DCP's non-tensor values that pinit does not unpickle (big, or refused)
        warnings.append(f"non-tensor content is not written (pinit does not unpickle it): {_some(dropped)}")
    pickled, globals_written = state_dict_pickle(obj)
    unsafe = needs_unsafe_load(globals_written)
    if unsafe:
        warnings.append(
            f"{target} holds values of {_some(unsafe)}, which torch.load(weights_only=True) refuses unless "
            "they are allowed with torch.serialization.add_safe_globals (pinit reads them)"
        )
    if isinstance(values, PendingValues):
        pending, fill = values.names, values.produce
    else:
        given = dict(values)
        pending, fill = frozenset(given), lambda: (((n,), v) for n, v in given.items())
    with atomic_file(target, backup, force=force, warnings=warnings) as fd:
        write_state_dict_zip(fd, specs, lambda i: entries[i].iter_bytes(), pending, fill, progress, pickled)


def _torch_save(
    obj: Any,
    target: str,
    backup: bool,
    load_options: LoadOptions,
    warnings: list[str],
    force: bool,
    progress: ProgressFn | None,
) -> None:
    import torch

    from pinit.formats import torch_load

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


def _patch_torch_zip(
    ckpt: Checkpoint,
    src_fd: FileRef,
    values: Values,
    target: str,
    backup: bool,
    warnings: list[str],
    force: bool = False,
    progress: ProgressFn | None = None,
) -> None:
    """Write a torch zip back at the storage level: copy the input file whole into the (atomic)
    output, write each new tensor's bytes into its storage record (scattered through its strides
    for a non-contiguous view), then fix the CRC-32 of each record changed.  The pickle and every
    other member stay byte for byte as they were (so ties, storage locations such as ``cuda:0``
    and non-tensor content are kept); ``torch.load`` is never called.  New values are taken one
    tensor at a time from a :class:`PendingValues`.  A remote input (``pinit.remote``) is
    checked the same way through ranged reads, then downloaded into the output and patched."""
    from pinit.formats import zip_patch

    infos = _zip_members(src_fd, ckpt.path)
    names = values.names if isinstance(values, PendingValues) else frozenset(values)
    by_name = {e.name: e for e in ckpt.tensors}
    lookup = zip_patch.ZipPatcher(src_fd, infos=infos)
    records = {e.name: _record_of(e, src_fd, lookup, ckpt.path) for e in ckpt.tensors if e.name in names}
    size = size_of(src_fd)
    total = progress_write_bytes(ckpt, names, target)  # as the torch.save path counts: the tensor data
    with atomic_file(target, backup, force=force, warnings=warnings) as fd:
        copier = _Copier(src_fd, fd, size, _scaled_progress(progress, total, size))
        copier.start()  # the kernel copies while the first new values are computed (import torch)
        try:
            patcher = zip_patch.ZipPatcher(fd, end=size, infos=infos)  # the copy's size, as it ends
            changed: dict[int, Any] = {}
            items = values.produce() if isinstance(values, PendingValues) else (((n,), v) for n, v in values.items())
            for view_names, data in items:
                copier.wait()  # new bytes go over the copied ones
                entry = by_name[view_names[0]]
                info = records[entry.name]
                _write_view(patcher, fd, info, entry, data)
                changed[id(info)] = info
                del data  # one new tensor in memory at a time
            copier.wait()
            for info in changed.values():
                patcher.fix_crc(info)
        finally:
            copier.stop()


class _Copier:
    """Copy a whole file in a second thread (kernel-side, ``zip_patch.copy_file``; a remote file
    by its ranged reads, read ahead), starting its write-back as it goes and flushing it at the
    end, so the final fsync has only the patches left."""

    def __init__(self, src_fd: FileRef, dst_fd: int, size: int, progress: ProgressFn | None) -> None:
        import threading

        self.src_fd, self.dst_fd, self.size, self.progress = src_fd, dst_fd, size, progress
        self._stop = threading.Event()
        self._failed: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="pinit-copy", daemon=True)
        self._joined = False

    def _run(self) -> None:
        from pinit.formats import zip_patch
        from pinit.writers import start_writeback

        try:
            done = 0
            src = self.src_fd
            buf = None if isinstance(src, int) else memoryview(bytearray(REMOTE_COPY_CHUNK))
            while done < self.size and not self._stop.is_set():
                if isinstance(src, int):
                    n = min(zip_patch.COPY_CHUNK, self.size - done)
                    zip_patch.copy_file(src, self.dst_fd, n, src_offset=done, dst_offset=done)
                else:
                    assert buf is not None
                    n = min(len(buf), self.size - done)
                    src.read_data(done, buf[:n], self.size)
                    pwrite_all(self.dst_fd, buf[:n], done)
                start_writeback(self.dst_fd, done, n)
                done += n
                if self.progress is not None:
                    self.progress(n)
            if not isinstance(src, int) and not self._stop.is_set():
                src.check_unchanged()
            if not self._stop.is_set():
                getattr(os, "fdatasync", os.fsync)(self.dst_fd)
        except BaseException as e:
            self._failed.append(e)

    def start(self) -> None:
        self._thread.start()

    def wait(self) -> None:
        """Wait for the copy to end; raise what made it fail."""
        if not self._joined:
            self._thread.join()
            self._joined = True
        if self._failed:
            raise self._failed[0]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._joined = True


def _zip_members(fd: FileRef, path: str) -> list[Any]:
    import zipfile

    try:
        with reopen(fd) as f, zipfile.ZipFile(f) as zf:
            return zf.infolist()
    except Exception as e:  # BadZipFile, OSError: the file changed since it was read
        raise PinitError(f"not a readable zip archive ({e})", path) from None


def _record_of(entry: TensorEntry, src_fd: FileRef, lookup: Any, path: str) -> Any:
    """The STORED zip member holding ``entry``'s storage, alone in its bytes; a PinitError otherwise."""
    import zipfile

    storage = entry.storage
    if isinstance(storage, StreamStorage):
        raise PinitError(
            f"tensor '{entry.name}' is in a compressed zip record: pinit rewrites a torch zip record by record "
            "and can rewrite only stored (uncompressed) records, as torch.save writes them",
            path,
        )
    # the file the storage's bytes are in: a descriptor, or a remote file (pinit.remote.RangeStorage)
    where = storage.fd if isinstance(storage, FileStorage) else getattr(storage, "rf", None)
    info = lookup.member_at(storage.offset) if where is not None and where == src_fd else None
    if info is None:
        raise PinitError(f"tensor '{entry.name}' is not in a record of the zip archive pinit can rewrite", path)
    if info.compress_type != zipfile.ZIP_STORED:
        raise PinitError(f"tensor '{entry.name}' is in a compressed zip record ({info.filename})", path)
    shared = lookup.sharing(info)
    if shared:
        raise PinitError(
            f"zip archive refused as hostile: the record of tensor '{entry.name}' ({info.filename}) overlaps "
            f"{', '.join(shared[:3])}",
            path,
        )
    return info


def _write_view(patcher: Any, fd: int, info: Any, entry: TensorEntry, data: np.ndarray) -> None:
    """Write ``data`` (``entry``'s new bytes, row-major) into its storage record: in one piece for
    a contiguous view, else scattered through its strides within the view's storage span."""
    raw = np.asarray(data, dtype=np.uint8).reshape(-1)
    if raw.size != entry.nbytes:
        raise ValueError(f"{entry.name}: {raw.size} new bytes for a tensor of {entry.nbytes}")
    if entry.numel == 0:
        return
    item = entry.dt.itemsize
    if entry.is_contiguous:
        patcher.write(info, [(entry.offset * item, raw)])
        return
    from pinit.grouping import byte_span

    lo, hi = byte_span(entry)
    start, _length = patcher.record_span(info)
    buf = np.empty(hi - lo, dtype=np.uint8)
    mv = memoryview(buf)
    done = 0
    while done < buf.size:
        got = os.preadv(fd, [mv[done:]], start + lo + done)
        if got <= 0:
            raise PinitError("output file ended inside a zip record")
        done += got
    kind = np.dtype(f"V{item}") if item > 1 else np.dtype(np.uint8)
    strides = entry.strides if entry.strides is not None else contiguous_strides(entry.shape)
    view = np.lib.stride_tricks.as_strided(
        buf.view(kind), shape=entry.shape, strides=tuple(s * item for s in strides), writeable=True
    )
    view[...] = raw.view(kind).reshape(entry.shape)
    patcher.write(info, [(lo, buf)])


def _scaled_progress(progress: ProgressFn | None, total: int, size: int) -> ProgressFn | None:
    """``progress`` for copying ``size`` bytes, reporting ``total`` in all, in proportion."""
    if progress is None:
        return None
    report = progress
    state = [0, 0]  # bytes copied, bytes reported

    def advance(n: int) -> None:
        state[0] += n
        now = total * state[0] // size if size else total
        if now > state[1]:
            report(now - state[1])
            state[1] = now

    return advance


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
    for shard in _shards(ckpt):
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
