"""Opening input files: only regular files, and small files read with a size cap.

A FIFO would block ``open()`` forever and ``/dev/zero`` never ends: every checkpoint, index,
plan and settings file pinit reads goes through :func:`open_regular`, which opens without
blocking and refuses anything but a regular file before reading a byte.
"""

from __future__ import annotations

import os
import stat

from pinit.errors import PinitError

MAX_INDEX_BYTES = 64 << 20  # a shard index of 100,000 tensors is about 10 MB


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
