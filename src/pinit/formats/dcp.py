"""``torch.distributed.checkpoint`` (DCP) folders, as ``dcp.save`` and FSDP write them, read without torch.

A DCP folder holds ``.metadata`` (a pickle of ``torch.distributed.checkpoint.metadata.Metadata``)
and ``__<rank>_<n>.distcp`` files.  The metadata lists every tensor of the flat state dict
(``TensorStorageMetadata``: dtype, global size and the chunks it was saved in, each with its
offsets and sizes), every non-tensor value (``BytesStorageMetadata``) and, per item, where its
bytes are (``_StorageInfo``: file, offset, length).  With torch 2.13's default format every tensor
chunk is a whole ``torch.save`` zip archive embedded at that offset in the ``.distcp`` file.

Reading here:

* ``.metadata`` goes through :class:`MetadataUnpickler`, pinit's restricted unpickler admitting
  exactly DCP's metadata classes, as inert placeholders (torch itself reads it with a plain
  ``pickle.load``); any other global is refused as in any torch pickle.
* Each tensor becomes one :class:`~pinit.storage.TensorEntry` whose :class:`DcpStorage` maps a
  byte range of the row-major global tensor onto its chunks: a run of the global tensor that is
  contiguous in one chunk is one read from that chunk's storage record.  Chunks may split any
  dimension; they must tile the tensor exactly.  Each chunk's archive is parsed (its ``data.pkl``
  by the restricted unpickler, its record located by ``zip_layout``) only when first read.
* Non-tensor values are not unpickled: they are named (:attr:`DcpSource.non_tensor`).

Writing back in place (:func:`write_in_place`) scatters a new tensor's bytes into its chunks'
records, fixes each record's CRC-32 (``zip_patch``) and replaces each touched ``.distcp`` file
atomically; ``.metadata`` and every other file are untouched.

No torch here.
"""

from __future__ import annotations

import bisect
import io
import itertools
import math
import os
import pickle
import threading
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pinit import dtypes
from pinit.checkpoint import Checkpoint, LoadOptions, Source
from pinit.errors import PinitError
from pinit.files import close_ref, open_regular, read_regular
from pinit.flatten import iter_tensors
from pinit.formats import torch_zip, zip_layout
from pinit.storage import FileStorage, Storage, StreamStorage, TensorEntry, contiguous_strides

if TYPE_CHECKING:
    import numpy as np

METADATA_NAME = ".metadata"
DISTCP_SUFFIX = ".distcp"
MAX_METADATA_BYTES = torch_zip.MAX_PICKLE_BYTES
MAX_CHUNK_PICKLE_BYTES = 1 << 20  # a chunk's data.pkl holds one tensor: a few hundred bytes
MAX_GRID_CELLS = 1 << 22  # cells of the grid a tensor's chunk boundaries draw (tiling check and lookup)
_ZIP_MAGIC = b"PK\x03\x04"

# The classes torch 2.13 pickles in .metadata (and the older homes of some of them)
_META = "torch.distributed.checkpoint.metadata."
DCP_CLASSES = frozenset(
    {
        _META + "Metadata",
        _META + "TensorStorageMetadata",
        _META + "BytesStorageMetadata",
        _META + "ChunkStorageMetadata",
        _META + "TensorProperties",
        _META + "MetadataIndex",
        _META + "StorageMeta",
        "torch.distributed.checkpoint.filesystem._StorageInfo",
        "torch.distributed._shard.sharded_tensor.metadata.TensorProperties",
    }
)
# StorageMeta.checkpoint_id is the path the checkpoint was saved to
_PATH_GLOBALS = frozenset({"pathlib.Path", "pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.PurePosixPath"})


def _mem_format(value: Any) -> tuple[str, Any]:
    if not isinstance(value, int) or isinstance(value, bool):
        raise PinitError("invalid memory format in DCP metadata")
    return ("memory_format", value)


def _layout(name: Any) -> tuple[str, Any]:
    if not isinstance(name, str):
        raise PinitError("invalid layout in DCP metadata")
    return ("layout", name)


_DCP_FUNCS: dict[str, Any] = {
    _META + "_MEM_FORMAT_ENCODING": _mem_format,
    "torch.serialization._get_layout": _layout,
}
for _mf in ("contiguous_format", "channels_last", "channels_last_3d", "preserve_format"):
    _DCP_FUNCS[f"torch.{_mf}"] = ("memory_format", _mf)
for _lay in ("strided", "sparse_coo"):
    _DCP_FUNCS[f"torch.{_lay}"] = ("layout", _lay)


class DcpRecord(torch_zip.Opaque):
    """An inert stand-in for one of DCP's metadata dataclasses: it keeps the BUILD state only."""


