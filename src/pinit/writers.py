"""Writing checkpoints: atomic replacement and a streaming safetensors writer.

Every write goes to a temporary file in the target folder, is fsynced, and
replaces the target with ``os.replace``; on any failure the temporary file is
removed and the target is untouched.

Write safety (:func:`check_write`, :func:`atomic_file`): only a regular file or a new
path is ever replaced; a write-protected file only with ``force``; a rewritten file keeps
its mode, owner and group; other hard links to it are reported (they keep the old
content).  Temporary files are named ``.pinit-tmp-<pid>-<host>-<start>-<random>.part``
(``.bak`` for a backup's), so that the next write in the folder can tell those of a
killed run (:func:`remove_stale_temps`) from those of a run still going.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import socket
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pinit import dtypes
from pinit.errors import PinitError
from pinit.storage import FileStorage, TensorEntry

TMP_PREFIX = ".pinit-tmp-"
TMP_SUFFIXES = (".part", ".bak")
STALE_AGE_S = 24 * 3600  # a temporary file whose owner cannot be judged is stale after a day unmodified
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
def atomic_file(
    target: str | os.PathLike[str],
    backup: bool = False,
    *,
    force: bool = False,
    warnings: list[str] | None = None,
) -> Iterator[int]:
    """Yield a file descriptor of a temporary file that replaces ``target`` on success.

    With ``backup`` an existing target is kept as ``target.bak`` (hard link when
    possible, so no data is copied).  A ``target`` that is a symbolic link is written
    through: the file it points to is replaced and the link is kept, as ``open()`` and
    ``torch.save`` would do (so ``--out link-to-the-input`` is the same as in place).

    Before anything is written, :func:`check_write` refuses a target that is not a regular
    file and, unless ``force``, a write-protected one; then the temporary files of dead
    runs in the folder are removed (:func:`remove_stale_temps`).  A replaced file's mode,
    owner and group carry over (the owner and group where the caller may set them: always
    as root).  What the caller should know is appended to ``warnings``: other hard links
    to the file keep the old content; an owner or group that could not be kept.
    """
    shown = target  # errors name the path as the user gave it
    original = check_write(target, backup=backup, force=force)
    target = Path(target)
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    folder = target.parent.resolve()
    remove_stale_temps(folder)
    notes: list[str] = []
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{owner_tag()}-", suffix=".part", dir=folder)
    except OSError as e:
        raise write_error(shown, e) from None
    try:
        try:
            if original is not None:
                _keep_owner(fd, original, os.fspath(shown), notes)  # before fchmod: chown clears setuid/setgid
                os.fchmod(fd, original.st_mode & 0o7777)
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
        _regular_or_new(target, os.fspath(shown))  # again: nothing else took its place meanwhile
        os.replace(tmp, target)
        _fsync_dir(folder)
    except OSError as e:
        _unlink(tmp)
        raise write_error(shown, e) from None
    except BaseException:
        _unlink(tmp)
        raise
    if original is not None and original.st_nlink > 1:
        n = original.st_nlink - 1
        notes.append(
            f"{os.fspath(shown)} had {n} other hard link{'s' if n > 1 else ''}: "
            f"{'they keep' if n > 1 else 'it keeps'} the old content (only this name was rewritten)"
        )
    if warnings is not None:
        warnings.extend(notes)


def check_write(target: str | os.PathLike[str], *, backup: bool = False, force: bool = False) -> os.stat_result | None:
    """Refuse, before anything is written, a write that must not happen; return the status of
    the existing target (following symbolic links), or None for a new path.

    - Only a regular file or a new path is replaced: an existing target that is a device
      (``/dev/null``), a FIFO, a socket or a folder is an error (with ``backup``, so is a
      ``PATH.bak`` that is not a regular file, since the backup replaces it).
    - Without ``force``, a write-protected file is not replaced: one with no write bit at all
      (``chmod a-w``; refused for root too, whom the system lets write anything), and, for a
      caller other than root, one it has no write permission for (``os.access``, so ACLs
      count).  Where the folder itself cannot be written the write fails anyway, for that
      reason, which is the one reported.
    """
    shown = os.fspath(target)
    st = _regular_or_new(target, shown)
    if st is None:
        return None
    if not force and _write_protected(target, st):
        raise PinitError(
            "the file is read-only (no write permission); give --force to rewrite it anyway; nothing was written",
            shown,
        )
    if backup:
        bak = os.path.realpath(target) + ".bak"
        _regular_or_new(bak, bak, "backup path")
    return st


_KINDS = (
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
)


def _regular_or_new(path: str | os.PathLike[str], shown: str, what: str = "output path") -> os.stat_result | None:
    try:
        st = os.stat(path)  # follows links, /proc/self/fd/N ones too (/dev/stdout is the pipe)
    except OSError:
        return None  # a new path (or an unreachable one: the write then says why)
    if stat.S_ISREG(st.st_mode):
        return st
    if stat.S_ISDIR(st.st_mode):
        raise PinitError(f"{what} is a folder; name a file", shown)
    kind = next((k for test, k in _KINDS if test(st.st_mode)), "special file")
    raise PinitError(
        f"{what} is a {kind}, not a regular file; pinit replaces only regular files; nothing was written", shown
    )


def _write_protected(path: str | os.PathLike[str], st: os.stat_result) -> bool:
    no_write_bit = not st.st_mode & 0o222
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if not no_write_bit and as_root:
        return False
    kw = {"effective_ids": True} if os.access in os.supports_effective_ids else {}
    folder = os.path.dirname(os.path.realpath(path)) or "."
    if not os.access(folder, os.W_OK | os.X_OK, **kw):
        return False  # the write fails anyway, and says why
    return no_write_bit or not os.access(path, os.W_OK, **kw)


def _keep_owner(fd: int, st: os.stat_result, shown: str, notes: list[str]) -> None:
    """Give the new file ``st``'s owner and group: root may set both; another user keeps the
    group where it belongs to it.  What cannot be kept is reported."""
    if not hasattr(os, "fchown"):
        return
    now = os.fstat(fd)
    if (now.st_uid, now.st_gid) == (st.st_uid, st.st_gid):
        return
    try:
        os.fchown(fd, st.st_uid, st.st_gid)
        return
    except OSError:
        pass
    if now.st_gid != st.st_gid:
        try:
            os.fchown(fd, -1, st.st_gid)
        except OSError:
            pass
    now = os.fstat(fd)
    lost = []
    if now.st_uid != st.st_uid:
        lost.append(f"owner {_user_name(st.st_uid)} becomes {_user_name(now.st_uid)}")
    if now.st_gid != st.st_gid:
        lost.append(f"group {_group_name(st.st_gid)} becomes {_group_name(now.st_gid)}")
    if lost:
        notes.append(f"{shown}: the rewritten file's {' and its '.join(lost)} (only root may keep them)")


def _user_name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return f"uid {uid}"


def _group_name(gid: int) -> str:
    try:
        import grp

        return grp.getgrgid(gid).gr_name
    except (ImportError, KeyError):
        return f"gid {gid}"


# ---------------------------------------------------------------------------
# temporary files: whose they are, and removing those of dead runs

_host_tag: str | None = None
_TMP_NAME = re.compile(r"\.pinit-tmp-(\d{1,10})-(.*)\.(?:part|bak)", re.DOTALL)
_TAGGED = re.compile(r"([0-9a-f]{8})-(\d+)-[0-9a-z_]+")


def host_tag() -> str:
    """Eight hex digits naming this boot of this machine and this pid namespace: a pid in a
    temporary file's name is judged only where it means the same process."""
    global _host_tag
    if _host_tag is None:
        parts = []
        try:
            with open("/proc/sys/kernel/random/boot_id", "rb") as f:
                parts.append(f.read().strip().decode("ascii", "replace"))
        except OSError:
            parts.append(socket.gethostname())
        try:
            parts.append(os.readlink("/proc/self/ns/pid"))
        except OSError:
            pass
        _host_tag = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]
    return _host_tag


