"""Writing checkpoints: atomic replacement and a streaming safetensors writer.

Every write goes to a temporary file in the target folder, is fsynced, and
replaces the target with ``os.replace``; on any failure the temporary file is
removed and the target is untouched.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pinit import dtypes
from pinit.errors import PinitError
from pinit.storage import FileStorage, TensorEntry

TMP_PREFIX = ".pinit-tmp-"
COPY_CHUNK = 64 << 20


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_error(target: str | os.PathLike[str], e: OSError) -> PinitError:
    reason = e.strerror or str(e)
    if e.errno == errno.EFBIG:
        reason = "file too large (file-size limit reached)"
    return PinitError(f"cannot write: {reason}; the original is unchanged", os.fspath(target))


@contextmanager
def atomic_file(target: str | os.PathLike[str], backup: bool = False) -> Iterator[int]:
    """Yield a file descriptor of a temporary file that replaces ``target`` on success.

    With ``backup`` an existing target is kept as ``target.bak`` (hard link when
    possible, so no data is copied).  A ``target`` that is a symbolic link is written
    through: the file it points to is replaced and the link is kept, as ``open()`` and
    ``torch.save`` would do (so ``--out link-to-the-input`` is the same as in place).
    """
    shown = target  # errors name the path as the user gave it
    target = Path(target)
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    folder = target.parent.resolve()
    try:
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".part", dir=folder)
    except OSError as e:
        raise write_error(shown, e) from None
    try:
        try:
            if target.exists():
                os.fchmod(fd, target.stat().st_mode & 0o7777)
            else:
                umask = os.umask(0)
                os.umask(umask)
                os.fchmod(fd, 0o666 & ~umask)
            yield fd
            os.fsync(fd)
        finally:
            os.close(fd)
        if backup and target.exists():
            _backup(target)
        os.replace(tmp, target)
        _fsync_dir(folder)
    except OSError as e:
        _unlink(tmp)
        raise write_error(shown, e) from None
    except BaseException:
        _unlink(tmp)
        raise


def _backup(target: Path) -> None:
    bak = target.with_name(target.name + ".bak")
    tmp = target.with_name(f"{TMP_PREFIX}{target.name}.bak")
    _unlink(str(tmp))
    try:
        os.link(target, tmp)
    except OSError:
        import shutil

        shutil.copy2(target, tmp)
    os.replace(tmp, bak)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


_sync_file_range: Callable[[int, int, int, int], int] | bool | None = False


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing a range to disk now (Linux ``sync_file_range``, without
    waiting), so that the final fsync has little left to do. Does nothing where unavailable."""
    global _sync_file_range
    if _sync_file_range is False:
        _sync_file_range = None
        if sys.platform.startswith("linux"):
            import ctypes
            import ctypes.util

            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
                fn = libc.sync_file_range
                fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                _sync_file_range = fn
            except (OSError, AttributeError):
                pass
    if _sync_file_range:
        _sync_file_range(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE; a failure shows at fsync


def pwrite_all(fd: int, data: bytes | memoryview | np.ndarray, at: int) -> None:
    view = memoryview(data).cast("B") if not isinstance(data, (bytes, memoryview)) else memoryview(data)
    while view:
        n = os.pwrite(fd, view, at)
        view = view[n:]
        at += n


def copy_span(src_fd: int, offset: int, length: int, dst_fd: int, dst_offset: int) -> None:
    """Copy ``length`` bytes at ``offset`` of ``src_fd`` to ``dst_offset`` of ``dst_fd`` (the
    kernel copies with ``os.copy_file_range``; a pread/pwrite loop where it cannot)."""
    done = 0
    if hasattr(os, "copy_file_range"):
        try:
            while done < length:
                n = os.copy_file_range(src_fd, dst_fd, length - done, offset + done, dst_offset + done)
                if n == 0:
                    raise PinitError("source file ended while copying tensor data")
                done += n
            return
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF):
                raise
    while done < length:
        chunk = os.pread(src_fd, min(length - done, COPY_CHUNK), offset + done)
        if not chunk:
            raise PinitError("source file ended while copying tensor data")
        pwrite_all(dst_fd, chunk, dst_offset + done)
        done += len(chunk)


