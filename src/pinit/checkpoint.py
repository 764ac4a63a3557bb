"""Open any checkpoint pinit understands and list its tensors.

``open_checkpoint(path)`` recognises the format by content (SPEC section 1):
safetensors, torch zip, legacy torch pickle, a Hugging Face sharded folder or
index file, or a folder holding exactly one checkpoint file.  It reads headers
and pickles only; tensor data is read later, chunk by chunk, through the
entries' storages.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pinit.errors import PinitError
from pinit.files import MAX_INDEX_BYTES, FileRef, close_ref, is_url, open_regular, pread, read_regular, size_of
from pinit.flatten import flatten, hidden_tensors
from pinit.formats import safetensors as st
from pinit.formats import torch_zip
from pinit.formats.pickle_safety import DEFAULT_ALLOWED_GLOBALS, parse_global
from pinit.storage import TensorEntry

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".tar")
INDEX_SUFFIXES = (".safetensors.index.json", ".bin.index.json")

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = 0x80


@dataclass(frozen=True)
class LoadOptions:
    allow_globals: tuple[str, ...] = ()
    unsafe_pickle: bool = False

    def __post_init__(self) -> None:
        for g in self.allow_globals:  # a bad --allow-global is bad usage, before any file is read
            parse_global(g)

    @property
    def allowed(self) -> frozenset[str]:
        return frozenset(DEFAULT_ALLOWED_GLOBALS) | frozenset(parse_global(g) for g in self.allow_globals)


@dataclass
class Coverage:
    """What pinit read of what it found (SPEC section 1, "never pass what was not read").

    ``uninterpreted`` names each place that holds tensors pinit did not read: an object it does
    not interpret (a placeholder for an allowed global, a tensor kept as a plain attribute of a
    module), or an archive it cannot interpret (a quantized TorchScript model).
    """

    tensors_found: int
    tensors_read: int
    uninterpreted: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.tensors_read > 0 and not self.uninterpreted

    def problem(self) -> str | None:
        """One sentence on what was not read, or None when every tensor found was read."""
        if self.uninterpreted:
            shown = "; ".join(self.uninterpreted[:5]) + (
                f"; and {len(self.uninterpreted) - 5} more" if len(self.uninterpreted) > 5 else ""
            )
            return (
                f"{self.tensors_found - self.tensors_read} of {self.tensors_found} tensors found were not read "
                f"(content pinit does not interpret: {shown})"
            )
        if self.tensors_read == 0:
            return "no tensor found in the file"
        return None

    def as_json(self) -> dict[str, Any]:
        return {
            "tensors_found": self.tensors_found,
            "tensors_read": self.tensors_read,
            "uninterpreted": list(self.uninterpreted),
        }

    @classmethod
    def of_tree(cls, tree: Any, is_tensor: Any, read: int) -> Coverage:
        hidden = hidden_tensors(tree, is_tensor)
        return cls(read + sum(h.tensors for h in hidden), read, [h.describe() for h in hidden])


class Source:
    """What one format needs to read an opened checkpoint, and later to write it back.

    Every format has its own subclass, held by :attr:`Checkpoint.source`; the generic code
    (statistics, flags, inspect, check, diff) sees only ``Checkpoint.tensors``. ``tree`` is the
    non-tensor content of formats that have an object tree (torch pickles), ``is_tensor`` tells
    its tensor leaves, ``files`` lists the files read and ``close`` releases them.
    """

    tree: Any = None

    def is_tensor(self, x: Any) -> bool:
        return False

    def files(self) -> list[str]:
        return []

    def close(self) -> None:
        pass

    def torch_layout(self, tensors: Mapping[str, Any]) -> tuple[Any, list[str]]:
        """What a ``.pt`` converted from this checkpoint holds, given a stand-in per tensor name
        (pickled as that tensor), and the names of the content it leaves out. Here the flat
        ``{name: tensor}`` dict that ``torch.save(load_file(...))`` writes; a format with
        non-tensor content of its own (DCP) lays it out as torch's converter does."""
        return dict(tensors), []


class FileSource(Source):
    """A single open file (the base of the file formats)."""

    def __init__(self, path: str, fd: FileRef) -> None:
        self.path, self.fd = path, fd

    def files(self) -> list[str]:
        return [self.path]

    def close(self) -> None:
        close_ref(self.fd)  # a descriptor, or a remote file (pinit.remote.RemoteFile)
        self.fd = -1


class SafetensorsSource(FileSource):
    def __init__(self, path: str, fd: int, metadata: dict[str, str] | None) -> None:
        super().__init__(path, fd)
        self.metadata = metadata  # the header's __metadata__


class TorchZipSource(FileSource):
    """A torch zip read by pinit's restricted reader: an object tree of ``TensorRef`` leaves whose
    storages are the archive's records (so it can be written back record by record)."""

    def __init__(self, path: str, fd: int, tree: Any) -> None:
        super().__init__(path, fd)
        self.tree = tree

    def is_tensor(self, x: Any) -> bool:
        return isinstance(x, torch_zip.TensorRef)


