"""SPEC section 8: statistics stream. ``pinit inspect`` of a 256 MB checkpoint, with statistics,
has about the same peak memory as of a 1 MB one (with the C kernel and with the numpy path), and
neither imports torch for safetensors or torch zip files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

# Runs pinit and reports its peak RSS, and whether torch got imported (the child's sys.modules
# cannot be seen from here, so the child is wrapped: pinit's main in a probe).
PROBE = """
import json, runpy, sys
import pinit.cli
def _exit_now(code):  # the CLI's shortcut exit once torch is loaded would skip this probe's report
    raise SystemExit(code)
sys.modules["pinit.cli.app"]._exit_now = _exit_now
sys.argv = ["pinit", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("pinit", run_name="__main__")
except SystemExit as e:
    code = e.code
sys.stdout.flush()
# VmHWM: this process's own peak (ru_maxrss would start from the parent's at fork time)
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0].split()[1]
print("\\nPROBE " + json.dumps({"code": code, "torch": "torch" in sys.modules, "maxrss_kib": int(hwm)}))
"""

BIG_MB = 256

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc (Linux)")


def probe(tmp_path: Path, *args: str | os.PathLike[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    p = subprocess.run(
        [sys.executable, script, *(os.fspath(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("PROBE ")]
    assert p.returncode == 0 and lines, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("PROBE "))
    result["stdout"] = p.stdout.rsplit("\nPROBE ", 1)[0]
    return result


def tensors(total_mb: int) -> dict[str, np.ndarray]:
    """fp32 tensors of 1 MB to 64 MB adding up to ``total_mb``; values with a known mean."""
    out: dict[str, np.ndarray] = {}
    left = total_mb << 20
    i = 0
    while left:
        n = min(left, (64 << 20) if i % 2 else (1 << 20))
        out[f"layer.{i}.weight"] = np.full((n // 4 // 256, 256), float(i % 7), dtype=np.float32)
        left -= n
        i += 1
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("streaming")
    made = {}
    for size in (1, BIG_MB):
        ts = tensors(size)
        made[f"{size}.safetensors"] = d / f"m{size}.safetensors"
        save_file(ts, str(made[f"{size}.safetensors"]))
        made[f"{size}.pt"] = d / f"m{size}.pt"
        torch.save({k: torch.from_numpy(v) for k, v in ts.items()}, made[f"{size}.pt"])
    return made


@pytest.mark.parametrize("path", ["kernel", "numpy"])
@pytest.mark.parametrize("ext", ["safetensors", "pt"])
def test_statistics_of_a_large_file_stay_in_bounded_memory(
    tmp_path: Path, files: dict[str, Path], ext: str, path: str
) -> None:
    env = {"PINIT_NO_KERNEL": "1"} if path == "numpy" else {}
    small = probe(tmp_path, "inspect", files[f"1.{ext}"], "--format", "json", env=env)
    big = probe(tmp_path, "inspect", files[f"{BIG_MB}.{ext}"], "--format", "json", env=env)
    assert small["code"] == 0 and big["code"] == 0
    assert not small["torch"] and not big["torch"], "statistics of safetensors and torch zip files need no torch"
    growth_mb = (big["maxrss_kib"] - small["maxrss_kib"]) / 1024
    assert growth_mb < 48, f"peak RSS grew by {growth_mb:.0f} MB for a {BIG_MB} MB file"
    doc = json.loads(big["stdout"])  # the statistics were really computed
    assert doc["summary"]["bytes"] == BIG_MB << 20
    for t in doc["tensors"]:
        value = float(int(t["name"].split(".")[1]) % 7)
        assert (t["stats"]["mean"], t["stats"]["min"], t["stats"]["max"]) == (value, value, value)
