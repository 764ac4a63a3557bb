"""Where a tensor's bytes live, and how to read them chunk by chunk.

A :class:`Storage` is a run of raw bytes: a region of a file (read with
``os.pread`` into a reused buffer, so memory stays bounded whatever the tensor
size), or bytes already in memory (tensors that torch itself had to load).
A :class:`TensorEntry` is a view of a storage: dtype, shape, strides and
offset, exactly as torch describes a tensor.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pinit import dtypes
from pinit.errors import PinitError

if TYPE_CHECKING:  # numpy is imported only when tensor data is read
    import numpy as np

CHUNK_BYTES = 1 << 20
# A non-contiguous view is gathered in memory; refuse views spread over more.
MAX_STRIDED_SPAN = 1 << 31


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


class StreamStorage(Storage):
    """Bytes of a compressed zip member, read through ``zipfile`` (slow, rare)."""

    def __init__(self, opener: Any, nbytes: int, key: Any) -> None:
        self.opener = opener
        self.nbytes = nbytes
        self.key = key

    def read_into(self, start: int, out: np.ndarray) -> None:
        import numpy as np

        with self.opener() as f:
            f.seek(start)
            data = f.read(out.size)
        if len(data) != out.size:
            raise PinitError("zip member ended inside tensor data")
        out[:] = np.frombuffer(data, dtype=np.uint8)


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

        Chunks may be views into a reused buffer or into the storage itself:
        use each before asking for the next, and never write to it.
        """
        import numpy as np

        item = self.dt.itemsize
        total = self.nbytes
        if total == 0:
            return
        if not self.is_contiguous:
            yield from _chunks(self._gather_strided(), chunk_bytes, item)
            return
        start = self.offset * item
        mem = self.storage.view(start, total)
        if mem is not None:
            yield from _chunks(mem, chunk_bytes, item)
            return
        step = max(item, chunk_bytes - chunk_bytes % item)
        if buf is None or buf.size < min(step, total):
            buf = np.empty(min(step, total), dtype=np.uint8)
        done = 0
        while done < total:
            n = min(step, total - done)
            out = buf[:n]
            self.storage.read_into(start + done, out)
            yield out
            done += n

    def read_bytes(self, limit: int | None = None) -> np.ndarray:
        """The first ``limit`` bytes (all when None) of the tensor, row-major, as a new array."""
        import numpy as np

        total = self.nbytes if limit is None else min(limit, self.nbytes)
        out = np.empty(total, dtype=np.uint8)
        done = 0
        for chunk in self.iter_bytes():
            n = min(chunk.size, total - done)
            out[done : done + n] = chunk[:n]
            done += n
            if done >= total:
                break
        return out

    def _gather_strided(self) -> np.ndarray:
        import numpy as np

        item = self.dt.itemsize
        assert self.strides is not None
        lo = self.offset
        hi = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.strides)) + 1
        span = (hi - lo) * item
        if span > MAX_STRIDED_SPAN:
            raise PinitError(f"tensor '{self.name}' is a strided view over {span} bytes; too large to gather")
        raw = np.empty(span, dtype=np.uint8)
        self.storage.read_into(lo * item, raw)
        elems = raw.view(np.dtype(f"V{item}"))
        view = np.lib.stride_tricks.as_strided(
            elems, shape=self.shape, strides=tuple(s * item for s in self.strides), writeable=False
        )
        return np.ascontiguousarray(view).view(np.uint8).reshape(-1)


def _is_contiguous(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    expected = 1
    for size, stride in zip(reversed(shape), reversed(strides)):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _chunks(data: np.ndarray, chunk_bytes: int, item: int) -> Iterator[np.ndarray]:
    step = max(item, chunk_bytes - chunk_bytes % item)
    for i in range(0, data.size, step):
        yield data[i : i + step]
