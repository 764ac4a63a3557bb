"""SPEC section 8: ``pinit --help`` and ``pinit inspect --no-stats`` on safetensors and torch zip
files never import torch; statistics on safetensors use numpy, not torch.

Each case runs the CLI's ``main`` in a fresh interpreter and then looks at ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from conftest import ROOT, run_subprocess

PROBE = """
import json, sys
from pinit.cli import main
sys.argv = ["pinit", *json.loads(sys.argv[1])]
code = 0
try:
    main()
except SystemExit as e:
    code = e.code
sys.stdout.flush()
print()
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print("PROBE " + json.dumps({"code": code, "torch": loaded}))
"""


def run_probe(*args: str | os.PathLike[str]) -> dict[str, Any]:
    p = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps([os.fspath(a) for a in args])],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("PROBE ")]
    assert p.returncode == 0 and lines, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    result = json.loads(lines[-1].removeprefix("PROBE "))
    result["stdout"] = p.stdout
    result["stderr"] = p.stderr
    return result


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("lazy")
    tensors = {"w": torch.randn(8, 4), "b": torch.zeros(8), "h": torch.ones(3, dtype=torch.bfloat16)}
    save_file(tensors, str(d / "m.safetensors"))
    torch.save(tensors, d / "m.pt")
    torch.save(
        {"state_dict": tensors, "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(2)}}}], "epoch": 1},
        d / "nested.ckpt",
    )
    torch.save(tensors, d / "legacy.pt", _use_new_zipfile_serialization=False)
    return {"st": d / "m.safetensors", "zip": d / "m.pt", "nested": d / "nested.ckpt", "legacy": d / "legacy.pt"}


def test_help_does_not_import_torch() -> None:
    r = run_probe("--help")
    assert r["code"] == 0, r["stderr"]
    assert "inspect" in r["stdout"]
    assert r["torch"] == []


def test_inspect_help_does_not_import_torch() -> None:
    r = run_probe("inspect", "--help")
    assert r["code"] == 0, r["stderr"]
    assert r["torch"] == []


@pytest.mark.parametrize("kind", ["st", "zip", "nested"])
def test_inspect_no_stats_does_not_import_torch(files: dict[str, Path], kind: str) -> None:
    r = run_probe("inspect", "--no-stats", files[kind], "--format", "json")
    assert r["code"] == 0, r["stderr"]
    assert '"tensors"' in r["stdout"]
    assert r["torch"] == []


def test_inspect_safetensors_with_statistics_does_not_import_torch(files: dict[str, Path]) -> None:
    r = run_probe("inspect", files["st"], "--format", "json", "--values", "2", "--hist")
    assert r["code"] == 0, r["stderr"]
    assert '"mean"' in r["stdout"]
    assert r["torch"] == []


def test_errors_do_not_import_torch(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10" + b"\0" * 7 + b"{garbage")
    r = run_probe("inspect", "--no-stats", bad)
    assert r["code"] == 2
    assert r["torch"] == []


def test_control_legacy_pickle_does_import_torch(files: dict[str, Path]) -> None:
    """The probe can see torch being imported: a legacy pickle needs torch.load."""
    r = run_probe("inspect", "--no-stats", files["legacy"])
    assert r["code"] == 0, r["stderr"]
    assert "torch" in r["torch"]


def test_python_dash_m_pinit_runs(files: dict[str, Path]) -> None:
    r = run_subprocess("inspect", "--no-stats", files["st"], "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert {t["name"] for t in r.json()["tensors"]} == {"w", "b", "h"}
