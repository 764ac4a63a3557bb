"""``pinit reinit`` under real write faults, in real processes (SPEC sections 5 and 7).

The contract: a write goes to a temporary file in the target's folder (``.pinit-tmp-*.part``),
is fsynced and renamed over the target, so whatever happens the target is either the complete
old file or the complete new one, and a failed run says so in one ``error:`` line and leaves
no temporary file behind.  Everything here runs ``python -m pinit`` as a child process and
hurts it for real: SIGKILL while the temporary file grows, a file-size limit, a full
filesystem, a folder it may not write, two runs racing on one file.

(``tests/test_reinit_io.py`` injects single faults in-process; this is the systematic layer.)
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import Result, assert_one_error_line

# kill -9 runs, file-size limits, full disks, concurrent writers: `pytest -m 'not slow'` skips them
pytestmark = pytest.mark.slow

PINIT = [sys.executable, "-m", "pinit"]
TMP_PREFIX = ".pinit-tmp-"
MB = 1 << 20

# ---------------------------------------------------------------------------
# helpers


@pytest.fixture(autouse=True)
def _remove_tmp_path(tmp_path: Path) -> Iterator[None]:
    """Big files do not outlive their test (pytest keeps the last runs' temporary folders)."""
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)


def cmd(*args: str | os.PathLike[str]) -> list[str]:
    return [*PINIT, *(os.fspath(a) for a in args)]


def spawn(*args: str | os.PathLike[str], **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cmd(*args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def finish(p: subprocess.Popen[str], timeout: float = 120) -> Result:
    out, err = p.communicate(timeout=timeout)
    return Result(p.returncode, out, err)


def run_all(runs: Sequence[tuple[Sequence[str | os.PathLike[str]], dict[str, Any]]]) -> list[Result]:
    """Start every ``(args, popen kwargs)`` at once (two cores: most of a run is importing torch), wait for all."""
    procs = [spawn(*args, **kw) for args, kw in runs]
    return [finish(p) for p in procs]


def ok(r: Result) -> Result:
    assert r.exit_code == 0, (r.exit_code, r.stdout, r.stderr)
    return r


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 * MB):
            h.update(chunk)
    return h.hexdigest()


def temp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(TMP_PREFIX))


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (names and hashes): 'nothing was written' is snapshot equality."""
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """A safetensors file written by hand (header + raw bytes), without building torch tensors."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    codes = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int64): "I64"}
    pos = 0
    for name, a in tensors.items():
        header[name] = {"dtype": codes[a.dtype], "shape": list(a.shape), "data_offsets": [pos, pos + a.nbytes]}
        pos += a.nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for a in tensors.values():
            f.write(np.ascontiguousarray(a).tobytes())


def big_tensors(total_mb: float, seed: int = 0) -> dict[str, np.ndarray]:
    """``total_mb`` MiB of float32 in 8 equal layers, then a small ``head.weight`` (the one re-initialized)."""
    per = int(total_mb * MB) // 8 // 4 // 256 * 256
    base = np.random.default_rng(seed).standard_normal(per, dtype=np.float32)
    out = {f"layer.{i}.weight": (base + np.float32(i)).reshape(-1, 256) for i in range(8)}
    out["head.weight"] = np.full((64, 64), 3.0, dtype=np.float32)
    return out


def save_big(path: Path, total_mb: float) -> None:
    tensors = big_tensors(total_mb)
    if path.suffix == ".safetensors":
        write_safetensors(path, tensors, {"format": "pt", "note": "big"})
    else:
        sd = {k: torch.from_numpy(v) for k, v in tensors.items()}
        torch.save({"state_dict": sd, "epoch": 7, "hparams": {"lr": 0.1}}, path)


def head_name(path: Path) -> str:
    return "head.weight" if path.suffix == ".safetensors" else "state_dict.head.weight"


def loadable(path: Path) -> None:
    """The file opens with the reference library and every tensor's header is sane."""
    with path.open("rb") as f:
        magic = f.read(4)
    if magic.startswith(b"PK"):
        obj = torch.load(path, weights_only=True, mmap=True, map_location="cpu")
        assert isinstance(obj, dict) and obj, type(obj)
        sd = obj.get("state_dict", obj)
        assert all(isinstance(t, torch.Tensor) for t in sd.values())
    else:
        with safe_open(os.fspath(path), framework="pt") as f:
            keys = list(f.keys())
            assert keys
            for k in keys:
                f.get_slice(k).get_shape()
            assert f.get_tensor(keys[-1]).numel() >= 0