class MetadataUnpickler(torch_zip.RestrictedUnpickler):
    """The restricted unpickler, admitting DCP's metadata classes as :class:`DcpRecord` placeholders
    (new classes for each file: nothing one file does reaches the next)."""

    def __init__(self, file: io.BufferedIOBase, allowed: frozenset[str]) -> None:
        super().__init__(file, allowed | _PATH_GLOBALS)
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        full = torch_zip.canonical_global(f"{module}.{name}")
        if full in DCP_CLASSES:
            cls = self._classes.get(full)
            if cls is None:
                cls = self._classes[full] = type(name, (DcpRecord,), {"_pinit_global": full})
            return cls
        if full in _DCP_FUNCS:
            return _DCP_FUNCS[full]
        return super().find_class(module, name)


def read_metadata(path: str, allowed: frozenset[str]) -> Any:
    """The unpickled ``.metadata`` (placeholders), or a PinitError (UnsafeGlobalError: refused globals)."""
    data = read_regular(path, MAX_METADATA_BYTES, "DCP metadata")
    with torch_zip._pickle_errors():
        return MetadataUnpickler(io.BytesIO(data), allowed).load()


# ---------------------------------------------------------------------------- metadata as data


def _kind(obj: Any) -> str:
    return getattr(type(obj), "_pinit_global", "").rpartition(".")[2] if isinstance(obj, DcpRecord) else ""


def _state(obj: Any, kind: str, what: str) -> dict[str, Any]:
    if _kind(obj) != kind:
        raise PinitError(f"DCP metadata: {what} is not a {kind} ({type(obj).__name__})")
    st = obj.__dict__.get("_state")
    if st is None:
        st = {}
    if isinstance(st, tuple) and len(st) == 2 and isinstance(st[1], dict) and st[0] is None:
        st = st[1]  # (None, slots) state of a slotted dataclass
    if not isinstance(st, dict):
        raise PinitError(f"DCP metadata: {what} has an unexpected state")
    return st


def _ints(v: Any, what: str) -> tuple[int, ...]:
    if not isinstance(v, (tuple, list)) or not all(torch_zip._is_int64(x) and x >= 0 for x in v):
        raise PinitError(f"DCP metadata: invalid {what} {v!r:.120}")
    return tuple(v)


def _dtype_of(props: Any, name: str) -> tuple[str, bool | None]:
    if _kind(props) != "TensorProperties":
        raise PinitError(f"DCP metadata: tensor '{name}' has no tensor properties")
    st = props.__dict__.get("_state")
    if isinstance(st, tuple) and st:  # torch 2.x __getstate__: (dtype, layout, requires_grad, memory_format, pin)
        dt, requires_grad = st[0], (st[2] if len(st) > 2 else None)
    elif isinstance(st, dict):
        dt, requires_grad = st.get("dtype"), st.get("requires_grad")
    else:
        raise PinitError(f"DCP metadata: tensor '{name}' has unreadable tensor properties")
    if not isinstance(dt, torch_zip._Marker) or dt.name != "dtype":
        raise PinitError(f"DCP metadata: tensor '{name}' has no dtype")
    if dt.value not in dtypes.BY_NAME:
        raise PinitError(f"tensor '{name}' has dtype {dt.value}, which pinit does not read")
    return dt.value, (True if requires_grad is True else None)


@dataclass(frozen=True)
class Item:
    """Where one saved item's bytes are: ``length`` bytes at ``offset`` in ``file`` (relative)."""

    file: str
    offset: int
    length: int


@dataclass
class Chunk:
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    item: Item


@dataclass
class TensorMeta:
    name: str
    dtype: str
    shape: tuple[int, ...]
    requires_grad: bool | None
    chunks: list[Chunk]


def _storage_items(md: dict[str, Any]) -> dict[tuple[str, tuple[int, ...] | None], Item]:
    raw = md.get("storage_data")
    if not isinstance(raw, dict):
        raise PinitError("DCP metadata has no storage_data (where each item is stored)")
    out: dict[tuple[str, tuple[int, ...] | None], Item] = {}
    for key, info in raw.items():
        k = _state(key, "MetadataIndex", "a storage_data key")
        fqn = k.get("fqn")
        if not isinstance(fqn, str):
            raise PinitError("DCP metadata: a storage_data key has no name")
        off = k.get("offset")
        offset = None if off is None else _ints(off, f"offset of '{fqn}'")
        s = _state(info, "_StorageInfo", f"the storage of '{fqn}'")
        rel, at, length = s.get("relative_path"), s.get("offset"), s.get("length")
        if not isinstance(rel, str) or not torch_zip._is_int64(at) or not torch_zip._is_int64(length):
            raise PinitError(f"DCP metadata: invalid storage entry for '{fqn}'")
        if s.get("transform_descriptors"):
            shown = ", ".join(str(t)[:60] for t in s["transform_descriptors"])
            raise PinitError(
                f"'{fqn}' is stored through DCP extensions ({shown}, e.g. compression) that pinit does not read"
            )
        out[(fqn, offset)] = Item(rel, at, length)
    return out


ObjPath = tuple[str | int, ...]


