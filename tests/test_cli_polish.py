"""The rough edges a new user hits (issue 11, items 5 and 6, CLI parts), through the real CLI:
bare ``pinit``, readable help, shell completion, plurals, ``--no-stats`` wording, no seed for
schemes that draw nothing, ``-q`` everywhere, ``--quiet`` keeping warnings about lost content,
``--no-warnings``, and progress bars on a terminal for reinit, diff and check."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import SAMPLES, Result, run_cli, run_subprocess, save_checkpoint

COMMANDS = ("inspect", "reinit", "check", "diff", "schemes")


def run_on_terminal(*args: str | os.PathLike[str], env: dict[str, str] | None = None) -> Result:
    """``python -m pinit ARGS`` with stderr on a pseudo-terminal (stdout a pipe), as when a
    user runs it in a terminal and redirects the output."""
    master, slave = pty.openpty()
    p = subprocess.Popen(
        [sys.executable, "-m", "pinit", *(os.fspath(a) for a in args)],
        stdout=subprocess.PIPE,
        stderr=slave,
        env={**os.environ, "COLUMNS": "100", **(env or {})},
    )
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side
                break
            if not data:
                break
            chunks.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        out, _ = p.communicate(timeout=120)
    finally:
        reader.join(10)
        os.close(master)
    return Result(p.returncode, out.decode(), b"".join(chunks).decode(errors="replace"))


SMALL_WORK = {"PINIT_PROGRESS_MIN_BYTES": "1"}  # a bar even for a few KB of work


@pytest.fixture
def one(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "one.safetensors", {"w": torch.tensor([[0.1, -0.2, 0.3], [0.4, -0.5, 0.6]])})


@pytest.fixture
def tied_pt(tmp_path: Path) -> Path:
    """A torch checkpoint with tied tensors and non-tensor content."""
    w = torch.randn(8, 4)
    return save_checkpoint(
        tmp_path / "tied.pt",
        {"model": {"emb": w, "head": w, "norm": torch.ones(4)}, "epoch": 3, "step": 120},
    )


# --- bare pinit, help, metavars, defaults ----------------------------------------------------


def test_bare_pinit_shows_help_and_exits_0() -> None:
    for r in (run_cli(), run_subprocess()):
        assert r.exit_code == 0, r.stderr
        assert r.stdout.startswith("Usage: pinit [OPTIONS] COMMAND [ARGS]..."), r.stdout
        assert "Commands:" in r.stdout and "inspect" in r.stdout
        assert "error" not in r.stderr


def test_help_unchanged() -> None:
    r = run_cli("--help")
    assert r.exit_code == 0
    assert r.stdout.startswith("Usage: pinit [OPTIONS] COMMAND [ARGS]...")
    assert r.stdout == run_cli().stdout


def help_of(cmd: str) -> str:
    r = run_cli(cmd, "--help")
    assert r.exit_code == 0, r.stderr
    return r.stdout


def all_commands() -> list[str]:
    import typer.main

    from pinit.cli import app

    return sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("cmd", all_commands())
def test_readable_placeholders(cmd: str) -> None:
    text = help_of(cmd)
    assert not re.search(r"<[a-z ]+>", text), text  # no <str>, <float range>, <int>
    assert not re.search(r"\{[a-z_]+\}", text), text  # no {path}, {a} {b}
    assert "1000000.0" not in text and "x>=0.0" not in text, text
    assert re.search(r"-q, --quiet", text), text


def test_usage_lines() -> None:
    assert "Usage: pinit inspect [OPTIONS] [PATH]\n" in help_of("inspect")  # or --model instead of PATH
    assert "Usage: pinit reinit [OPTIONS] PATH\n" in help_of("reinit")
    assert "Usage: pinit diff [OPTIONS] A B\n" in help_of("diff")
    assert "Usage: pinit check [OPTIONS] PATH...\n" in help_of("check")
    assert "Usage: pinit init [OPTIONS] MODULE:CALLABLE\n" in help_of("init")


def test_option_placeholders_and_defaults() -> None:
    inspect, reinit, check, diff = (help_of(c) for c in ("inspect", "reinit", "check", "diff"))
    for text in (inspect, reinit, check):
        flat = " ".join(text.split())
        assert "--max-abs FLOAT" in flat and "default: 1e6" in flat, text
    assert "-m, --match RE" in inspect and "-x, --exclude RE" in inspect
    assert "--values N" in inspect
    assert "--plan FILE" in reinit and "--seed N" in reinit and "--std FLOAT" in reinit
    assert "--allow-global MODULE.NAME" in reinit
    assert "-f, --format [table|json]" in diff
    assert "--atol FLOAT" in diff and "default: 0; x>=0" in " ".join(diff.split())
    assert "[default: error]" in " ".join(check.split())


def test_missing_argument_names_it_in_capitals() -> None:
    r = run_cli("diff", "a.pt")
    assert r.exit_code == 2
    assert "'B'" in r.stderr, r.stderr


# --- shell completion --------------------------------------------------------------------------


def test_show_completion_bash() -> None:
    # run from bash: Typer detects the shell from the parent process ("; exit $?" keeps bash from
    # exec-ing python in its place, which would leave whatever ran pytest as the parent)
    p = subprocess.run(
        ["bash", "-c", f"'{sys.executable}' -m pinit --show-completion; exit $?"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SHELL": "/bin/bash"},
    )
    assert p.returncode == 0, p.stderr
    assert "_pinit_completion" in p.stdout and "complete " in p.stdout, p.stdout


def test_completion_completes_commands_and_options() -> None:
    def complete(words: str, cword: int) -> list[str]:
        env = {"_PINIT_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
        r = run_subprocess(env=env)
        assert r.exit_code == 0, r.stderr
        return r.stdout.split()

    assert complete("pinit ins", 1) == ["inspect"]
    assert "--scheme" in complete("pinit reinit m.pt --sch", 3)
    assert complete("pinit diff a b --format ", 5) == ["table", "json"]


def test_install_and_show_completion_listed() -> None:
    text = run_cli("--help").stdout
    assert "--install-completion" in text and "--show-completion" in text


def test_help_and_completion_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from pinit.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    for args in (["--help"], [], ["--show-completion"]):
        p = subprocess.run(
            ["bash", "-c", f'\'{sys.executable}\' -c "$0" "$@"', code, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0, (args, p.stderr)


# --- plurals and wording -----------------------------------------------------------------------


def test_singular_and_plural_lines(tmp_path: Path, one: Path) -> None:
    r = run_cli("inspect", one)
    assert r.exit_code == 0
    assert "1 tensor, 6 parameters," in r.stdout, r.stdout
    assert "flags: 0 errors, 0 warnings" in r.stdout

    r = run_cli("check", one)
    assert "ok: 1 file checked, 0 failed (0 errors, 0 warnings; failing on error)" in r.stdout, r.stdout
    r = run_cli("check", one, "--format", "github")
    assert "pinit check: 1 file, 0 failed, 0 errors, 0 warnings" in r.stdout, r.stdout
    const = save_checkpoint(tmp_path / "const.safetensors", {"c": torch.ones(2, 3)})
    assert "flags: 0 errors, 1 warning\n" in run_cli("inspect", const).stdout
    assert "(0 errors, 1 warning;" in run_cli("check", const).stdout

    nan1 = save_checkpoint(tmp_path / "nan1.safetensors", {"a": torch.tensor([1.0, float("nan")])})
    r = run_cli("check", nan1)
    assert r.exit_code == 1
    assert "(1 error, 0 warnings;" in r.stdout, r.stdout
    nan2 = save_checkpoint(
        tmp_path / "nan2.safetensors",
        {"a": torch.tensor([1.0, float("nan")]), "b": torch.tensor([float("nan"), 2.0])},
    )
    r = run_cli("check", nan1, nan2)
    assert "2 files checked" in r.stdout and "(3 errors," in r.stdout, r.stdout
    r = run_cli("inspect", nan2)
    assert "2 tensors, 4 parameters," in r.stdout and "flags: 2 errors, 0 warnings" in r.stdout, r.stdout

    r = run_cli("reinit", one, "--match", "w", "--scheme", "normal", "--seed", "0", "-o", tmp_path / "o.safetensors")
    assert r.exit_code == 0, r.stderr
    assert "1 tensor re-initialized; wrote" in r.stdout, r.stdout
    r = run_cli("reinit", one, "--match", "w", "--scheme", "normal", "--seed", "0", "--dry-run")
    assert "1 tensor would change; nothing was written" in r.stdout, r.stdout


def test_no_stats_does_not_read_as_clean(one: Path) -> None:
    r = run_cli("inspect", one, "--no-stats")
    assert r.exit_code == 0
    assert "flags: not computed (--no-stats)" in r.stdout, r.stdout
    assert "0 errors" not in r.stdout
    r = run_cli("inspect", one, "--no-stats", "--format", "markdown")
    assert "- flags: not computed (--no-stats)" in r.stdout, r.stdout


@pytest.mark.parametrize("scheme", ["zeros", "ones", "constant", "eye", "dirac"])
def test_schemes_that_draw_nothing_draw_no_seed(tmp_path: Path, scheme: str) -> None:
    shape = (4, 2, 3) if scheme == "dirac" else (3, 3)
    src = save_checkpoint(tmp_path / "m.safetensors", {"w": torch.randn(*shape)})
    extra = ["--value", "0.5"] if scheme == "constant" else []
    r = run_cli("reinit", src, "--match", "w", "--scheme", scheme, *extra, "-o", tmp_path / "o.safetensors")
    assert r.exit_code == 0, r.stderr
    assert "seed:" not in r.stderr, r.stderr
    assert "(seed" not in r.stdout, r.stdout
    r = run_cli("reinit", src, "--match", "w", "--scheme", scheme, *extra, "--dry-run", "-f", "json")
    doc = r.json()
    assert doc["seed"] is None and doc["seed_drawn"] is False
    # a seed the user gives is kept (and recorded), as given
    r = run_cli("reinit", src, "--match", "w", "--scheme", scheme, *extra, "--seed", "7", "--dry-run", "-f", "json")
    assert r.json()["seed"] == 7 and r.json()["seed_drawn"] is False


def test_random_scheme_still_draws_and_prints_its_seed(tmp_path: Path, one: Path) -> None:
    r = run_cli("reinit", one, "--match", "w", "--scheme", "normal", "-o", tmp_path / "o.safetensors")
    assert r.exit_code == 0, r.stderr
    m = re.search(r"^seed: (\d+) \(drawn; rerun with --seed \1 to reproduce\)$", r.stderr, re.MULTILINE)
    assert m, r.stderr
    assert f"(seed {m.group(1)})" in r.stdout


def test_zeros_output_identical_whatever_the_seed(tmp_path: Path, one: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    run_cli("reinit", one, "--match", "w", "--scheme", "zeros", "-o", a, "--no-provenance")
    run_cli("reinit", one, "--match", "w", "--scheme", "zeros", "--seed", "5", "-o", b, "--no-provenance")
    assert a.read_bytes() == b.read_bytes()


# --- --quiet / --no-warnings -------------------------------------------------------------------


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_takes_q(cmd: str, one: Path) -> None:
    args: dict[str, list[Any]] = {
        "inspect": [one],
        "reinit": [one, "--match", "w", "--scheme", "zeros", "--dry-run"],
        "check": [one],
        "diff": [one, one],
        "schemes": [],
    }
    for flag in ("-q", "--quiet"):
        r = run_cli(cmd, *args[cmd], flag)
        assert r.exit_code == 0, (cmd, r.stderr)
        assert r.stderr == "", r.stderr
    if cmd != "schemes":
        assert run_cli(cmd, *args[cmd], "--no-warnings").exit_code == 0


def test_quiet_keeps_lost_content_warnings(tmp_path: Path, tied_pt: Path) -> None:
    out = tmp_path / "o.safetensors"
    r = run_cli("reinit", tied_pt, "--match", "norm", "--scheme", "ones", "-o", out, "-q")
    assert r.exit_code == 0, r.stderr
    assert re.search(r"^warning: tensors sharing storage model.emb, model.head become separate copies", r.stderr, re.M)
    assert re.search(
        r"^warning: safetensors holds tensors only; dropped non-tensor content: epoch, step$", r.stderr, re.M
    )

    r = run_cli("reinit", tied_pt, "--match", "norm", "--scheme", "ones", "-o", out, "--no-warnings")
    assert r.exit_code == 0 and r.stderr == "", r.stderr
    r = run_cli("reinit", tied_pt, "--match", "norm", "--scheme", "ones", "-o", out, "-q", "-f", "json")
    assert len(r.json()["warnings"]) == 2 and all(isinstance(w, str) for w in r.json()["warnings"])


def test_quiet_hides_ordinary_warnings(tmp_path: Path, tied_pt: Path) -> None:
    args = ["reinit", tied_pt, "--match", "emb", "--with-tied", "--scheme", "normal", "--seed", "0"]
    r = run_cli(*args, "-o", tmp_path / "o.pt")
    assert "share storage: drawn once" in r.stderr, r.stderr
    r = run_cli(*args, "-o", tmp_path / "o.pt", "-q")
    assert r.exit_code == 0 and r.stderr == "", r.stderr  # torch output keeps ties and content
    r = run_cli(*args, "-o", tmp_path / "o.pt", "-q", "-f", "json")
    assert any("share storage" in w for w in r.json()["warnings"])  # JSON keeps every warning


def test_quiet_keeps_the_coverage_warning(tmp_path: Path) -> None:
    import argparse

    from pinit.checkpoint import open_checkpoint

    path = tmp_path / "hidden.pt"  # a tensor inside an allowlisted object: found, not read
    torch.save({"w": torch.ones(2), "args": argparse.Namespace(extra=torch.zeros(3))}, path)
    with open_checkpoint(str(path)) as ckpt:
        assert ckpt.coverage is not None and ckpt.coverage.problem() is not None
    r = run_cli("inspect", path, "-q")
    assert re.search(r"^warning: .*not read", r.stderr, re.M), r.stderr
    r = run_cli("inspect", path, "--no-warnings")
    assert "warning:" not in r.stderr


# --- progress bars -----------------------------------------------------------------------------


@pytest.mark.slow  # a pseudo-terminal and subprocesses
def test_reinit_progress_on_a_terminal(tmp_path: Path, tied_pt: Path) -> None:
    for out in ("o.pt", "o.safetensors"):
        args = ["reinit", tied_pt, "--match", "norm", "--scheme", "normal", "--seed", "0", "-o", tmp_path / out]
        r = run_on_terminal(*args, env=SMALL_WORK)
        assert r.exit_code == 0, r.stderr
        assert "re-initializing" in r.stderr, r.stderr
        assert "1 tensor re-initialized" in r.stdout
        r = run_on_terminal(*args, "-q", env=SMALL_WORK)
        assert r.exit_code == 0 and "re-initializing" not in r.stderr, r.stderr
        r = run_subprocess(*args, env=SMALL_WORK)  # stderr not a terminal
        assert r.exit_code == 0 and "re-initializing" not in r.stderr and "\x1b" not in r.stderr, r.stderr


@pytest.mark.slow  # a pseudo-terminal and subprocesses
def test_diff_and_check_progress_on_a_terminal(one: Path) -> None:
    r = run_on_terminal("diff", one, one, env=SMALL_WORK)
    assert r.exit_code == 0 and "comparing" in r.stderr, r.stderr
    r = run_on_terminal("diff", one, one, "-q", env=SMALL_WORK)
    assert r.exit_code == 0 and r.stderr == "", r.stderr
    r = run_on_terminal("check", one, SAMPLES / "tiny_cnn.pt", env=SMALL_WORK)
    assert r.exit_code == 0 and "checking" in r.stderr, r.stderr
    r = run_on_terminal("check", one, "--quiet", env=SMALL_WORK)
    assert r.exit_code == 0 and r.stderr == "", r.stderr


@pytest.mark.slow  # a pseudo-terminal and subprocesses
def test_no_bar_for_small_work_on_a_terminal(one: Path) -> None:
    r = run_on_terminal("diff", one, one)
    assert r.exit_code == 0 and r.stderr == "", r.stderr


@contextmanager
def recording(log: list[tuple[str, int]]) -> Any:
    def factory(total: int) -> Any:
        @contextmanager
        def cm() -> Any:
            log.append(("total", total))
            yield lambda n: log.append(("advance", n))

        return cm()

    yield factory


def test_core_progress_callbacks_add_up(tmp_path: Path, tied_pt: Path, one: Path) -> None:
    """The plumbing: each core reports its total once and advances that add up to it."""
    import pinit
    from pinit.check import CheckSettings, run_check
    from pinit.checkpoint import open_checkpoint
    from pinit.diff import diff_checkpoints

    for out in ("o.pt", "o.safetensors"):
        log: list[tuple[str, int]] = []
        with recording(log) as factory:
            pinit.reinit(tied_pt, match=["emb"], with_tied=True, scheme="normal", seed=0,
                         out=tmp_path / out, progress=factory)  # fmt: skip
        totals = [n for k, n in log if k == "total"]
        done = sum(n for k, n in log if k == "advance")
        assert len(totals) == 1 and totals[0] >= 8 * 4 * 4
        assert done >= 8 * 4 * 4  # the drawn tensor, then the bytes written (torch) or copied (safetensors)
        if out.endswith(".safetensors"):
            assert done == totals[0]

    seen: list[int] = []
    with open_checkpoint(str(one)) as a, open_checkpoint(str(SAMPLES / "tiny_cnn.safetensors")) as b:
        diff_checkpoints(a, a, progress=seen.append)
        assert sum(seen) == sum(e.nbytes for e in a.tensors)
        seen.clear()
        diff_checkpoints(b, b, progress=seen.append)
        assert sum(seen) == sum(e.nbytes for e in b.tensors)

    log = []
    with recording(log) as factory:
        run_check([str(one), str(SAMPLES / "tiny_cnn.pt")], CheckSettings(), progress=factory)
    size = one.stat().st_size + (SAMPLES / "tiny_cnn.pt").stat().st_size
    assert log[0] == ("total", size)
    assert sum(n for k, n in log if k == "advance") == size
