"""Remote statistics against local ones, and ``check --jobs 2`` against serial (issue #14).

    python benchmarks/bench_remote.py              # a 1 GiB safetensors file, 20 files of 16 MiB, 3 rounds
    python benchmarks/bench_remote.py --gb 0.25    # a quicker run
    python benchmarks/bench_remote.py --rounds 1

1. ``pinit inspect FILE --format json`` (full statistics) of one float32 safetensors file, read
   locally and through ``http://127.0.0.1`` from the test suite's range server
   (``tests/remote_servers.py``, a threaded ``http.server``), which counts the bytes it served: the
   throughput of pinit's remote path (ranged GETs of 4 MiB, three ahead in flight) against the local
   one (``pread`` by the C kernel). The loopback server is Python: it shares the CPUs with pinit, so
   the remote figure is a lower bound of what a real server gives.
2. ``pinit check DIR --format json`` over 20 safetensors files, serially and with ``--jobs 2``
   (2 spawned worker processes; the reports are checked to be equal); then the same 20 files as
   URLs of the loopback server, each response delayed by ``--latency-ms`` (a distant server).

Each measurement is a child process (``python -m pinit``); wall time from ``time.perf_counter``,
the best of the rounds; peak RSS from GNU ``time -f %M``, the largest seen. Files are built in a
temporary folder, deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

PY = sys.executable
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}


def build_one(path: Path, nbytes: int) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    n = nbytes // 4
    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        step = 16 << 20
        for start in range(0, n, step):
            f.write(rng.standard_normal(min(step, n - start), dtype=np.float32).tobytes())


PEAK: dict[str, int] = {}  # the largest peak RSS (KiB) seen per command kind
TIME = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)


def run(args: list[str], kind: str = "") -> tuple[float, str]:
    """Wall time and stdout of ``python -m pinit ARGS``; with ``kind``, its peak RSS into PEAK (from
    GNU time's %M: a parent's own peak would show in os.wait4's, which Linux keeps across exec)."""
    cmd = [PY, "-m", "pinit", *args]
    if kind and TIME:
        cmd = [TIME, "-f", "%M", *cmd]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    elapsed = time.perf_counter() - t
    if p.returncode not in (0, 1):
        raise SystemExit(f"pinit {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    if kind and TIME:
        PEAK[kind] = max(PEAK.get(kind, 0), int(p.stderr.strip().splitlines()[-1]))
    return elapsed, p.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0, help="size of the statistics file in GiB")
    ap.add_argument("--files", type=int, default=20, help="files for check --jobs")
    ap.add_argument("--file-mb", type=float, default=16.0, help="size of each of them in MiB")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-ms", type=float, default=50.0, help="server delay per response (remote check)")
    a = ap.parse_args()
    from remote_servers import RangeServer

    with tempfile.TemporaryDirectory(prefix="pinit-bench-remote-") as tmp:
        d = Path(tmp)
        big = d / "big.safetensors"
        build_one(big, int(a.gb * (1 << 30)))
        size = big.stat().st_size
        files = d / "many"
        files.mkdir()
        for i in range(a.files):
            build_one(files / f"f{i:02d}.safetensors", int(a.file_mb * (1 << 20)))
        results: dict[str, list[float]] = {
            "local": [],
            "remote": [],
            "serial": [],
            "jobs2": [],
            "rserial": [],
            "rjobs2": [],
        }
        urls = [f"many/f{i:02d}.safetensors" for i in range(a.files)]
        with RangeServer(d) as srv:
            url = f"{srv.url}/big.safetensors"
            served = 0
            for _ in range(a.rounds):
                t, local_out = run(["inspect", str(big), "--format", "json"], "local")
                results["local"].append(t)
                srv.reset()
                t, remote_out = run(["inspect", url, "--format", "json"], "remote")
                results["remote"].append(t)
                served = srv.bytes_served
                lo, re_ = json.loads(local_out)["tensors"][0]["stats"], json.loads(remote_out)["tensors"][0]["stats"]
                assert lo["min"] == re_["min"] and lo["max"] == re_["max"], (lo, re_)
                t, serial_out = run(["check", str(files), "--format", "json"])
                results["serial"].append(t)
                t, jobs_out = run(["check", str(files), "--format", "json", "--jobs", "2"])
                results["jobs2"].append(t)
                assert json.loads(serial_out) == json.loads(jobs_out)
                srv.httpd.delay = a.latency_ms / 1000  # each response waits: a distant server
                remote_files = [f"{srv.url}/{u}" for u in urls]
                t, serial_out = run(["check", *remote_files, "--format", "json"])
                results["rserial"].append(t)
                t, jobs_out = run(["check", *remote_files, "--format", "json", "--jobs", "2"])
                results["rjobs2"].append(t)
                srv.httpd.delay = 0.0
                assert json.loads(serial_out) == json.loads(jobs_out)
        best = {k: min(v) for k, v in results.items()}
        gib = size / (1 << 30)
        total_mb = a.files * a.file_mb
        print(f"statistics of one {gib:.2f} GiB float32 safetensors file (best of {a.rounds}):")
        print(
            f"  local          {best['local']:6.2f} s  {gib / best['local'] * 1024:7.0f} MiB/s"
            f"  peak RSS {PEAK.get('local', 0) / 1024:.0f} MiB"
        )
        print(
            f"  http loopback  {best['remote']:6.2f} s  {gib / best['remote'] * 1024:7.0f} MiB/s"
            f"  peak RSS {PEAK.get('remote', 0) / 1024:.0f} MiB  (server sent {served / size:.3f}x the file)"
        )
        print(f"check of {a.files} files of {a.file_mb:g} MiB ({total_mb:.0f} MiB):")
        print(f"  serial         {best['serial']:6.2f} s")
        print(f"  --jobs 2       {best['jobs2']:6.2f} s  ({best['serial'] / best['jobs2']:.2f}x)")
        print(f"the same {a.files} files over http loopback, {a.latency_ms:g} ms before each response:")
        print(f"  serial         {best['rserial']:6.2f} s")
        print(f"  --jobs 2       {best['rjobs2']:6.2f} s  ({best['rserial'] / best['rjobs2']:.2f}x)")
        print(f"(cpus: {os.cpu_count()})")


if __name__ == "__main__":
    main()