def parse_metadata(obj: Any) -> tuple[list[TensorMeta], dict[str, Item | None], dict[str, ObjPath | None]]:
    """Tensors (in the metadata's order), non-tensor items and, for every item in the metadata's
    order, its object path (``planner_data``: where the flat name sits in the nested state dict;
    None for a name saved unflattened) of an unpickled ``.metadata``."""
    md = _state(obj, "Metadata", "the .metadata pickle")
    sdm = md.get("state_dict_metadata")
    if not isinstance(sdm, dict):
        raise PinitError("DCP metadata has no state_dict_metadata")
    known = _object_paths(md.get("planner_data"), len(sdm))
    paths = {name: known.get(name) for name in sdm}
    items = _storage_items(md)
    tensors: list[TensorMeta] = []
    others: dict[str, Item | None] = {}
    for name, entry in sdm.items():
        if not isinstance(name, str):
            raise PinitError(f"DCP metadata: an item name is not a string ({name!r:.80})")
        kind = _kind(entry)
        if kind == "BytesStorageMetadata":
            others[name] = items.get((name, None))
            continue
        st = _state(entry, "TensorStorageMetadata", f"item '{name}'")
        dtype, requires_grad = _dtype_of(st.get("properties"), name)
        shape = _ints(st.get("size"), f"size of tensor '{name}'")
        raw_chunks = st.get("chunks")
        if not isinstance(raw_chunks, list):
            raise PinitError(f"DCP metadata: tensor '{name}' has no chunk list")
        chunks = []
        for c in raw_chunks:
            cs = _state(c, "ChunkStorageMetadata", f"a chunk of '{name}'")
            offsets = _ints(cs.get("offsets"), f"chunk offsets of '{name}'")
            sizes = _ints(cs.get("sizes"), f"chunk sizes of '{name}'")
            item = items.get((name, offsets))
            if item is None:
                raise PinitError(f"tensor '{name}': the chunk at offsets {list(offsets)} is stored nowhere")
            chunks.append(Chunk(offsets, sizes, item))
        tensors.append(TensorMeta(name, dtype, shape, requires_grad, chunks))
    return tensors, others, paths


MAX_LIST_SLACK = 1 << 16  # list indexes in object paths beyond the item count plus this are refused


def _object_paths(planner_data: Any, n_items: int) -> dict[str, ObjPath]:
    """DCP's ``planner_data`` (flat name -> path of str keys and int list indexes), checked: a
    list index is bounded by the number of items (a hostile index would build a huge list)."""
    if not isinstance(planner_data, dict):
        return {}  # saved without flattening: the names are the state dict's own keys
    paths: dict[str, ObjPath] = {}
    for name, path in planner_data.items():
        ok = isinstance(name, str) and isinstance(path, (tuple, list)) and len(path) > 0
        if not ok or not all(_path_part(p, n_items) for p in path):
            raise PinitError(f"DCP metadata: invalid object path {path!r:.120} for {name!r:.80}")
        paths[name] = tuple(path)
    return paths


def _path_part(part: Any, n_items: int) -> bool:
    if isinstance(part, str):
        return True
    return isinstance(part, int) and not isinstance(part, bool) and 0 <= part <= n_items + MAX_LIST_SLACK


def set_element(root: dict[str, Any], path: ObjPath, value: Any, budget: list[int] | None = None) -> None:
    """Put ``value`` at ``path`` in a nested state dict, building dicts (for str keys) and lists
    (for int indexes, padded with None) on the way: ``torch.distributed.checkpoint``'s
    ``set_element``, which ``dcp_to_torch_save`` rebuilds the state dict with.  Paths that
    contradict each other (a key below a value, a str key into a list, two items at one place,
    where torch would keep the last one) are a PinitError.  ``budget``: how many list slots may
    still be padded with None, over all the calls sharing it (each path's indexes are bounded,
    but many deep paths together must not build huge lists either)."""

    def extend(lst: list[Any], i: int) -> None:
        if i >= len(lst):
            if budget is not None:
                budget[0] -= i + 1 - len(lst)
                if budget[0] < 0:
                    raise PinitError("DCP metadata: the object paths' list indexes leave too many gaps")
            lst.extend([None] * (i + 1 - len(lst)))

    cur: Any = root
    try:
        for prev, key in itertools.pairwise(path):
            default: Any = {} if isinstance(key, str) else []
            if isinstance(cur, dict):
                cur = cur.setdefault(prev, default)
            elif isinstance(cur, list) and isinstance(prev, int):
                extend(cur, prev)
                if cur[prev] is None:
                    cur[prev] = default
                cur = cur[prev]
            else:
                raise TypeError
        key = path[-1]
        if isinstance(cur, list) and isinstance(key, int):
            extend(cur, key)
            taken = cur[key] is not None
        elif isinstance(cur, dict):
            taken = key in cur
        else:
            raise TypeError
        if taken:  # torch would overwrite one item with the other: refuse instead
            raise TypeError
        cur[key] = value
    except (TypeError, IndexError):
        raise PinitError(f"DCP metadata: the object path {list(path)!r:.120} contradicts another item's") from None


# ---------------------------------------------------------------------------- the chunk grid