class TorchLoadedSource(FileSource):
    """A torch pickle loaded by ``torch.load`` itself: a legacy (non-zip) pickle, tensor kinds
    pinit's reader does not model, or ``--unsafe-pickle``."""

    def __init__(self, path: str, fd: int, tree: Any, legacy: bool) -> None:
        super().__init__(path, fd)
        self.tree, self.legacy = tree, legacy

    def is_tensor(self, x: Any) -> bool:
        from pinit.formats.torch_load import is_torch_tensor

        return is_torch_tensor(x)


class ShardedSource(Source):
    """A Hugging Face sharded checkpoint: the index document and one checkpoint per shard."""

    def __init__(self, index: dict[str, Any], shards: list[Checkpoint]) -> None:
        self.index, self.shards = index, shards

    def files(self) -> list[str]:
        return [f for s in self.shards for f in s.source.files()]

    def close(self) -> None:
        for shard in self.shards:
            shard.close()


@dataclass
class Checkpoint:
    """The tensors of one checkpoint, in file order; ``source`` holds what only its format needs."""

    path: str
    format: str  # "safetensors" | "torch" | "sharded" | ... (the JSON "format")
    tensors: list[TensorEntry]
    source: Source = field(default_factory=Source)
    coverage: Coverage | None = None  # None: every tensor found was read (set by open_checkpoint)

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_checkpoint(path: str | os.PathLike[str], options: LoadOptions | None = None) -> Checkpoint:
    """Open ``path`` (file, folder or index) and list its tensors; errors are PinitError."""
    options = options or LoadOptions()
    text = os.fspath(path)
    try:
        ckpt = _open(text, options)
    except PinitError as e:
        if e.path is None:
            e.path = text
        raise
    if ckpt.coverage is None:
        ckpt.coverage = Coverage(len(ckpt.tensors), len(ckpt.tensors))
    return ckpt


def _open(path: str, options: LoadOptions) -> Checkpoint:
    if is_url(path):  # hf://, https://, s3://, gs:// (pinit.remote)
        from pinit.remote import open_remote

        return open_remote(path, options)
    p = Path(path)
    try:
        exists = p.exists()
    except OSError as e:  # a name too long, a symlink loop
        raise PinitError(f"cannot open: {e.strerror}", path) from None
    if not exists:
        raise PinitError("no such file or folder", path)
    if p.is_dir():
        return _open_folder(p, options)
    if p.name.endswith(".index.json"):
        return _open_sharded(p, options)
    if p.name == ".metadata":  # a torch.distributed.checkpoint folder named by its metadata file
        from pinit.formats import dcp

        if dcp.is_dcp_folder(p.parent):
            return dcp.open_dcp(p.parent, options, path)
    return _open_file(path, options)


def _open_folder(folder: Path, options: LoadOptions) -> Checkpoint:
    from pinit.formats import dcp  # a torch.distributed.checkpoint folder: .metadata and *.distcp

    if dcp.is_dcp_folder(folder):
        return dcp.open_dcp(folder, options, str(folder))
    # an index that is not a regular file (a FIFO) is still the folder's index: opening it says why
    indexes = sorted(f for f in folder.iterdir() if not f.is_dir() and f.name.endswith(INDEX_SUFFIXES))
    if len(indexes) == 1:
        return _open_sharded(indexes[0], options)
    if len(indexes) > 1:
        names = ", ".join(f.name for f in indexes)
        raise PinitError(f"folder holds several shard indexes ({names}); name the one to read", str(folder))
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.name.endswith(CHECKPOINT_SUFFIXES))
    if len(files) == 1:
        return _open_file(str(files[0]), options)
    if not files:
        raise PinitError("folder holds no checkpoint file or shard index", str(folder))
    raise PinitError(f"folder holds {len(files)} checkpoint files and no index; name one", str(folder))


def _open_file(path: str, options: LoadOptions) -> Checkpoint:
    if path.endswith(".distcp") and (Path(path).parent / ".metadata").is_file():
        raise PinitError(
            "one data file of a torch.distributed.checkpoint folder: pass the folder (or its .metadata)", path
        )
    return open_file_ref(path, open_regular(path, "checkpoint"), options)


def open_file_ref(path: str, fd: FileRef, options: LoadOptions) -> Checkpoint:
    """Read the checkpoint file open as ``fd`` (a descriptor or a remote file), which it then owns."""
    try:
        size = size_of(fd)
        head = pread(fd, 16, 0)
        if size == 0:
            raise PinitError("empty file", path)
        # safetensors before pickle: a header length whose low byte is 0x80 looks like PROTO
        if head.startswith(ZIP_MAGIC):
            return _open_torch_zip(path, fd, options)
        if st.looks_like_safetensors(head, size):
            header = st.read_header(fd, size)
            source = SafetensorsSource(path, fd, header.metadata)
            return Checkpoint(path, "safetensors", st.entries(header, fd, path), source)
        if head[0] == PICKLE_PROTO:
            return _open_with_torch(path, fd, options, legacy=True)
        raise PinitError("not a checkpoint (neither safetensors, torch zip nor torch pickle)", path)
    except PinitError as e:
        close_ref(fd)
        if e.path is None:
            e.path = path
        raise
    except BaseException:
        close_ref(fd)
        raise


