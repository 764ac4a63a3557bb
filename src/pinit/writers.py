"""Writing checkpoints: atomic replacement and a streaming safetensors writer.

Every write goes to a temporary file in the target folder, is fsynced, and
replaces the target with ``os.replace``; on any failure the temporary file is
removed and the target is untouched.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
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


def write_all(fd: int, data: bytes | memoryview | np.ndarray) -> None:
    view = memoryview(data).cast("B") if not isinstance(data, (bytes, memoryview)) else memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def copy_range(src_fd: int, offset: int, length: int, dst_fd: int) -> None:
    """Copy ``length`` bytes at ``offset`` of ``src_fd`` to the current position of ``dst_fd``.

    Uses ``os.copy_file_range`` (the kernel copies, no data enters Python), with
    a read/write loop as fallback.
    """
    done = 0
    if hasattr(os, "copy_file_range"):
        try:
            while done < length:
                n = os.copy_file_range(src_fd, dst_fd, min(length - done, 1 << 30), offset + done)
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
        write_all(dst_fd, chunk)
        done += len(chunk)


@dataclass
class OutTensor:
    """One tensor of a safetensors file being written: new bytes, or an entry to copy."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: np.ndarray | None = None  # new bytes (uint8), or None to copy ``source``
    source: TensorEntry | None = None

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


def write_safetensors(fd: int, tensors: Sequence[OutTensor], metadata: dict[str, str] | None) -> None:
    """Stream a safetensors file: header, then each tensor's bytes in order.

    Unchanged tensors stored contiguously in a file are copied by the kernel;
    others are copied chunk by chunk; new tensors are written from memory.
    """
    write_all(fd, safetensors_header(tensors, metadata))
    for t in tensors:
        if t.data is not None:
            write_all(fd, t.data)
            continue
        src = t.source
        assert src is not None
        if isinstance(src.storage, FileStorage) and src.is_contiguous:
            item = src.dt.itemsize
            copy_range(src.storage.fd, src.storage.offset + src.offset * item, src.nbytes, fd)
        else:
            for chunk in src.iter_bytes():
                write_all(fd, chunk)