class ChunkGrid:
    """Which chunk holds each element of a tensor: the grid drawn by the chunks' boundaries, each
    cell owned by exactly one chunk (built only for layouts that tile the tensor exactly)."""

    def __init__(self, name: str, shape: tuple[int, ...], chunks: Sequence[tuple[tuple[int, ...], tuple[int, ...]]]):
        import numpy as np

        self.shape = shape
        rank = len(shape)
        live = []
        for i, (o, s) in enumerate(chunks):
            if len(o) != rank or len(s) != rank:
                raise PinitError(f"tensor '{name}': chunk {i} has {len(o)} offsets for {rank} dimensions")
            if any(a + n > dim for a, n, dim in zip(o, s, shape)):
                raise PinitError(
                    f"tensor '{name}': chunk {i} (offsets {list(o)}, sizes {list(s)}) is outside the tensor"
                )
            if math.prod(s) > 0:
                live.append(i)
        numel = math.prod(shape)
        if numel == 0:
            self.bounds: list[list[int]] = []
            self.owner = np.zeros(0, dtype=np.int32)
            return
        self.bounds = [
            sorted({0, dim, *(chunks[i][0][d] for i in live), *(chunks[i][0][d] + chunks[i][1][d] for i in live)})
            for d, dim in enumerate(shape)
        ]
        cells = math.prod(len(b) - 1 for b in self.bounds)
        if cells > MAX_GRID_CELLS:
            raise PinitError(f"tensor '{name}': its {len(chunks)} chunks cut it into too many pieces to read")
        owner = np.full(tuple(len(b) - 1 for b in self.bounds), -1, dtype=np.int32)
        for i in live:
            o, s = chunks[i]
            sl = tuple(
                slice(bisect.bisect_left(b, a), bisect.bisect_left(b, a + n)) for b, a, n in zip(self.bounds, o, s)
            )
            block = owner[sl] if sl else owner[...]
            if (block >= 0).any():
                j = int(block[block >= 0].flat[0])
                raise PinitError(
                    f"tensor '{name}': chunks {j} and {i} overlap (offsets {list(chunks[j][0])} and {list(o)})"
                )
            block[...] = i
        if (owner < 0).any():
            cell = np.argwhere(owner < 0)[0]
            at = [b[c] for b, c in zip(self.bounds, cell)]
            raise PinitError(f"tensor '{name}': its chunks do not cover it (no chunk holds the element at {at})")
        self.owner = owner

    def find(self, index: Sequence[int]) -> int:
        cell = tuple(bisect.bisect_right(b, i) - 1 for b, i in zip(self.bounds, index))
        return int(self.owner[cell])


# ---------------------------------------------------------------------------- chunk data


class _Window(io.RawIOBase):
    """``length`` bytes at ``base`` of an open file, as a seekable file (for ``zipfile``)."""

    def __init__(self, fd: int, base: int, length: int) -> None:
        self.fd, self.base, self.length, self.pos = fd, base, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else self.pos + pos if whence == 1 else self.length + pos
        self.pos = max(0, self.pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b: Any) -> int:
        n = max(0, min(len(b), self.length - self.pos))
        if n == 0:
            return 0
        data = os.pread(self.fd, n, self.base + self.pos)
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)


@dataclass
class ChunkData:
    """One chunk's bytes: the storage record of the ``torch.save`` archive in its ``.distcp`` file,
    and the chunk tensor's view of it (offset and strides, in elements)."""

    storage: Storage
    offset: int
    strides: tuple[int, ...]
    contiguous: bool
    info: zipfile.ZipInfo
    base: int
    end: int


@dataclass
class DcpFile:
    path: str
    fd: int
    size: int


def embedded_save(fd: int, base: int, length: int, allowed: frozenset[str]) -> tuple[Any, Any]:
    """The layout and the unpickled ``data.pkl`` (restricted reader) of the ``torch.save`` archive
    written at ``base`` in a ``.distcp`` file: a tensor chunk, or a non-tensor value."""
    end = base + length
    if os.pread(fd, 4, base) != _ZIP_MAGIC:
        raise PinitError("not a torch.save archive (only DCP's default torch_save format is read)")
    try:
        with zipfile.ZipFile(_Window(fd, base, length)) as zf:
            infos, start_dir = zf.infolist(), zf.start_dir
    except Exception as e:  # BadZipFile, OSError, bad names
        raise PinitError(f"not a readable zip archive ({e})") from None
    layout = zip_layout.torch_layout(fd, infos, start_dir, base, end)
    pkl = layout.find("data.pkl")
    if pkl is None:
        raise PinitError("no data.pkl")
    if layout.byteorder != "little":
        raise PinitError(f"big-endian chunks are not supported (byteorder '{layout.byteorder}')")
    raw = zip_layout.read_record(fd, pkl, MAX_CHUNK_PICKLE_BYTES, end, base)
    return layout, torch_zip.unpickle(raw, allowed)


MAX_VALUE_BYTES = 1 << 20  # non-tensor values shown as data (inspect --meta, report) up to this size


