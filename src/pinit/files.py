"""Opening input files: only regular files, and small files read with a size cap.

A FIFO would block ``open()`` forever and ``/dev/zero`` never ends: every checkpoint, index,
plan and settings file pinit reads goes through :func:`open_regular`, which opens without
blocking and refuses anything but a regular file before reading a byte.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any, BinaryIO, Union

from pinit.errors import PinitError

if TYPE_CHECKING:
    from pinit.remote import RemoteFile
    from pinit.storage import Storage

# What the readers read from: a local file descriptor (os.pread) or a remote file (pinit.remote)
FileRef = Union[int, "RemoteFile"]

MAX_INDEX_BYTES = 64 << 20
# the path schemes read by pinit.remote
URL_SCHEMES = ("hf", "http", "https", "s3", "gs", "gcs")


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str, what: str = "file") -> int:
    """A read-only descriptor of ``path``, which must be a regular file (links are followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise PinitError(f"cannot open {what}: {e.strerror}", path) from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError as e:
        os.close(fd)
        raise PinitError(f"cannot open {what}: {e.strerror}", path) from None
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise PinitError(f"{what} is {_kind(mode)}, not a regular file", path)
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return fd


def read_regular(path: str, limit: int, what: str) -> bytes:
    """The bytes of a small regular file, refused when larger than ``limit``."""
    fd = open_regular(path, what)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise PinitError(f"{what} is {size:,} bytes, more than the {limit:,} pinit reads", path)
        chunks = []
        total = 0
        while True:  # read to the end, never more than the limit (a file may grow while read)
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise PinitError(f"{what} is more than the {limit:,} bytes pinit reads", path)
        return b"".join(chunks)
    except OSError as e:
        raise PinitError(f"cannot read {what}: {e.strerror}", path) from None
    finally:
        os.close(fd)


def pread(src: FileRef, n: int, offset: int) -> bytes:
    """Up to ``n`` bytes at ``offset`` of a descriptor (``os.pread``) or a remote file (one ranged read)."""
    if isinstance(src, int):
        return os.pread(src, n, offset)
    return src.pread(n, offset)


def size_of(src: FileRef) -> int:
    return os.fstat(src).st_size if isinstance(src, int) else src.size


def reopen(src: FileRef) -> BinaryIO:
    """A file object reading ``src`` from its start (for ``zipfile``); closing it leaves ``src`` open."""
    if isinstance(src, int):
        return open(os.dup(src), "rb")
    return src.reader()  # type: ignore[return-value]


def close_ref(src: FileRef) -> None:
    """Close a descriptor (``-1``: already closed; an error closing it is ignored) or a remote file."""
    if isinstance(src, int):
        if src >= 0:
            try:
                os.close(src)
            except OSError:
                pass
    else:
        src.close()


def file_storage(src: FileRef, offset: int, nbytes: int, key: Any, path: str) -> Storage:
    """The storage of ``nbytes`` at ``offset`` of ``src``: a ``FileStorage`` for a descriptor (read
    with preadv, or by the C kernel itself), a ``RangeStorage`` for a remote file."""
    if isinstance(src, int):
        from pinit.storage import FileStorage

        return FileStorage(src, offset, nbytes, key, path)
    from pinit.remote import RangeStorage

    return RangeStorage(src, offset, nbytes, key, path)


def is_url(path: object) -> bool:
    """True for a path pinit reads remotely (``scheme://...``, a scheme of :data:`URL_SCHEMES`)."""
    if not isinstance(path, str) or "://" not in path:
        return False
    return path.split("://", 1)[0].lower() in URL_SCHEMES