@dataclass
class OutTensor:
    """One tensor of a safetensors file being written: new bytes, or an entry to copy.

    ``pending`` tensors get their bytes later, from the ``fill`` callback of
    :func:`write_safetensors`; their size is ``source``'s.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: np.ndarray | None = None  # new bytes (uint8), or None to copy ``source``
    source: TensorEntry | None = None
    pending: bool = False

    @property
    def nbytes(self) -> int:
        if self.data is not None:
            return int(self.data.nbytes)
        assert self.source is not None
        return self.source.nbytes


def safetensors_header(tensors: Sequence[OutTensor], metadata: dict[str, str] | None) -> bytes:
    doc: dict[str, object] = {}
    if metadata:
        doc["__metadata__"] = metadata
    pos = 0
    for t in tensors:
        dt = dtypes.get(t.dtype)
        if dt.st_code is None:
            raise PinitError(f"tensor '{t.name}' has dtype {t.dtype}, which safetensors cannot store")
        doc[t.name] = {"dtype": dt.st_code, "shape": list(t.shape), "data_offsets": [pos, pos + t.nbytes]}
        pos += t.nbytes
    raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def write_safetensors(
    fd: int,
    tensors: Sequence[OutTensor],
    metadata: dict[str, str] | None,
    fill: Callable[[], Iterable[tuple[Sequence[str], np.ndarray]]] | None = None,
) -> None:
    """Write a safetensors file to ``fd``: the header, then each tensor's bytes in order.

    Runs of unchanged tensors stored one after another in a file are copied by
    the kernel in one go; other unchanged tensors are copied chunk by chunk; new
    tensors are written from memory. The bytes of ``pending`` tensors come from
    ``fill()``, one tensor (and the names sharing it) at a time, each written as
    it comes, while a second thread writes everything else (computing new values
    starts with ``import torch``: the copy runs under it).
    """
    header = safetensors_header(tensors, metadata)
    places: list[tuple[OutTensor, int]] = []
    pos = len(header)
    for t in tensors:
        places.append((t, pos))
        pos += t.nbytes
    stop = threading.Event()
    failed: list[BaseException] = []

    def write_known() -> None:
        try:
            pwrite_all(fd, header, 0)
            for t, at in _coalesce([(t, at) for t, at in places if not t.pending]):
                if stop.is_set():
                    return
                _write_at(fd, t, at, stop)
                start_writeback(fd, at, t.nbytes)
            # flush now, while fill() may still run: the final fsync has only new bytes left
            getattr(os, "fdatasync", os.fsync)(fd)
        except BaseException as e:
            failed.append(e)

    if fill is None:
        write_known()
        if failed:
            raise failed[0]
        return
    at_of = {t.name: at for t, at in places if t.pending}
    size_of = {t.name: t.nbytes for t, at in places if t.pending}
    worker = threading.Thread(target=write_known, name="pinit-copy", daemon=True)
    worker.start()
    try:
        written: set[str] = set()
        for names, data in fill():
            for name in names:
                if data.nbytes != size_of[name]:
                    raise PinitError(f"new bytes of '{name}' are {data.nbytes} long, not {size_of[name]}")
                pwrite_all(fd, data, at_of[name])
                written.add(name)
            del data  # not held while fill() draws the next one
            if failed:  # the copy failed: no use drawing the rest
                break
        if not failed and written != set(at_of):
            raise PinitError(f"no new bytes for {', '.join(sorted(set(at_of) - written))}")
    except BaseException:
        stop.set()
        worker.join()
        raise
    worker.join()
    if failed:
        raise failed[0]


@dataclass
class _Span:
    """Unchanged tensors whose bytes lie one after another in one source file."""

    fd: int
    start: int
    nbytes: int


def _file_span(t: OutTensor) -> _Span | None:
    src = t.source
    if t.data is None and src is not None and isinstance(src.storage, FileStorage) and src.is_contiguous:
        return _Span(src.storage.fd, src.storage.offset + src.offset * src.dt.itemsize, src.nbytes)
    return None


def _coalesce(places: list[tuple[OutTensor, int]]) -> list[tuple[OutTensor | _Span, int]]:
    out: list[tuple[OutTensor | _Span, int]] = []
    for t, at in places:
        span = _file_span(t)
        if span is not None and out:
            last, last_at = out[-1]
            if (
                isinstance(last, _Span)
                and last.fd == span.fd
                and last.start + last.nbytes == span.start
                and last_at + last.nbytes == at
            ):
                last.nbytes += span.nbytes
                continue
        out.append((span if span is not None else t, at))
    return out


def _write_at(fd: int, t: OutTensor | _Span, at: int, stop: threading.Event) -> None:
    """Write one tensor, or one span of a source file, at offset ``at`` of ``fd``."""
    if isinstance(t, _Span):
        for done in range(0, t.nbytes, COPY_CHUNK):
            if stop.is_set():
                return
            copy_span(t.fd, t.start + done, min(COPY_CHUNK, t.nbytes - done), fd, at + done)
        return
    if t.data is not None:
        pwrite_all(fd, t.data, at)
        return
    assert t.source is not None
    for chunk in t.source.iter_bytes():
        pwrite_all(fd, chunk, at)
        at += chunk.nbytes