class DcpStorage(Storage):
    """The row-major bytes of one tensor of a DCP checkpoint, assembled from its chunks."""

    def __init__(self, meta: TensorMeta, files: Mapping[str, DcpFile], key: Any, allowed: frozenset[str]) -> None:
        self.meta = meta
        self.files = files
        self.key = key
        self.allowed = allowed
        self.item = dtypes.get(meta.dtype).itemsize
        self.nbytes = math.prod(meta.shape) * self.item
        self.grid = ChunkGrid(meta.name, meta.shape, [(c.offsets, c.sizes) for c in meta.chunks])
        shape = meta.shape
        self.gstrides = contiguous_strides(shape)
        # per chunk: t (its dimensions from t on are whole) and the elements below one index of t-1
        self._tail: list[tuple[int, int, tuple[int, ...]]] = []
        for c in meta.chunks:
            t = len(shape)
            while t > 0 and c.sizes[t - 1] == shape[t - 1]:
                t -= 1
            self._tail.append((t, math.prod(shape[t:]), contiguous_strides(c.sizes)))
        self._data: list[ChunkData | None] = [None] * len(meta.chunks)
        self._lock = threading.Lock()

    # -- chunks, parsed when first read
    def chunk(self, i: int) -> ChunkData:
        data = self._data[i]
        if data is None:
            with self._lock:
                data = self._data[i]
                if data is None:
                    data = self._data[i] = self._load(i)
        return data

    def _load(self, i: int) -> ChunkData:
        c = self.meta.chunks[i]
        f = self.files[c.item.file]
        name = self.meta.name
        where = f"tensor '{name}', chunk at offsets {list(c.offsets)} in {c.item.file}"
        base, end = c.item.offset, c.item.offset + c.item.length
        try:
            layout, ref = embedded_save(f.fd, base, c.item.length, self.allowed)
            if not isinstance(ref, torch_zip.TensorRef):
                raise PinitError("its archive holds no single tensor")
            if ref.dtype != self.meta.dtype:
                raise PinitError(f"its dtype is {ref.dtype}, not the {self.meta.dtype} the metadata gives")
            if ref.shape != c.sizes:
                raise PinitError(f"its shape is {list(ref.shape)}, not the {list(c.sizes)} the metadata gives")
            if len(ref.strides) != len(ref.shape) or any(s < 0 for s in ref.strides):
                raise PinitError("it has invalid strides")
            info = layout.find(f"data/{ref.storage.key}")
            if info is None:
                raise PinitError(f"its storage '{ref.storage.key}' is missing from the archive")
            nbytes = ref.storage.numel * (dtypes.get(ref.storage.dtype).itemsize if ref.storage.dtype else 1)
            if nbytes > info.file_size:
                raise PinitError(f"its storage claims {nbytes} bytes but the record holds {info.file_size}")
            start = zip_layout.data_offset(f.fd, info, end, base)
            key = (f.path, base, ref.storage.key)
            storage: Storage
            if info.compress_type == zipfile.ZIP_STORED:
                storage = FileStorage(f.fd, start, nbytes, key, f.path)
            else:
                if nbytes != info.file_size:
                    raise PinitError("its compressed storage record has another size than the storage")
                fd = f.fd
                storage = StreamStorage(lambda: zip_layout.InflatedReader(fd, info, start), nbytes, key)
            view = TensorEntry(name, ref.dtype, ref.shape, storage, ref.offset, ref.strides)
            view.validate()
            return ChunkData(storage, ref.offset, ref.strides, view.is_contiguous, info, base, end)
        except torch_zip.NeedsTorch as e:
            raise PinitError(f"{where}: a tensor kind pinit does not read ({e})", f.path) from None
        except PinitError as e:
            raise PinitError(f"{where}: {e.message}", f.path) from None

    # -- Storage
    def read_into(self, start: int, out: np.ndarray) -> None:
        import numpy as np

        stop = start + out.size
        if start < 0 or stop > self.nbytes:
            raise PinitError(f"read outside tensor '{self.meta.name}'")
        k = self.item
        shape = self.meta.shape
        pos = start
        while pos < stop:
            e, r = divmod(pos, k)
            idx = []
            rest = e
            for g in self.gstrides:
                q, rest = divmod(rest, g)
                idx.append(q)
            ci = self.grid.find(idx)
            c = self.meta.chunks[ci]
            t, inner, cstrides = self._tail[ci]
            if t == 0:
                local, run = e, math.prod(shape) - e
            else:
                below = e % inner
                local = sum((idx[j] - c.offsets[j]) * cstrides[j] for j in range(t)) + below
                run = (c.offsets[t - 1] + c.sizes[t - 1] - idx[t - 1]) * inner - below
            n = min(run * k - r, stop - pos)
            dst = out[pos - start : pos - start + n]
            data = self.chunk(ci)
            if data.contiguous:
                data.storage.read_into(data.offset * k + local * k + r, dst)
            else:
                first, last = local, local + (r + n + k - 1) // k
                elems = np.empty((last - first) * k, dtype=np.uint8)
                _gather(self.meta, c.sizes, data, first, last, elems)
                dst[:] = elems[r : r + n]
            pos += n


