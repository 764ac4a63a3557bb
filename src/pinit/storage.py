"""Where a tensor's bytes live, and how to read them chunk by chunk.

A :class:`Storage` is a run of raw bytes: a region of a file (read with
``os.pread`` into a reused buffer, so memory stays bounded whatever the tensor
size), or bytes already in memory (tensors that torch itself had to load).
A :class:`TensorEntry` is a view of a storage: dtype, shape, strides and
offset, exactly as torch describes a tensor.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pinit import dtypes
from pinit.errors import PinitError

if TYPE_CHECKING:  # numpy is imported only when tensor data is read
    import numpy as np

CHUNK_BYTES = 1 << 20
# A non-contiguous view is never gathered whole: its row-major bytes are assembled block by block,
# at most BLOCK_BYTES of output per block, from reads of at most WINDOW_BYTES of storage each.
BLOCK_BYTES = 32 << 20
WINDOW_BYTES = 16 << 20
# The cost of one read call, in bytes one could have read instead: a window over several pieces
# (and the gaps between them) is read in one call when it costs no more than one call per piece.
READ_CALL_BYTES = 32 << 10
# Statistics of a view that visits its storage elements more than this many times over on
# average are taken from each element once, weighted by how often the view visits it, for
# spans up to MAX_MULTIPLICITY_SPAN elements; longer spans are read element by element, up to
# MAX_OVERLAP_ELEMENTS (beyond that, only a hostile file: refused).
OVERLAP_READ_FACTOR = 4
MAX_MULTIPLICITY_SPAN = 1 << 20
MAX_OVERLAP_ELEMENTS = 1 << 32


class Storage:
    """A run of ``nbytes`` bytes identified by ``key`` (equal keys: shared storage)."""

    key: Any
    nbytes: int

    def read_into(self, start: int, out: np.ndarray) -> None:
        """Fill ``out`` (uint8) with the bytes from ``start``."""
        raise NotImplementedError

    def view(self, start: int, n: int) -> np.ndarray | None:
        """Zero-copy read-only bytes if this storage is in memory, else None."""
        return None


class FileStorage(Storage):
    """Bytes at ``offset`` in an open file."""

    def __init__(self, fd: int, offset: int, nbytes: int, key: Any, path: str) -> None:
        self.fd = fd
        self.offset = offset
        self.nbytes = nbytes
        self.key = key
        self.path = path

    def read_into(self, start: int, out: np.ndarray) -> None:
        want = out.size
        done = 0
        mv = memoryview(out).cast("B")
        while done < want:
            got = os.preadv(self.fd, [mv[done:]], self.offset + start + done)
            if got <= 0:
                raise PinitError("file ended inside tensor data (truncated?)", self.path)
            done += got


class MemoryStorage(Storage):
    """Bytes already in memory (a numpy uint8 array, possibly backed by mmap)."""

    def __init__(self, data: np.ndarray, key: Any) -> None:
        self.data = data
        self.nbytes = data.size
        self.key = key

    def read_into(self, start: int, out: np.ndarray) -> None:
        out[:] = self.data[start : start + out.size]

    def view(self, start: int, n: int) -> np.ndarray:
        return self.data[start : start + n]


# Compressed members: at most this many decompressing streams stay open at once (each holds a
# file descriptor; the least recently used idle one is closed first) ...
MAX_OPEN_STREAMS = 8
# ... and a member read out of order (views of one storage at several offsets, visited in
# another order than their offsets) is inflated once into memory when it has at most
# STREAM_CACHE_MEMBER bytes, all such copies together holding at most STREAM_CACHE_BYTES.
STREAM_CACHE_MEMBER = 32 << 20
STREAM_CACHE_BYTES = 128 << 20

_streams_lock = threading.RLock()  # reentrant: a collected storage's __del__ may run inside
_open_streams: OrderedDict[int, weakref.ref[StreamStorage]] = OrderedDict()
_cached_streams: OrderedDict[int, weakref.ref[StreamStorage]] = OrderedDict()


class StreamStorage(Storage):
    """Bytes of a compressed zip member, read through ``zipfile`` in one sequential pass.

    The decompressing stream stays open between reads, with its position: a read at or after
    the position goes on from there (skipping forward by reading), so reading a member's
    tensors in order, chunk by chunk, inflates it once. A read that goes backwards inflates a
    small member whole into memory (kept, within a global budget, for the reads that follow)
    and otherwise reopens the member and inflates it again up to that point. A lock serializes
    readers (two worker threads may read tensors of one storage). ``inflated`` counts the bytes
    decompressed (the work done). The stream is closed when a read reaches the member's end, when
    too many others are open, by :meth:`close`, and when the storage is garbage collected.
    """

    def __init__(self, opener: Any, nbytes: int, key: Any) -> None:
        self.opener = opener
        self.nbytes = nbytes
        self.key = key
        self.inflated = 0
        self._lock = threading.Lock()
        self._ctx: Any = None  # the opener's context manager, entered
        self._f: Any = None
        self._pos = 0
        self._data: np.ndarray | None = None  # the whole member, once read out of order

    def read_into(self, start: int, out: np.ndarray) -> None:
        if start < 0 or start + out.size > self.nbytes:
            raise PinitError("read outside a compressed zip member")
        mv = memoryview(out).cast("B")
        with self._lock:
            data = self._data
            if data is None and self._f is not None and start < self._pos and self.nbytes <= STREAM_CACHE_MEMBER:
                data = self._cache_whole()
            if data is not None:
                mv[:] = memoryview(data)[start : start + out.size]
                _touch(_cached_streams, self)
                return
            if self._f is None or start < self._pos:
                self._open()
            else:
                _touch(_open_streams, self)
            self._skip_to(start)
            self._read(mv)
            if self._pos >= self.nbytes:
                self._close()

    def _open(self) -> None:
        self._close()
        self._ctx = self.opener()
        self._f = self._ctx.__enter__()
        self._pos = 0
        _register_open(self)

    def _skip_to(self, start: int) -> None:
        while self._pos < start:  # skip forward by reading (a seek would re-inflate as well)
            got = self._f.read(min(start - self._pos, CHUNK_BYTES))
            if not got:
                raise PinitError("zip member ended inside tensor data")
            self._pos += len(got)
            self.inflated += len(got)

    def _read(self, mv: memoryview) -> None:
        done = 0
        while done < len(mv):
            got = self._f.read(min(len(mv) - done, CHUNK_BYTES))  # bounded: read() returns a copy
            if not got:
                raise PinitError("zip member ended inside tensor data")
            mv[done : done + len(got)] = got
            done += len(got)
            self._pos += len(got)
            self.inflated += len(got)

    def view(self, start: int, n: int) -> np.ndarray | None:
        data = self._data  # the whole member, when it was read out of order and is still kept
        return None if data is None else data[start : start + n]

    def _cache_whole(self) -> np.ndarray:
        import numpy as np

        data = np.empty(self.nbytes, dtype=np.uint8)
        self._open()
        self._read(memoryview(data))
        self._close()
        data.flags.writeable = False  # handed out by view(): nobody writes to it
        self._data = data
        with _streams_lock:
            _cached_streams[id(self)] = weakref.ref(self)
            total = 0
            for k in reversed(list(_cached_streams)):  # newest first: the oldest go over budget
                ref = _cached_streams.get(k)
                other = ref() if ref is not None else None
                kept = other._data if other is not None else None
                if other is None or kept is None:
                    _cached_streams.pop(k, None)
                    continue
                total += kept.size
                if total > STREAM_CACHE_BYTES and other is not self:
                    other._data = None  # readers hold their own reference while they copy
                    _cached_streams.pop(k, None)
        return data

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        f, ctx = self._f, self._ctx
        self._f = self._ctx = None
        self._pos = 0
        with _streams_lock:
            _open_streams.pop(id(self), None)
        if ctx is not None:
            ctx.__exit__(None, None, None)
        elif f is not None:
            f.close()

    def __del__(self) -> None:
        try:
            self._close()
        except Exception:
            pass


def _touch(registry: OrderedDict[int, weakref.ref[StreamStorage]], s: StreamStorage) -> None:
    with _streams_lock:
        if id(s) in registry:
            registry.move_to_end(id(s))


def _register_open(s: StreamStorage) -> None:
    """Note ``s``'s stream as open; close the least recently used idle ones beyond the limit
    (one whose lock another thread holds is in use: it is left alone)."""
    with _streams_lock:
        _open_streams[id(s)] = weakref.ref(s)
        _open_streams.move_to_end(id(s))
        excess = len(_open_streams) - MAX_OPEN_STREAMS
        victims = []
        for k in list(_open_streams):
            if excess <= 0:
                break
            ref = _open_streams.get(k)
            other = ref() if ref is not None else None
            if other is None:
                _open_streams.pop(k, None)
                excess -= 1
            elif other is not s:
                victims.append(other)
                excess -= 1
    for other in victims:
        if other._lock.acquire(blocking=False):
            try:
                other._close()
            finally:
                other._lock.release()


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides = []
    acc = 1
    for size in reversed(shape):
        strides.append(acc)
        acc *= max(size, 1)
    return tuple(reversed(strides))


@dataclass
class TensorEntry:
    """One tensor of a checkpoint: a typed view of a storage."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    storage: Storage
    offset: int = 0  # in elements
    strides: tuple[int, ...] | None = None  # None: contiguous
    requires_grad: bool | None = None
    index: int = 0  # position in the file
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dt(self) -> dtypes.DType:
        return dtypes.get(self.dtype)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dt.itemsize

    @property
    def is_contiguous(self) -> bool:
        return self.strides is None or self.numel <= 1 or _is_contiguous(self.shape, self.strides)

    @property
    def view_key(self) -> tuple[Any, ...]:
        """Equal for tensors that are the very same view of the same storage."""
        strides = self.strides if self.strides is not None else contiguous_strides(self.shape)
        return (self.storage.key, self.offset, self.shape, strides, self.dtype)

    def validate(self) -> None:
        """Check that the view stays inside its storage (hostile files lie)."""
        item = self.dt.itemsize
        if self.offset < 0 or any(s < 0 for s in self.shape):
            raise PinitError(f"tensor '{self.name}' has a negative offset or size")
        if self.numel == 0:
            return
        if self.strides is None:
            last = self.offset + self.numel - 1
        else:
            if len(self.strides) != len(self.shape) or any(s < 0 for s in self.strides):
                raise PinitError(f"tensor '{self.name}' has invalid strides")
            last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.strides))
        if (last + 1) * item > self.storage.nbytes:
            raise PinitError(
                f"tensor '{self.name}' reaches past the end of its storage "
                f"({(last + 1) * item} > {self.storage.nbytes} bytes)"
            )

    def iter_bytes(self, chunk_bytes: int = CHUNK_BYTES, buf: np.ndarray | None = None) -> Iterator[np.ndarray]:
        """Yield the tensor's bytes in row-major order, in chunks of whole elements.

        Every chunk but the last holds exactly ``chunk_bytes`` rounded down to whole elements
        (at least one), so two tensors of one dtype and size iterate in chunks that line up.
        Chunks may be views into a reused buffer or into the storage itself: use each before
        asking for the next, and never write to it. Memory stays bounded whatever the view
        (strided and broadcast views are assembled block by block, never whole).
        """
        return self._iter_row_major(chunk_bytes, buf, self.numel)

    def stat_parts(
        self, chunk_bytes: int = CHUNK_BYTES, buf: np.ndarray | None = None
    ) -> Iterator[tuple[int, Iterator[np.ndarray]]]:
        """The tensor's elements as a multiset, for order-free reductions (statistics).

        Yields ``(repeat, chunks)`` parts: every element of a part's chunks stands for ``repeat``
        equal elements of the tensor, and together they are the tensor's elements, in an order
        of pinit's choosing. Mostly one part: dimensions of stride 0 (broadcast, ``expand``) are
        dropped, since their elements repeat (``repeat`` is the product of their sizes), and the
        others are read in storage order (sorted by stride, so that a transposed tensor is one
        contiguous read; a view with gaps is gathered in bounded windows). A view that overlaps
        itself many times over (``unfold``, or a hostile file's 2**40 elements over a storage of
        41) is read once: each storage element's multiplicity is counted exactly, and the
        elements are split into parts by the bits of their multiplicities.
        """
        if self.numel == 0:
            return
        if self.strides is None or self.is_contiguous:
            yield 1, self._iter_row_major(chunk_bytes, buf, self.numel)
            return
        repeat = 1
        dims = []
        for n, s in zip(self.shape, self.strides):
            if s == 0:
                repeat *= n
            elif n != 1:
                dims.append((n, s))
        dims.sort(key=lambda d: d[1], reverse=True)  # stable: equal strides keep their order
        view = TensorEntry(
            self.name,
            self.dtype,
            tuple(n for n, _ in dims),
            self.storage,
            self.offset,
            tuple(s for _, s in dims),
            index=self.index,
        )
        count = view.numel
        span = 1 + sum((n - 1) * s for n, s in dims)
        if count <= OVERLAP_READ_FACTOR * span:  # no overlap, or little: gathered in storage order
            yield repeat, view._iter_row_major(chunk_bytes, buf, count)
            return
        if span <= MAX_MULTIPLICITY_SPAN:
            step = max(1, chunk_bytes // self.dt.itemsize) * self.dt.itemsize
            for k, data in _overlap_parts(
                self.storage, self.dt.itemsize, self.offset, _row_dims(view.shape, view.strides or ()), span
            ):
                yield repeat * k, _chunks(data, step)
            return
        if count > MAX_OVERLAP_ELEMENTS:
            raise PinitError(
                f"tensor '{self.name}' is a view of {count} elements that overlaps itself over "
                f"{span} elements of its storage; too many to read"
            )
        yield repeat, view._iter_row_major(chunk_bytes, buf, count)

    def read_bytes(self, limit: int | None = None) -> np.ndarray:
        """The first ``limit`` bytes (all when None) of the tensor, row-major, as a new array.

        Only what those bytes need is read: whole elements up to ``limit``, then cut."""
        import numpy as np

        total = self.nbytes if limit is None else max(0, min(limit, self.nbytes))
        item = self.dt.itemsize
        out = np.empty(total, dtype=np.uint8)
        done = 0
        count = -(-total // item)
        chunk = min(max(total, item), CHUNK_BYTES)
        for piece in self._iter_row_major(chunk, None, count):
            n = min(piece.size, total - done)
            out[done : done + n] = piece[:n]
            done += n
        return out

    def _iter_row_major(self, chunk_bytes: int, buf: np.ndarray | None, count: int) -> Iterator[np.ndarray]:
        """The first ``count`` elements' bytes in row-major order, in chunks as iter_bytes."""
        import numpy as np

        item = self.dt.itemsize
        count = min(count, self.numel)
        if count <= 0:
            return iter(())
        step = max(1, chunk_bytes // item)  # elements per chunk
        if self.is_contiguous:
            start = self.offset * item
            total = count * item
            mem = self.storage.view(start, total)
            if mem is not None:
                return _chunks(mem, step * item)
            if buf is None or buf.size < min(step * item, total):
                buf = np.empty(min(step * item, total), dtype=np.uint8)
            return _read_chunks(self.storage, start, total, step * item, buf)
        assert self.strides is not None
        return _iter_box(self.storage, item, self.offset, _row_dims(self.shape, self.strides), step, count)


def _read_chunks(storage: Storage, start: int, total: int, step: int, buf: np.ndarray) -> Iterator[np.ndarray]:
    done = 0
    while done < total:
        n = min(step, total - done)
        out = buf[:n]
        storage.read_into(start + done, out)
        yield out
        done += n


def _row_dims(shape: tuple[int, ...], strides: tuple[int, ...]) -> list[tuple[int, int]]:
    """(size, stride) of a view's dimensions in row-major order, size-1 dimensions dropped and
    neighbours that step through memory as one dimension merged (never empty)."""
    dims: list[tuple[int, int]] = []
    for n, s in zip(shape, strides):
        if n == 1:
            continue
        if dims and dims[-1][1] == n * s:
            dims[-1] = (dims[-1][0] * n, s)
        else:
            dims.append((n, s))
    return dims or [(1, 1)]


def _multiplicities(dims: list[tuple[int, int]], span: int) -> np.ndarray:
    """How many index tuples of the view ``dims`` ((size, stride), strides > 0) reach each of the
    ``span`` elements from its first one (int64: they add up to the view's numel, an int64)."""
    import numpy as np

    m = np.zeros(span, dtype=np.int64)
    m[0] = 1
    for n, s in dims:
        # m'(p) = sum over i < n of m(p - i*s): a running sum down each residue class mod s
        rows = -(-span // s)
        grid = np.zeros(rows * s, dtype=np.int64)
        grid[:span] = m
        run = np.cumsum(grid.reshape(rows, s), axis=0)
        out = run.copy()
        if n < rows:
            out[n:] -= run[:-n]
        m = out.reshape(-1)[:span]
    return m


def _overlap_parts(
    storage: Storage, item: int, offset: int, dims: list[tuple[int, int]], span: int
) -> Iterator[tuple[int, np.ndarray]]:
    """The elements of a self-overlapping view, each read once: ``(2**b, bytes)`` parts holding
    the elements whose multiplicity has bit b set (so each counts its multiplicity in all)."""
    import numpy as np

    data = np.empty(span * item, dtype=np.uint8)
    storage.read_into(offset * item, data)
    els = _elements(data, item)
    mult = _multiplicities(dims, span)
    for b in range(int(mult.max()).bit_length()):
        idx = np.flatnonzero((mult >> b) & 1)
        if idx.size:
            yield 1 << b, np.ascontiguousarray(els[idx]).view(np.uint8).reshape(-1)


def _elements(raw: np.ndarray, item: int) -> np.ndarray:
    """``raw`` (uint8) seen as elements of ``item`` bytes, for copies that keep their bits."""
    import numpy as np

    return raw.view(np.dtype(f"u{item}") if item in (1, 2, 4, 8) else np.dtype(f"V{item}"))


def _iter_box(
    storage: Storage, item: int, offset: int, dims: list[tuple[int, int]], step: int, count: int
) -> Iterator[np.ndarray]:
    """Row-major chunks of ``step`` elements (the last may be shorter) of the first ``count``
    elements of the strided view ``dims`` ((size, stride) in elements) at element ``offset``.

    The output is assembled in blocks of at most BLOCK_BYTES: a block is a run of whole rows
    of some dimension (every index of the dimensions after it), so it is itself a strided box,
    filled by :func:`_fill_box`; whole chunks are handed out as soon as they are complete.
    Memory: one block, one chunk and one read window, whatever the tensor's size.
    """
    import numpy as np

    sizes = [n for n, _ in dims]
    rank = len(dims)
    inner = [math.prod(sizes[j + 1 :]) for j in range(rank)]  # elements below one index of dim j
    block_e = max(1, BLOCK_BYTES // item)
    first = min(count, block_e)
    asm = np.empty((min(step, count) + first) * item, dtype=np.uint8)
    window: list[np.ndarray] = []  # the read window, allocated when first needed, reused
    pos = 0  # elements produced
    fill = 0  # elements in asm not yet handed out
    while pos < count:
        budget = min(block_e, count - pos)
        j = next(j for j in range(rank) if inner[j] <= budget and pos % inner[j] == 0)
        idx = [(pos // inner[d]) % sizes[d] for d in range(j + 1)]
        b = min(sizes[j] - idx[j], budget // inner[j])
        base = offset + sum(i * dims[d][1] for d, i in enumerate(idx))
        n_el = b * inner[j]
        _fill_box(
            storage, item, base, [(b, dims[j][1]), *dims[j + 1 :]], asm[fill * item : (fill + n_el) * item], window
        )
        fill += n_el
        pos += n_el
        k = 0
        while fill - k >= step or (pos >= count and k < fill):
            m = min(step, fill - k)
            yield asm[k * item : (k + m) * item]
            k += m
        if k:
            rest = fill - k
            if rest:
                asm[: rest * item] = asm[k * item : fill * item]  # numpy copes with the overlap
            fill = rest


def _fill_box(
    storage: Storage, item: int, base: int, box: list[tuple[int, int]], dst: np.ndarray, window: list[np.ndarray]
) -> None:
    """Fill ``dst`` (uint8, row-major) with the strided box ``box`` at element ``base``.

    The box's dimensions are sorted by stride; the innermost ones whose span fits a read window
    (and is worth reading whole, gaps included: see READ_CALL_BYTES) are read with one call per
    index of the outer ones, then copied into place with a strided copy. Reads go in storage
    order as far as the box allows. Bytes already in memory are copied directly."""
    import numpy as np

    rank = len(box)
    out_strides = contiguous_strides(tuple(n for n, _ in box))
    order = sorted(range(rank), key=lambda d: box[d][1], reverse=True)
    span = 1 + sum((n - 1) * s for n, s in box)
    mem = storage.view(base * item, span * item)
    if mem is not None:
        _copy_box(mem, item, box, list(range(rank)), dst, 0, out_strides)
        return
    # choose the dimensions read whole, from the smallest stride up
    limit = max(1, WINDOW_BYTES // item)
    span = 1
    cut = rank
    part = 0  # > 0: the dimension order[cut - 1] is read this many indices at a time
    for t in range(rank - 1, -1, -1):
        n, s = box[order[t]]
        full = span + (n - 1) * s
        if full <= limit and full * item <= n * (span * item + READ_CALL_BYTES):
            span, cut = full, t
            continue
        q = min(n, (limit - span) // s + 1) if s else n
        if q >= 2 and ((q - 1) * s + span) * item <= q * (span * item + READ_CALL_BYTES):
            part = q
        break
    inner = order[cut:]
    if part:  # the partly read dimension joins the outer ones, stepping by `part` indices
        d = order[cut - 1]
        n, s = box[d]
        steps = [(range(0, n, part), s, out_strides[d])]
        outer = order[: cut - 1]
        need = span + (part - 1) * s
    else:
        steps = []
        outer = order[:cut]
        need = span
    steps = [(range(box[d][0]), box[d][1], out_strides[d]) for d in outer] + steps
    if not window or window[0].size < need * item:
        window[:] = [np.empty(need * item, dtype=np.uint8)]
    win = window[0]
    raw = win[: span * item]
    for at in itertools.product(*(r for r, _, _ in steps)):
        off = base
        doff = 0
        for i, (_, s, o) in zip(at, steps):
            off += i * s
            doff += i * o
        if part and at[-1] + part > box[order[cut - 1]][0]:  # the last, shorter piece
            d = order[cut - 1]
            m = box[d][0] - at[-1]
            sub = list(box)
            sub[d] = (m, box[d][1])
            piece = win[: (span + (m - 1) * box[d][1]) * item]
            storage.read_into(off * item, piece)
            _copy_box(piece, item, sub, [d, *inner], dst, doff, out_strides)
        elif part:
            d = order[cut - 1]
            sub = list(box)
            sub[d] = (part, box[d][1])
            piece = win[: need * item]
            storage.read_into(off * item, piece)
            _copy_box(piece, item, sub, [d, *inner], dst, doff, out_strides)
        else:
            storage.read_into(off * item, raw)
            _copy_box(raw, item, box, inner, dst, doff, out_strides)


def _copy_box(
    src: np.ndarray,
    item: int,
    box: list[tuple[int, int]],
    dims: list[int],
    dst: np.ndarray,
    doff: int,
    out_strides: tuple[int, ...],
) -> None:
    """Copy the dimensions ``dims`` of ``box`` from ``src`` (uint8, the box's first element at 0)
    to ``dst`` (uint8) at element ``doff`` with row-major ``out_strides`` (in elements)."""
    import numpy as np

    dt = np.dtype(f"u{item}") if item in (1, 2, 4, 8) else np.dtype(f"V{item}")
    shape = tuple(box[d][0] for d in dims)
    sview = np.ndarray(shape, dt, buffer=src, strides=tuple(box[d][1] * item for d in dims))
    dview = np.ndarray(shape, dt, buffer=dst, offset=doff * item, strides=tuple(out_strides[d] * item for d in dims))
    np.copyto(dview, sview)


def _is_contiguous(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    expected = 1
    for size, stride in zip(reversed(shape), reversed(strides)):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _chunks(data: np.ndarray, step: int) -> Iterator[np.ndarray]:
    for i in range(0, data.size, step):
        yield data[i : i + step]


def remote_files_unchanged(entries: Sequence[TensorEntry]) -> None:
    """After their data was read (statistics, an output file): each remote file the entries'
    storages read from (a ``pinit.remote.RangeStorage``) is asked whether it changed meanwhile
    (``RemoteFile.check_unchanged``: a PinitError if so)."""
    seen: set[int] = set()
    for e in entries:
        rf = getattr(e.storage, "rf", None)
        if rf is not None and id(rf) not in seen:
            seen.add(id(rf))
            rf.check_unchanged()