def tensors_bytes(path: Path) -> dict[str, bytes]:
    """{name: raw bytes} of a safetensors or torch file (via the reference libraries)."""
    with path.open("rb") as f:
        magic = f.read(4)
    if magic.startswith(b"PK"):
        obj = torch.load(path, weights_only=True, map_location="cpu")
        sd, prefix = (obj["state_dict"], "state_dict.") if "state_dict" in obj else (obj, "")
        return {prefix + k: v.contiguous().view(-1).view(torch.uint8).numpy().tobytes() for k, v in sd.items()}
    with safe_open(os.fspath(path), framework="np") as f:
        return {k: f.get_tensor(k).tobytes() for k in f.keys()}  # noqa: SIM118


def reinit_args(target: Path, seed: int = 0) -> list[str | os.PathLike[str]]:
    return ["reinit", target, "--match", f"^{head_name(target)}$", "--scheme", "normal", "--seed", str(seed)]


# ---------------------------------------------------------------------------
# SIGKILL while the temporary file grows


@pytest.fixture(scope="module")
def big_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Path, str]]]:
    """~200 MB pristine originals (safetensors and torch zip) with their hashes; deleted at the end.

    Tests hard-link them into their own folders: a correct writer replaces the *name* with a new
    file and never writes into the original inode, so the pristine copy stays pristine."""
    base = tmp_path_factory.mktemp("big")
    files = {}
    for ext in (".safetensors", ".pt"):
        p = base / f"pristine{ext}"
        save_big(p, 200)
        files[ext] = (p, sha256(p))
    yield files
    shutil.rmtree(base, ignore_errors=True)