def _boxes(shape: Sequence[int], a: int, b: int) -> Iterator[tuple[tuple[int, ...], int, int, int]]:
    """The row-major element range ``[a, b)`` of ``shape`` as boxes ``(leading indices, dim, lo, hi)``:
    the leading dimensions fixed, ``dim`` from lo to hi, the dimensions after it whole."""

    def walk(prefix: tuple[int, ...], d: int, a: int, b: int) -> Iterator[tuple[tuple[int, ...], int, int, int]]:
        if a >= b:
            return
        inner = math.prod(shape[d + 1 :])
        i0, r0 = divmod(a, inner)
        i1, r1 = divmod(b, inner)
        if i0 == i1:
            yield from walk((*prefix, i0), d + 1, r0, r1)
            return
        if r0:
            yield from walk((*prefix, i0), d + 1, r0, inner)
            i0 += 1
        if i1 > i0:
            yield prefix, d, i0, i1
        if r1:
            yield from walk((*prefix, i1), d + 1, 0, r1)

    if not shape:
        yield (), -1, 0, 1
        return
    yield from walk((), 0, a, b)


def _gather(meta: TensorMeta, sizes: tuple[int, ...], data: ChunkData, a: int, b: int, out: np.ndarray) -> None:
    """Elements ``[a, b)`` (row-major within the chunk) of a chunk stored with other strides."""
    k = dtypes.get(meta.dtype).itemsize
    done = 0
    for prefix, d, lo, hi in _boxes(sizes, a, b):
        if d < 0:  # a 0-d chunk
            shape: tuple[int, ...] = ()
            strides: tuple[int, ...] = ()
            off = data.offset
        else:
            shape = (hi - lo, *sizes[d + 1 :])
            strides = data.strides[d:]
            off = data.offset + sum(i * s for i, s in zip(prefix, data.strides)) + lo * data.strides[d]
        part = TensorEntry(meta.name, meta.dtype, shape, data.storage, off, strides).read_bytes()
        out[done : done + part.size] = part
        done += part.size
    assert done == (b - a) * k


# ---------------------------------------------------------------------------- the checkpoint


class _TensorLeaf:
    """A tensor of the flat DCP state dict, as a leaf of :attr:`DcpSource.tree`."""

    __slots__ = ("dtype", "name", "shape")

    def __init__(self, name: str, dtype: str, shape: tuple[int, ...]) -> None:
        self.name, self.dtype, self.shape = name, dtype, shape

    def __repr__(self) -> str:
        return f"<tensor {self.name}>"


class NonTensorItem:
    """A non-tensor value of the state dict (pickled bytes in a ``.distcp`` file; never unpickled)."""

    __slots__ = ("item", "name")

    def __init__(self, name: str, item: Item | None) -> None:
        self.name, self.item = name, item

    def __repr__(self) -> str:
        size = f", {self.item.length} bytes" if self.item else ""
        return f"<non-tensor DCP item{size}, not unpickled>"


class DcpSource(Source):
    """A DCP folder: the parsed metadata, the open ``.distcp`` files and each tensor's storage.

    ``tree`` is the flat state dict, name by name: tensor leaves and non-tensor placeholders,
    so that the generic code can name the non-tensor content (dropped when converting)."""

    def __init__(self, folder: Path, metadata_path: str, files: dict[str, DcpFile]) -> None:
        self.folder = folder
        self.metadata_path = metadata_path
        self.dcp_files = files
        self.storages: dict[str, DcpStorage] = {}
        self.non_tensor: list[str] = []  # names of the non-tensor values, in the metadata's order
        self.non_tensor_items: dict[str, Item | None] = {}
        self.tree: dict[str, Any] = {}
        # every item's place in the nested state dict (planner_data), in the metadata's order
        self.paths: dict[str, ObjPath | None] = {}

    def is_tensor(self, x: Any) -> bool:
        return isinstance(x, _TensorLeaf)

    def torch_layout(self, tensors: Mapping[str, Any]) -> tuple[Any, list[str]]:
        """The nested state dict ``dcp_to_torch_save`` writes: every item at its object path,
        ``tensors[name]`` for the tensors, the non-tensor values as read (as data); a value pinit
        does not unpickle (big, holding a tensor, or refused) is left out and named."""
        from pinit.formats.torch_zip_write import state_dict_pickle

        root: dict[str, Any] = {}
        dropped: list[str] = []
        budget = [len(self.paths) + MAX_LIST_SLACK]  # list slots all items together may pad
        for name, path in self.paths.items():
            value = self.tree[name]
            if isinstance(value, _TensorLeaf):
                value = tensors[name]
            elif isinstance(value, NonTensorItem):
                dropped.append(name)
                continue
            else:
                try:
                    state_dict_pickle(value)  # small (MAX_VALUE_BYTES): what cannot be written back is left out
                except (PinitError, pickle.PicklingError, TypeError, ValueError, RecursionError):
                    dropped.append(name)
                    continue
            try:
                set_element(root, (name,) if path is None else path, value, budget)
            except PinitError as e:
                e.path = e.path or self.metadata_path
                raise
        return root, dropped

    def files(self) -> list[str]:
        return [self.metadata_path, *(f.path for f in self.dcp_files.values())]

    def close(self) -> None:
        for f in self.dcp_files.values():
            close_ref(f.fd)
            f.fd = -1