def _open_torch_zip(path: str, fd: int, options: LoadOptions) -> Checkpoint:
    if options.unsafe_pickle:
        return _open_with_torch(path, fd, options, legacy=False)
    try:
        zc = torch_zip.read_zip(path, fd, options.allowed)
        is_ref = lambda x: isinstance(x, torch_zip.TensorRef)  # noqa: E731
        leaves = flatten(zc.obj, is_ref)
        entries = torch_zip.to_entries(zc, leaves)
        coverage = Coverage.of_tree(zc.obj, is_ref, len(entries))
        if zc.uninterpreted:  # an archive whose pickles pinit cannot read: never reported as healthy
            coverage = Coverage(max(zc.storages, 1), 0, list(zc.uninterpreted))
        return Checkpoint(path, zc.format, entries, TorchZipSource(path, fd, zc.obj), coverage)
    except torch_zip.NeedsTorch:
        return _open_with_torch(path, fd, options, legacy=False)


def _open_with_torch(path: str, fd: FileRef, options: LoadOptions, legacy: bool) -> Checkpoint:
    from pinit.formats import torch_load

    if not isinstance(fd, int):  # torch.load reads a whole file: never done to a remote one
        why = "--unsafe-pickle" if options.unsafe_pickle else "a legacy torch pickle or tensors pinit does not model"
        raise PinitError(
            f"reading this remote checkpoint needs torch.load ({why}), which reads the whole file; download it"
        )

    obj = torch_load.torch_load(path, options.allowed, options.unsafe_pickle, mmap=not legacy)
    entries = torch_load.to_entries(obj)
    coverage = Coverage.of_tree(obj, torch_load.is_torch_tensor, len(entries))
    return Checkpoint(path, "torch", entries, TorchLoadedSource(path, fd, obj, legacy), coverage)


def _open_sharded(index_path: Path, options: LoadOptions) -> Checkpoint:
    folder = index_path.parent.resolve()
    raw = read_regular(str(index_path), MAX_INDEX_BYTES, "shard index")
    return open_shards(
        raw, str(index_path), lambda name: _open_file(str(_shard_path(folder, name, index_path)), options)
    )


def open_shards(raw: bytes, index_path: str, open_shard: Callable[[str], Checkpoint]) -> Checkpoint:
    """The sharded checkpoint of the index document ``raw``, each shard opened by ``open_shard(name)``."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, nesting, a 5000-digit integer
        raise PinitError(f"shard index is not valid JSON ({e})", str(index_path)) from None
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise PinitError("shard index has no weight_map of tensor name to shard file", str(index_path))
    if not weight_map:
        raise PinitError("shard index lists no tensors (its weight_map is empty)", str(index_path))
    shard_names = list(dict.fromkeys(weight_map.values()))
    shards: list[Checkpoint] = []
    tensors: list[TensorEntry] = []
    owner: dict[str, str] = {}
    try:
        for name in shard_names:
            shard = open_shard(name)
            shards.append(shard)
            for entry in shard.tensors:
                if entry.name in owner:
                    raise PinitError(
                        f"tensor '{entry.name}' is in two shards ({owner[entry.name]} and {name})", str(index_path)
                    )
                owner[entry.name] = name
                entry.extra["shard"] = name
                entry.index = len(tensors)
                tensors.append(entry)
        for tname, shard_name in weight_map.items():
            if owner.get(tname) != shard_name:
                where = f"it is in {owner[tname]}" if tname in owner else "no shard holds it"
                raise PinitError(f"index puts tensor '{tname}' in {shard_name} but {where}", str(index_path))
    except BaseException:
        for s in shards:
            s.close()
        raise
    coverage = Coverage(0, 0)
    for shard, name in zip(shards, shard_names):
        c = shard.coverage or Coverage(len(shard.tensors), len(shard.tensors))
        coverage.tensors_found += c.tensors_found
        coverage.tensors_read += c.tensors_read
        coverage.uninterpreted += [f"{name}: {u}" for u in c.uninterpreted]
    return Checkpoint(str(index_path), "sharded", tensors, ShardedSource(doc, shards), coverage)


def _shard_path(folder: Path, name: str, index_path: Path) -> Path:
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or name != name.strip() or not name:
        raise PinitError(f"shard name '{name}' leaves the checkpoint folder", str(index_path))
    if "\0" in name:
        raise PinitError(f"shard name {name!r} is not a file name", str(index_path))
    try:
        full = (folder / rel).resolve()
        if not full.is_relative_to(folder):
            raise PinitError(f"shard '{name}' is a link that leaves the checkpoint folder", str(index_path))
        is_file = full.is_file()
    except (OSError, RuntimeError) as e:  # a name too long, a symlink loop (RuntimeError before 3.13)
        raise PinitError(f"shard '{name}' cannot be opened ({e})", str(index_path)) from None
    if not is_file:
        raise PinitError(f"shard '{name}' named in the index is missing", str(index_path))
    return full
