"""Write safety of ``pinit reinit`` (SPEC section 7, "Resources and files").

Writes never replace anything but a regular file or a new path; an in-place rewrite keeps the
file's mode, owner and group, refuses a write-protected file unless ``--force``, and warns that
other hard links keep the old content; temporary files left by a killed run are removed by the
next run in that folder, and those of live runs are kept.  Everything goes through the real CLI,
on copies of ``sample_checkpoints/`` in ``tmp_path``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pinit.writers
from conftest import SAMPLES, Result, assert_one_error_line, run_cli

TMP_PREFIX = ".pinit-tmp-"
FORMATS = [".safetensors", ".pt"]


def sample(tmp_path: Path, ext: str, name: str = "model") -> Path:
    """A copy of the tiny CNN sample in ``tmp_path`` (never written in ``sample_checkpoints/``)."""
    dst = tmp_path / f"{name}{ext}"
    shutil.copyfile(SAMPLES / f"tiny_cnn{ext}", dst)
    dst.chmod(0o644)
    return dst


def reinit(path: Path, *extra: str | os.PathLike[str]) -> Result:
    return run_cli("reinit", path, "--match", "weight", "--scheme", "zeros", "--seed", "0", *extra)


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TMP_PREFIX))


def as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process (not pinit) whose pid names temporary files that must be kept."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield p
    p.kill()
    p.wait()


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---------------------------------------------------------------------------
# only a regular file or a new path is replaced


def test_out_dev_null_is_refused_and_stays_a_device(tmp_path: Path) -> None:
    src = sample(tmp_path, ".pt")
    before = src.read_bytes()
    null = os.stat("/dev/null")
    assert stat.S_ISCHR(null.st_mode)
    r = reinit(src, "--out", "/dev/null")
    assert_one_error_line(r)
    assert "/dev/null" in r.stderr and "not a regular file" in r.stderr, r.stderr
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == null.st_rdev and after.st_ino == null.st_ino
    assert src.read_bytes() == before
    assert temp_files(Path("/dev")) == []


def test_out_to_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    src = sample(tmp_path, ".safetensors")
    fifo = tmp_path / "out.safetensors"
    os.mkfifo(fifo)
    # a child process: were the FIFO opened for writing, it would block, and the timeout tells
    p = subprocess.run(
        [sys.executable, "-m", "pinit", "reinit", src, "--match", "weight", "--scheme", "zeros", "--out", fifo],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert_one_error_line(Result(p.returncode, p.stdout, p.stderr))
    assert "FIFO" in p.stderr and "not a regular file" in p.stderr, p.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("kind", ["socket", "folder", "symlink_to_fifo", "backup_is_a_folder"])
def test_other_non_regular_targets_are_refused_before_anything_is_written(tmp_path: Path, kind: str) -> None:
    src = sample(tmp_path, ".safetensors")
    before = src.read_bytes()
    extra: list[str | os.PathLike[str]]
    if kind == "socket":
        target = tmp_path / "out.safetensors"
        s = socket.socket(socket.AF_UNIX)
        s.bind(os.fspath(target))
        extra, word = ["--out", target], "socket"
    elif kind == "folder":
        target = tmp_path / "out.safetensors"
        target.mkdir()
        extra, word = ["--out", target], "folder"
    elif kind == "symlink_to_fifo":
        os.mkfifo(tmp_path / "fifo")
        target = tmp_path / "link.safetensors"
        target.symlink_to("fifo")
        extra, word = ["--out", target], "FIFO"
    else:  # --backup would replace model.safetensors.bak, a folder
        (tmp_path / "model.safetensors.bak").mkdir()
        extra, word = ["--backup"], "folder"
    try:
        r = reinit(src, *extra)
    finally:
        if kind == "socket":
            s.close()
    assert_one_error_line(r)
    assert word in r.stderr, r.stderr
    assert src.read_bytes() == before
    assert temp_files(tmp_path) == []


def test_symlink_to_a_regular_file_is_written_through(tmp_path: Path) -> None:
    src = sample(tmp_path, ".safetensors")
    old = tmp_path / "old.safetensors"
    shutil.copyfile(src, old)
    link = tmp_path / "link.safetensors"
    link.symlink_to("old.safetensors")
    r = reinit(src, "--out", link)
    assert r.exit_code == 0, r.stderr
    assert link.is_symlink() and old.read_bytes() != src.read_bytes()


# ---------------------------------------------------------------------------
# write-protected files: refused without --force; the mode is kept


@pytest.mark.parametrize("ext", FORMATS)
def test_read_only_input_is_refused_in_place_without_force(tmp_path: Path, ext: str) -> None:
    src = sample(tmp_path, ext)
    src.chmod(0o444)
    before = src.read_bytes()
    r = reinit(src)
    assert_one_error_line(r)
    assert "read-only" in r.stderr and "--force" in r.stderr and src.name in r.stderr, r.stderr
    assert src.read_bytes() == before  # byte for byte
    assert stat.S_IMODE(src.stat().st_mode) == 0o444
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("ext", FORMATS)
def test_read_only_input_is_rewritten_with_force_and_stays_read_only(tmp_path: Path, ext: str) -> None:
    src = sample(tmp_path, ext)
    src.chmod(0o444)
    before = src.read_bytes()
    r = reinit(src, "--force")
    assert r.exit_code == 0, r.stderr
    assert src.read_bytes() != before
    assert stat.S_IMODE(src.stat().st_mode) == 0o444
    assert temp_files(tmp_path) == []
    check = run_cli("inspect", src, "--format", "json")
    assert check.exit_code == 0, check.stderr
    assert {t["name"]: t["stats"]["max"] for t in check.json()["tensors"]}["fc.weight"] == 0


def test_read_only_input_to_a_new_out_needs_no_force(tmp_path: Path) -> None:
    src = sample(tmp_path, ".pt")
    src.chmod(0o444)
    before = src.read_bytes()
    r = reinit(src, "--out", tmp_path / "new.safetensors")
    assert r.exit_code == 0, r.stderr
    assert src.read_bytes() == before
    assert (tmp_path / "new.safetensors").is_file()


def test_out_over_an_existing_read_only_file_needs_force(tmp_path: Path) -> None:
    src = sample(tmp_path, ".safetensors")
    dst = sample(tmp_path, ".safetensors", "dst")
    dst.chmod(0o400)
    r = reinit(src, "--out", dst)
    assert_one_error_line(r)
    assert "--force" in r.stderr
    assert dst.read_bytes() == src.read_bytes()
    assert reinit(src, "--out", dst, "--force").exit_code == 0
    assert dst.read_bytes() != src.read_bytes()
    assert stat.S_IMODE(dst.stat().st_mode) == 0o400


def test_library_reinit_takes_force(tmp_path: Path) -> None:
    src = sample(tmp_path, ".safetensors")
    src.chmod(0o444)
    with pytest.raises(pinit.PinitError, match="--force"):
        pinit.reinit(src, match=["weight"], scheme="zeros", seed=0)
    result = pinit.reinit(src, match=["weight"], scheme="zeros", seed=0, force=True)
    assert result.files_written == [os.fspath(src)]
    assert stat.S_IMODE(src.stat().st_mode) == 0o444


# ---------------------------------------------------------------------------
# mode, owner and group are kept


@pytest.mark.parametrize("ext", FORMATS)
def test_in_place_rewrite_keeps_owner_group_and_mode(tmp_path: Path, ext: str) -> None:
    if not as_root():
        pytest.skip("needs root (to give the input another owner)")
    src = sample(tmp_path, ext)
    os.chown(src, 65534, 65534)
    src.chmod(0o2640)  # setgid too (chown clears it; it must come back)
    before = src.read_bytes()
    r = reinit(src)
    assert r.exit_code == 0, r.stderr
    st = src.stat()
    assert src.read_bytes() != before
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert stat.S_IMODE(st.st_mode) == 0o2640
    assert "owner" not in r.stderr, r.stderr


# ---------------------------------------------------------------------------
# hard links


@pytest.mark.parametrize("ext", FORMATS)
def test_hard_link_split_is_a_warning_and_the_other_link_keeps_the_old_bytes(tmp_path: Path, ext: str) -> None:
    src = sample(tmp_path, ext)
    other = tmp_path / f"other{ext}"
    os.link(src, other)
    before = src.read_bytes()
    r = reinit(src)
    assert r.exit_code == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert any("1 other hard link" in w and "old content" in w for w in warnings), r.stderr
    assert other.read_bytes() == before
    assert src.read_bytes() != before
    assert src.stat().st_nlink == 1 and other.stat().st_nlink == 1


def test_no_hard_link_warning_for_a_single_link(tmp_path: Path) -> None:
    src = sample(tmp_path, ".safetensors")
    r = reinit(src)
    assert r.exit_code == 0, r.stderr
    assert "hard link" not in r.stderr


# ---------------------------------------------------------------------------
# temporary files of dead runs are removed; those of live ones kept


def test_stale_temp_files_are_removed_and_live_ones_kept(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    src = sample(tmp_path, ".safetensors")
    dead, live = dead_pid(), sleeper.pid
    tag = pinit.writers.host_tag()
    live_start = pinit.writers._process_start(live)
    if not live_start:
        pytest.skip("no /proc here: whether a pid was reused cannot be told")
    stale = [
        f"{TMP_PREFIX}{dead}-x.part",  # a dead pid
        f"{TMP_PREFIX}{dead}-{tag}-{live_start}-abcd1234.part",  # a dead pid, named as pinit names them
        f"{TMP_PREFIX}{dead}-{tag}-{live_start}-abcd1234.bak",  # the temporary file of a --backup
        f"{TMP_PREFIX}{live}-{tag}-1-abcd1234.part",  # a live pid, but started at another time: reused
        f"{TMP_PREFIX}olderrun.part",  # no pid, unmodified for two days
    ]
    kept = [
        f"{TMP_PREFIX}{live}-x.part",  # a live pid
        f"{TMP_PREFIX}{live}-{tag}-{live_start}-abcd1234.part",  # a live process, exactly
        f"{TMP_PREFIX}{dead}-00000000-{live_start}-abcd1234.part",  # another machine's: cannot judge
        f"{TMP_PREFIX}recent.part",  # no pid, recent
    ]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"\0" * 64)
    two_days_ago = time.time() - 2 * 86400
    os.utime(tmp_path / f"{TMP_PREFIX}olderrun.part", (two_days_ago, two_days_ago))
    # a folder with a temporary file's name is not a file to remove
    (tmp_path / f"{TMP_PREFIX}{dead}-dir.part").mkdir()
    kept.append(f"{TMP_PREFIX}{dead}-dir.part")
    r = reinit(src)
    assert r.exit_code == 0, r.stderr
    assert temp_files(tmp_path) == sorted(kept)


def test_temp_files_are_named_after_their_process(tmp_path: Path) -> None:
    tag = pinit.writers.owner_tag()
    assert tag.startswith(f"{os.getpid()}-{pinit.writers.host_tag()}-")
    with pinit.writers.atomic_file(tmp_path / "x.bin") as fd:
        os.write(fd, b"x")
        (name,) = temp_files(tmp_path)
    assert name.startswith(f"{TMP_PREFIX}{tag}-") and name.endswith(".part")
    assert pinit.writers._owner_alive(name) is True
    assert (tmp_path / "x.bin").read_bytes() == b"x"


def test_temp_file_of_a_killed_run_is_removed_by_the_next_run(tmp_path: Path) -> None:
    src = sample(tmp_path, ".safetensors")
    before = src.read_bytes()
    cmd = [sys.executable, "-m", "pinit", "reinit", src, "--match", "weight", "--scheme", "zeros", "--seed", "0"]
    left: list[str] = []
    for _ in range(5):  # the temporary file lives while torch is imported: about a second
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while p.poll() is None and time.monotonic() < deadline and not temp_files(tmp_path):
            time.sleep(0.001)
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        _, err = p.communicate(timeout=60)
        assert p.returncode in (0, -signal.SIGKILL), err.decode(errors="replace")
        left = temp_files(tmp_path)
        if left:
            break
        shutil.copyfile(SAMPLES / "tiny_cnn.safetensors", src)  # too late: it finished; again
    else:
        pytest.fail("never caught the run with its temporary file in place")
    assert p.returncode == -signal.SIGKILL
    assert src.read_bytes() == before  # the killed run changed nothing
    assert len(left) == 1 and left[0].startswith(f"{TMP_PREFIX}{p.pid}-"), left
    r = reinit(src)
    assert r.exit_code == 0, r.stderr
    assert temp_files(tmp_path) == []
    assert src.read_bytes() != before