def _value_of(name: str, item: Item | None, files: dict[str, DcpFile], allowed: frozenset[str]) -> Any:
    """A non-tensor value (epoch, step, param_groups) as data, read by the restricted unpickler
    from its small ``torch.save`` archive; a placeholder when it is big, unreadable, holds a
    tensor or needs a global pinit does not admit (it is shown, never needed to read tensors)."""
    if item is None or item.length > MAX_VALUE_BYTES or item.file not in files:
        return NonTensorItem(name, item)
    try:
        _, value = embedded_save(files[item.file].fd, item.offset, item.length, allowed)
    except (PinitError, torch_zip.NeedsTorch):
        return NonTensorItem(name, item)
    try:
        holds_tensor = any(True for _ in iter_tensors(value, lambda x: isinstance(x, torch_zip.TensorRef)))
    except PinitError:
        return NonTensorItem(name, item)
    return NonTensorItem(name, item) if holds_tensor else value


def is_dcp_folder(folder: Path) -> bool:
    try:
        return (folder / METADATA_NAME).is_file() and any(
            p.name.endswith(DISTCP_SUFFIX) and p.is_file() for p in folder.iterdir()
        )
    except OSError:
        return False


def _item_path(folder: Path, rel: str, metadata_path: str) -> Path:
    p = Path(rel)
    if not rel or "\0" in rel or p.is_absolute() or ".." in p.parts:
        raise PinitError(f"DCP metadata names a file {rel!r:.200} outside the checkpoint folder", metadata_path)
    full = (folder / p).resolve()
    if not full.is_relative_to(folder):
        raise PinitError(f"'{rel}' is a link that leaves the checkpoint folder", metadata_path)
    if not full.exists():
        raise PinitError(f"file '{rel}' named in the DCP metadata is missing", metadata_path)
    return full


def open_dcp(folder: Path, options: LoadOptions, path: str | None = None) -> Checkpoint:
    """Open a DCP folder (``path``: as the user named it, the folder or its ``.metadata``)."""
    folder = folder.resolve()
    shown = path or str(folder)
    metadata_path = str(folder / METADATA_NAME)
    obj = read_metadata(metadata_path, options.allowed)
    try:
        tensors, others, paths = parse_metadata(obj)
    except PinitError as e:
        e.path = e.path or metadata_path
        raise
    files: dict[str, DcpFile] = {}
    source = DcpSource(folder, metadata_path, files)
    source.paths = paths
    try:
        entries: list[TensorEntry] = []
        for meta in tensors:
            for c in meta.chunks:
                f = files.get(c.item.file)
                if f is None:
                    full = str(_item_path(folder, c.item.file, metadata_path))
                    fd = open_regular(full, "DCP data file")
                    f = files[c.item.file] = DcpFile(full, fd, os.fstat(fd).st_size)
                if c.item.offset < 0 or c.item.length <= 0 or c.item.offset + c.item.length > f.size:
                    raise PinitError(
                        f"tensor '{meta.name}': its chunk at offsets {list(c.offsets)} lies at bytes "
                        f"{c.item.offset}..{c.item.offset + c.item.length} of {c.item.file}, "
                        f"outside the file ({f.size} bytes; truncated?)",
                        f.path,
                    )
            storage = DcpStorage(meta, files, (str(folder), meta.name), options.allowed)
            source.storages[meta.name] = storage
            entries.append(
                TensorEntry(
                    meta.name, meta.dtype, meta.shape, storage, requires_grad=meta.requires_grad, index=len(entries)
                )
            )
            source.tree[meta.name] = _TensorLeaf(meta.name, meta.dtype, meta.shape)
        for name, item in others.items():
            source.non_tensor.append(name)
            source.non_tensor_items[name] = item
            source.tree[name] = _value_of(name, item, files, options.allowed)
    except PinitError as e:
        source.close()
        e.path = e.path or shown
        raise
    except BaseException:
        source.close()
        raise
    return Checkpoint(path=shown, format="dcp", tensors=entries, source=source)


# ---------------------------------------------------------------------------- writing back


def touched_files(ckpt: Checkpoint, names: frozenset[str] | Sequence[str]) -> list[str]:
    """The ``.distcp`` files (full paths) holding chunks of the tensors ``names``."""
    source: DcpSource = ckpt.source  # type: ignore[assignment]
    out: dict[str, None] = {}
    for name in names:
        storage = source.storages.get(name)
        if storage is not None:
            for c in storage.meta.chunks:
                out[source.dcp_files[c.item.file].path] = None
    return list(out)


