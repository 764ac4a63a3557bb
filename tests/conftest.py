"""Shared fixtures: drive the real CLI in-process (Typer's runner) or in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pinit.cli import app

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_checkpoints"


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def save_checkpoint(path: Path, tensors: dict[str, Any]) -> Path:
    """Save ``tensors`` (torch tensors) as safetensors or a torch zip, by ``path``'s suffix."""
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    else:
        torch.save(tensors, path)
    return path


def run_cli(*args: str | os.PathLike[str]) -> Result:
    """Run ``pinit ARGS`` in-process through Typer's test runner."""
    runner = CliRunner()
    r = runner.invoke(app, [os.fspath(a) for a in args], catch_exceptions=False)
    return Result(r.exit_code, r.stdout, r.stderr)


def diff_json(a: str | os.PathLike[str], b: str | os.PathLike[str], *args: str) -> tuple[int, dict[str, Any]]:
    """``pinit diff A B ARGS --format json``: its exit code (0 or 1) and its document, whose
    ``summary.equal`` must agree with the exit code."""
    r = run_cli("diff", a, b, *args, "--format", "json")
    assert r.exit_code in (0, 1), (r.exit_code, r.stdout, r.stderr)
    doc = r.json()
    assert doc["summary"]["equal"] is (r.exit_code == 0)
    return r.exit_code, doc


def run_subprocess(*args: str | os.PathLike[str], env: dict[str, str] | None = None) -> Result:
    """Run ``python -m pinit ARGS`` in a fresh interpreter (for import checks and real exits)."""
    full_env = {**os.environ, **(env or {})}
    p = subprocess.run(
        [sys.executable, "-m", "pinit", *(os.fspath(a) for a in args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
    )
    return Result(p.returncode, p.stdout, p.stderr)


def run_timed(*args: str | os.PathLike[str], limit_s: float = 2.0) -> Result:
    """``run_cli`` that also fails when one run takes longer than ``limit_s`` (a hang, in fuzzing)."""
    start = time.monotonic()
    r = run_cli(*args)
    elapsed = time.monotonic() - start
    assert elapsed < limit_s, f"pinit {args} took {elapsed:.1f} s"
    return r


def assert_clean(r: Result) -> None:
    """Exit 0, or exit 2 with exactly one ``error:`` line; nothing that looks like a crash."""
    assert "Traceback" not in r.stderr, r.stderr
    assert "internal error" not in r.stderr, r.stderr
    if r.exit_code == 0:
        return
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert r.stdout == "", r.stdout


def assert_one_error_line(result: Result) -> None:
    """Exit 2, and stderr is exactly one line starting with 'error:' (no traceback)."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def cli() -> Any:
    return run_cli


@pytest.fixture
def samples() -> Path:
    return SAMPLES