def owner_tag() -> str:
    """``<pid>-<host tag>-<start time>`` of this process: how its temporary files are named."""
    pid = os.getpid()
    return f"{pid}-{host_tag()}-{_process_start(pid) or 0}"


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (``/proc/<pid>/stat`` field 22, clock ticks since boot);
    "" when there is no such process (or only its zombie); None where it cannot be told."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return "" if os.path.exists("/proc/self/stat") else None
    except OSError as e:
        return "" if e.errno == errno.ESRCH else None
    fields = raw[raw.rfind(b")") + 1 :].split()  # after the name, which may hold spaces and parentheses
    if len(fields) < 20:
        return None
    if fields[0] in (b"Z", b"X"):
        return ""
    return fields[19].decode("ascii", "replace")


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        pass  # PermissionError: it runs, as another user
    return True


def _owner_alive(name: str) -> bool | None:
    """Whether the run that made temporary file ``name`` still runs: True, False, or None when
    that cannot be told (another machine, boot or pid namespace; a name with no pid)."""
    m = _TMP_NAME.fullmatch(name)
    if m is None or int(m[1]) <= 0:
        return None
    pid = int(m[1])
    tagged = _TAGGED.fullmatch(m[2])
    if tagged is not None and tagged[1] != host_tag():
        return None
    start = _process_start(pid)
    if start is None:  # no /proc: whether the pid runs, but not whether it is still that process
        return None if _pid_running(pid) else False
    if not start:
        return False
    if tagged is None:  # a pid but no start time (a name not made by this version): it runs
        return None
    return start == tagged[2]  # another start time: the pid was reused


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[str]:
    """Remove from ``folder`` the temporary files (``.pinit-tmp-*.part``, ``.pinit-tmp-*.bak``)
    of runs that ended without cleaning up (``kill -9``, power loss); return their names.

    A temporary file is stale when the process its name records has ended (its pid runs no
    process, or one started at another time: the pid was reused). One whose owner cannot be
    judged here (made on another machine or in another pid namespace, before a reboot, or with
    no pid in its name) is stale once unmodified for a day. The files of live runs, of this
    one or concurrent ones, are never touched. Only regular files are removed; errors are
    ignored (another run may be removing the same file).
    """
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        name = entry.name
        if not (name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIXES)):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        alive = _owner_alive(name)
        if alive or (alive is None and now - st.st_mtime < STALE_AGE_S):
            continue
        try:
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(name)
    return removed


def _backup(target: Path) -> None:
    bak = target.with_name(target.name + ".bak")
    tmp = target.with_name(f"{TMP_PREFIX}{owner_tag()}-{secrets.token_hex(4)}.bak")
    try:
        try:
            os.link(target, tmp)
        except OSError:
            import shutil

            shutil.copy2(target, tmp)
        os.replace(tmp, bak)
    except BaseException:
        _unlink(str(tmp))
        raise


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

            try:
                # the process's own symbols, libc's among them (ctypes.util.find_library would
                # run ldconfig in a subprocess)
                libc = ctypes.CDLL(None, use_errno=True)
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