def _scatter_chunk(storage: DcpStorage, i: int, new: np.ndarray) -> tuple[int, bytes]:
    """(byte offset in the chunk's storage record, bytes) that write chunk ``i`` of the tensor
    whose new row-major bytes are ``new``, in the chunk's own layout."""
    import numpy as np

    meta = storage.meta
    c = meta.chunks[i]
    data = storage.chunk(i)
    k = storage.item
    el = np.dtype(f"u{k}") if k in (1, 2, 4, 8) else np.dtype(f"V{k}")
    whole = np.frombuffer(memoryview(new), dtype=el).reshape(meta.shape)
    part = whole[tuple(slice(a, a + n) for a, n in zip(c.offsets, c.sizes))]
    if data.contiguous:
        return data.offset * k, np.ascontiguousarray(part).tobytes()
    dims = sorted((s, n) for s, n in zip(data.strides, c.sizes) if n > 1)
    reach = 1
    for s, n in dims:  # no two elements of the chunk may share a place (they all get new values)
        if s < reach:
            raise PinitError(f"tensor '{meta.name}': a chunk is a view that overlaps itself; cannot rewrite it")
        reach = s * (n - 1) + reach
    span = 1 + sum((n - 1) * s for s, n in dims)
    buf = np.empty(span * k, dtype=np.uint8)
    data.storage.read_into(data.offset * k, buf)  # the bytes between the chunk's elements stay
    view = np.ndarray(c.sizes, el, buffer=buf, strides=tuple(s * k for s in data.strides))
    view[...] = part
    return data.offset * k, buf.tobytes()


def _shared_spans(source: DcpSource) -> dict[tuple[str, int, int], str]:
    """Items whose bytes overlap another item's in the same file (only a hostile metadata does
    that), each mapped to the name of an item it overlaps: one sweep per file."""
    spans: dict[str, list[tuple[int, int, str]]] = {}
    for storage in source.storages.values():
        for c in storage.meta.chunks:
            spans.setdefault(c.item.file, []).append((c.item.offset, c.item.offset + c.item.length, storage.meta.name))
    for name, item in source.non_tensor_items.items():
        if item is not None:
            spans.setdefault(item.file, []).append((item.offset, item.offset + item.length, name))
    out: dict[tuple[str, int, int], str] = {}
    for file, items in spans.items():
        items.sort()
        reach: tuple[int, int, str] | None = None  # the item reaching furthest so far
        for start, end, name in items:
            if reach is not None and start < reach[1]:
                out[(file, start, end - start)] = reach[2]
                out[(file, reach[0], reach[1] - reach[0])] = name
            if reach is None or end > reach[1]:
                reach = (start, end, name)
    return out


def write_in_place(
    ckpt: Checkpoint,
    values: Any,
    *,
    backup: bool,
    force: bool,
    warnings: list[str],
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Rewrite the tensors in ``values`` (a mapping or ``PendingValues`` of raw row-major bytes) in
    their chunks; each touched ``.distcp`` file is copied, patched and replaced atomically."""
    from pinit.formats import zip_patch
    from pinit.writers import atomic_file

    source: DcpSource = ckpt.source  # type: ignore[assignment]
    names = values.names if hasattr(values, "names") and hasattr(values, "produce") else frozenset(values)
    for name in names:
        if name not in source.storages:
            raise PinitError(f"no tensor '{name}' in the checkpoint", ckpt.path)
    by_path = {f.path: f for f in source.dcp_files.values()}
    targets = touched_files(ckpt, names)
    # parse every chunk to be written, and refuse what cannot be patched, before any file is copied
    shared = _shared_spans(source)
    for name in names:
        storage = source.storages[name]
        for i in range(len(storage.meta.chunks)):
            data = storage.chunk(i)
            if data.info.compress_type != zipfile.ZIP_STORED:
                raise PinitError(f"tensor '{name}': a chunk is stored compressed; pinit rewrites stored records only")
            c = storage.meta.chunks[i].item
            other = shared.get((c.file, c.offset, c.length))
            if other is not None:
                raise PinitError(f"tensor '{name}': a chunk shares its bytes with '{other}' (refused)", ckpt.path)
    with ExitStack() as stack:
        out_fds: dict[str, int] = {}
        for path in targets:
            fd = stack.enter_context(atomic_file(path, backup, force=force, warnings=warnings))
            src = by_path[path]
            zip_patch.copy_file(src.fd, fd, src.size)
            out_fds[path] = fd
        pairs = values.produce() if hasattr(values, "produce") else (([n], v) for n, v in values.items())
        for tensor_names, new in pairs:
            for name in tensor_names:
                storage = source.storages[name]
                if new.size != storage.nbytes:
                    raise PinitError(f"tensor '{name}': new value has {new.size} bytes, not {storage.nbytes}")
                for i, c in enumerate(storage.meta.chunks):
                    if math.prod(c.sizes) == 0:
                        continue
                    data = storage.chunk(i)
                    at, raw = _scatter_chunk(storage, i, new)
                    fd = out_fds[source.dcp_files[c.item.file].path]
                    zip_patch.ZipPatcher(fd, data.base, data.end).patch(data.info, [(at, raw)])
                if progress is not None:
                    progress(storage.nbytes)
    return targets