def kill_when_temp_reaches(args: Sequence[str | os.PathLike[str]], watch: Path, threshold: int) -> tuple[int, int]:
    """Run pinit; SIGKILL it as soon as a temporary file in ``watch`` holds ``threshold`` bytes.

    Returns (size of the temporary file when the kill was sent, or -1 if it never got there; exit status)."""
    p = subprocess.Popen(cmd(*args), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = -1
    deadline = time.monotonic() + 120
    try:
        while seen < 0 and p.poll() is None and time.monotonic() < deadline:
            for entry in os.scandir(watch):
                if entry.name.startswith(TMP_PREFIX) and entry.name.endswith(".part"):
                    try:
                        size = entry.stat().st_size
                    except FileNotFoundError:
                        continue
                    if size >= threshold:
                        os.kill(p.pid, signal.SIGKILL)
                        seen = size
                        break
            else:
                time.sleep(0.0005)
    finally:
        if p.poll() is None and seen < 0:
            p.kill()
        p.communicate(timeout=60)
    return seen, p.returncode


# (format, mode, kill points: a fraction of the original's size written, or 4 MiB: just begun);
# each format is killed early, halfway and at the very end (95 %: the last writes and the fsync)
KILL_CASES = [
    (".safetensors", "in_place", ["4MiB", 0.95]),
    (".safetensors", "out", [0.5]),
    (".pt", "in_place", [0.95]),
    (".pt", "out", ["4MiB", 0.5]),
]
ATTEMPTS = 4


@pytest.mark.parametrize(("ext", "mode", "points"), KILL_CASES, ids=[f"{e[1:]}-{m}" for e, m, _ in KILL_CASES])
def test_sigkill_while_the_temporary_file_grows_leaves_the_original(
    tmp_path: Path, big_files: dict[str, tuple[Path, str]], ext: str, mode: str, points: list[Any]
) -> None:
    pristine, digest = big_files[ext]
    size = pristine.stat().st_size
    src_dir, dst_dir = tmp_path / "src", tmp_path / "dst"
    src_dir.mkdir()
    dst_dir.mkdir()
    src = src_dir / f"model{ext}"
    os.link(pristine, src)
    if mode == "in_place":
        target, extra = src, []
    else:
        # --out over an existing (older, smaller) file of the same format, in another folder
        target = dst_dir / f"old{ext}"
        save_big(target, 8)
        extra = ["--out", target]
    target_digest = sha256(target)
    watch = target.parent
    caught: list[tuple[Any, int]] = []
    for point in points:
        threshold = 4 * MB if point == "4MiB" else int(size * point)
        for _ in range(ATTEMPTS):
            at, status = kill_when_temp_reaches([*reinit_args(src), *extra], watch, threshold)
            left = temp_files(watch)
            # The invariant, whatever the timing: the target is complete (old or new) and loadable.
            loadable(target)
            if left:
                assert status == -signal.SIGKILL, status
                assert sha256(target) == target_digest, f"target changed while a temporary file was left ({point})"
                assert sha256(src) == digest
                caught.append((point, at))
                for t in left:
                    t.unlink()
                break
            # Too late (the rename had happened): the target is the complete new file; start over.
            assert status in (0, -signal.SIGKILL), status
            if mode == "in_place":
                src.unlink()
                os.link(pristine, src)
            else:
                target.unlink()
                save_big(target, 8)
                target_digest = sha256(target)
        else:
            pytest.fail(f"never caught the write in flight at {point} in {ATTEMPTS} attempts")
    assert [p for p, _ in caught] == points
    # every kill happened with a partial temporary file of at least the threshold
    assert all(at >= (4 * MB if p == "4MiB" else int(size * p)) for p, at in caught), caught
    # The original (and an existing --out target) is byte-identical and pinit reads it, with a
    # killed run's leftover temporary file beside it (a folder with one checkpoint is that file).
    assert sha256(src) == digest
    assert sha256(target) == target_digest
    (watch / f"{TMP_PREFIX}leftover.part").write_bytes(b"\0" * 4096)
    r = ok(finish(spawn("inspect", watch, "--no-stats", "--format", "json")))
    assert r.json()["summary"]["tensors"] == 9
    assert head_name(target) in {t["name"] for t in r.json()["tensors"]}


# ---------------------------------------------------------------------------
# a file-size limit (RLIMIT_FSIZE): the write fails with EFBIG midway


def limit_file_size(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed by SIGXFSZ
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


# (input format, --out suffix or None for in place): both writers, each from the other format
# (in place under a 64 KiB limit is in tests/test_reinit_io.py)
FSIZE_CASES = [(".safetensors", ".pt"), (".pt", ".safetensors")]


def test_file_size_limit_midway_is_one_error_line_and_leaves_everything(tmp_path: Path) -> None:
    runs, folders = [], []
    for i, (ext, out_ext) in enumerate(FSIZE_CASES):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        src = folder / f"model{ext}"
        save_big(src, 4)  # ~4 MB; the child may write at most 1 MiB per file
        extra: list[str | os.PathLike[str]] = [] if out_ext is None else ["--out", folder / f"new{out_ext}"]
        folders.append((folder, snapshot(folder), folder / f"new{out_ext}" if out_ext else src))
        runs.append(([*reinit_args(src), *extra], {"preexec_fn": limit_file_size(1 * MB)}))
    for (folder, before, target), r, case in zip(folders, run_all(runs), FSIZE_CASES):
        assert_one_error_line(r)
        line = r.stderr.strip()
        assert target.name in line, (case, line)
        assert "file too large" in line and "original is unchanged" in line, (case, line)
        assert "internal error" not in line and "Traceback" not in r.stderr
        assert snapshot(folder) == before, case  # original intact, no output, no temporary file


# ---------------------------------------------------------------------------
# a full filesystem (a 2 MiB tmpfs): the file fits, its rewrite does not


def mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", where], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip() or p.returncode})")


def umount(where: Path) -> None:
    subprocess.run(["umount", "-l", where], capture_output=True)


def test_full_disk_midway_is_one_error_line_and_leaves_the_original(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    mounts = [tmp_path / "st", tmp_path / "pt"]
    try:
        for m in mounts:
            mount_tmpfs(m, "2m")
        srcs = [mounts[0] / "model.safetensors", mounts[1] / "model.pt"]
        for src in srcs:
            save_big(src, 1.25)  # fits in 2 MiB once, not twice
        befores = [snapshot(m) for m in mounts]
        results = run_all([(reinit_args(src), {}) for src in srcs])
        for m, src, before, r in zip(mounts, srcs, befores, results):
            assert_one_error_line(r)
            line = r.stderr.strip()
            assert "No space left on device" in line and src.name in line, line
            assert "original is unchanged" in line, line
            assert snapshot(m) == before  # original byte-identical, no temporary file
            loadable(src)
    finally:
        for m in mounts:
            umount(m)


# ---------------------------------------------------------------------------
# a folder the process may not write


PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3


def as_nobody() -> None:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


def root_without_dac_override() -> None:
    """Still uid 0, but without the capabilities that let root ignore permission bits."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def can_run_as(preexec: Callable[[], None], cwd: Path) -> bool:
    try:
        p = subprocess.run(
            [sys.executable, "-c", "import pinit.cli"], preexec_fn=preexec, cwd=cwd, capture_output=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):  # e.g. the interpreter is not executable by that user
        return False
    return p.returncode == 0


@pytest.mark.parametrize("how", ["nobody", "root_without_dac_override", "read_only_bind_mount"])
def test_read_only_target_folder_is_one_error_line_and_writes_nothing(how: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (to drop privileges, or to bind-mount)")
    # Not under pytest's tmp_path: that is mode 0700, which 'nobody' cannot enter.
    base = Path(tempfile.mkdtemp(prefix="pinit-ro-"))
    mounted = False
    try:
        base.chmod(0o755)
        ro, rw = base / "ro", base / "rw"
        ro.mkdir()
        rw.mkdir()
        st = ro / "model.safetensors"
        save_big(st, 1)
        pt_src = rw / "model.pt"
        save_big(pt_src, 1)
        for p in (st, pt_src):
            p.chmod(0o644)
        preexec: Callable[[], None] | None = None
        if how == "nobody":
            if not can_run_as(as_nobody, base):
                pytest.skip("user nobody cannot run this interpreter (it lives under a private folder)")
            preexec = as_nobody
            ro.chmod(0o555)
        elif how == "root_without_dac_override":
            if not can_run_as(root_without_dac_override, base):
                pytest.skip("cannot drop CAP_DAC_OVERRIDE here")
            preexec = root_without_dac_override
            ro.chmod(0o555)
        else:
            p = subprocess.run(["mount", "--bind", ro, ro], capture_output=True, text=True)
            if p.returncode != 0:
                pytest.skip(f"cannot bind-mount here ({p.stderr.strip()})")
            mounted = True
            p = subprocess.run(["mount", "-o", "remount,bind,ro", ro], capture_output=True, text=True)
            if p.returncode != 0:
                pytest.skip(f"cannot remount read-only here ({p.stderr.strip()})")
        before = snapshot(ro)
        kw = {"preexec_fn": preexec, "cwd": base} if preexec else {"cwd": base}
        # in place in the read-only folder (safetensors writer), or --out into it from elsewhere (torch writer)
        if how == "read_only_bind_mount":
            args, name = [*reinit_args(pt_src), "--out", ro / "new.pt"], "new.pt"
        else:
            args, name = reinit_args(st), "model.safetensors"
        r = finish(spawn(*args, **kw))
        assert_one_error_line(r)
        line = r.stderr.strip()
        reason = "Read-only file system" if how == "read_only_bind_mount" else "Permission denied"
        assert name in line and reason in line and "original is unchanged" in line, line
        assert snapshot(ro) == before  # nothing written, nothing left
        loadable(st)
    finally:
        if mounted:
            umount(base / "ro")
        for p in (base / "ro", base / "rw"):
            if p.exists():
                p.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------
# --out naming the input itself


def seed_of(seed: int, name: str) -> int:
    """The documented per-tensor generator seed (README: sha256 of "{seed}:{name}", low 63 bits)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def expected_head(seed: int, name: str) -> bytes:
    """What ``--scheme normal --seed SEED`` writes into the 64x64 float32 ``head.weight``."""
    t = torch.empty(64, 64)
    torch.nn.init.normal_(t, generator=torch.Generator().manual_seed(seed_of(seed, name)))
    return t.numpy().tobytes()


# (input format, how --out names the input): every spelling once, the torch writer through a link
OUT_SPELLINGS = [(".safetensors", "same"), (".safetensors", "dot"), (".safetensors", "symlink"), (".pt", "symlink")]


def test_out_naming_the_input_by_any_spelling_is_in_place(tmp_path: Path) -> None:
    """``--out model``, ``--out ./model`` (relative to the working folder) and ``--out link`` (a
    symlink to the input) all do what an in-place run does: the input file is replaced by a
    valid result, nothing else is left in the folder, and a link stays a link."""
    runs, cases = [], []
    for ext, spelling in OUT_SPELLINGS:
        folder = tmp_path / f"{spelling}{ext}.d"
        folder.mkdir()
        src = folder / f"model{ext}"
        save_big(src, 2)
        out: str | Path = {"same": src, "dot": f"./model{ext}", "symlink": folder / f"link{ext}"}[spelling]
        if spelling == "symlink":
            (folder / f"link{ext}").symlink_to(f"model{ext}")
        runs.append(([*reinit_args(src, seed=5), "--out", out], {"cwd": folder}))
        cases.append((ext, spelling, folder, src))
    original = {k: v.tobytes() for k, v in big_tensors(2).items()}
    for (ext, spelling, folder, src), r in zip(cases, run_all(runs)):
        ok(r)
        names = sorted(p.name for p in folder.iterdir())
        assert names == sorted([src.name] + ([f"link{ext}"] if spelling == "symlink" else [])), (ext, spelling, names)
        if spelling == "symlink":
            assert (folder / f"link{ext}").is_symlink(), "the link was replaced by a file"
        loadable(src)
        got = tensors_bytes(src)
        head = head_name(src)
        assert got[head] == expected_head(5, head), (ext, spelling)
        prefix = "" if ext == ".safetensors" else "state_dict."
        assert {k: v for k, v in got.items() if k != head} == {
            prefix + k: v for k, v in original.items() if k != "head.weight"
        }
    st_outputs = {(f / "model.safetensors").read_bytes() for ext, _, f, _ in cases if ext == ".safetensors"}
    assert len(st_outputs) == 1  # byte-identical whatever the spelling


# ---------------------------------------------------------------------------
# two runs racing on one file

# the file format of each round: two runs with seeds 1 and 2 started together on one ~32 MB file
CONCURRENT_ROUNDS = [".safetensors", ".pt", ".safetensors", ".pt", ".safetensors"]


def test_two_concurrent_runs_on_one_file_leave_exactly_one_complete_result(tmp_path: Path) -> None:
    pristine = {}
    for ext in (".safetensors", ".pt"):
        pristine[ext] = tmp_path / f"pristine{ext}"
        save_big(pristine[ext], 32)
    original = {ext: tensors_bytes(p) for ext, p in pristine.items()}
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    winners = []
    for ext in CONCURRENT_ROUNDS:
        work = work_dir / f"model{ext}"
        os.link(pristine[ext], work)
        for r in run_all([(reinit_args(work, seed=s), {}) for s in (1, 2)]):
            ok(r)  # both runs succeed; the last rename wins
        assert sorted(p.name for p in work_dir.iterdir()) == [work.name]  # no temporary file left
        loadable(work)
        got = tensors_bytes(work)
        head = head_name(work)
        winner = [s for s in (1, 2) if got[head] == expected_head(s, head)]
        assert len(winner) == 1, "the re-initialized tensor is neither run's result"
        before = original[ext]
        changed = sorted(k for k in got.keys() | before.keys() if k != head and got.get(k) != before.get(k))
        assert not changed, f"round {len(winners)} ({ext}): unselected tensors changed: {changed}"
        if ext == ".safetensors":  # the header belongs to the same run as the data: no mix
            with safe_open(os.fspath(work), framework="np") as f:
                metadata = f.metadata()
            assert json.loads(metadata["pinit"])["seed"] == winner[0] and metadata["note"] == "big"
        else:  # the non-tensor content is intact
            obj = torch.load(work, weights_only=True, mmap=True)
            assert (obj["epoch"], obj["hparams"]) == (7, {"lr": 0.1})
        winners.append(winner[0])
        work.unlink()
    assert len(winners) == len(CONCURRENT_ROUNDS)
