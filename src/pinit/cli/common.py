"""Small helpers the command modules share: opening a checkpoint under the load options."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from pinit.cli.errors import warn

if TYPE_CHECKING:
    from pinit.checkpoint import Checkpoint, LoadOptions


def load_options(
    allow_global: list[str] | None, unsafe_pickle: bool, timeout: float | None = None, cache: str | None = None
) -> LoadOptions:
    from pinit.checkpoint import LoadOptions

    set_remote_timeout(timeout, cache)
    if unsafe_pickle:
        warn("--unsafe-pickle: torch pickles are loaded fully, which runs any code they hold")
    return LoadOptions(allow_globals=tuple(allow_global or ()), unsafe_pickle=unsafe_pickle)


def set_remote_timeout(timeout: float | None, cache: str | None = None) -> None:
    """``--timeout`` and ``--cache`` of the remote reads (``pinit.remote``, imported only when
    needed); without them the default timeout (or ``PINIT_TIMEOUT``) and no cache."""
    if timeout is None and cache is None and "pinit.remote" not in sys.modules:
        return
    from pinit import remote

    remote.configure(timeout, reset=True, cache=cache)


def open_path(path: str, options: LoadOptions) -> Checkpoint:
    from pinit.checkpoint import open_checkpoint

    return open_checkpoint(path, options)


def large_allocations_from_mmap() -> None:
    """Have glibc serve allocations over 4 MiB with mmap, always (the ``pinit`` process only:
    the library never changes the allocator of a process it is imported into). glibc's default
    threshold rises after the first large free, after which freed tensors of tens of MB stayed
    in the heap and were not reused for the next ones: re-initializing six 32 MB tensors one at
    a time grew the process by five of them. Elsewhere (not glibc) this does nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD (setting it also stops glibc from moving it)


def room_for_open_files() -> None:
    """Raise the ``pinit`` process's soft limit on open files to its hard limit (the library
    never changes a process it is imported into): a checkpoint keeps each of its files open while
    it is read, and a DCP folder of a 2048-GPU run holds 2048 ``.distcp`` files, past the usual
    soft limit of 1024. Where the limit cannot be raised, opening a file past it is a clean error
    naming that file."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or (hard != resource.RLIM_INFINITY and soft >= hard):
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
    except (ValueError, OSError):
        pass
