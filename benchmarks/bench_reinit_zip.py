"""Re-initializing one tensor of a ~2 GB torch zip: pinit's storage-level write against ``cp``.

    python benchmarks/bench_reinit_zip.py              # ~2 GB file, 3 interleaved rounds
    python benchmarks/bench_reinit_zip.py --gb 0.5     # a quicker run
    python benchmarks/bench_reinit_zip.py --keep DIR   # build (or reuse) the file under DIR

pinit writes a torch zip by copying the input whole (``os.copy_file_range``, its write-back
started as it goes) into a temporary file, patching the selected tensor's storage record and its
CRC-32 fields, fsyncing and renaming over the target; ``import torch`` (needed to draw the values
exactly as ``torch.nn.init`` does) runs while the kernel copies.

Cases, each a separate child process (wall time and peak RSS from ``os.wait4``):

* ``cp`` -- the issue's baseline: the copy lands in the page cache, nothing waits for the disk;
* ``cp && sync`` -- the same copy made durable, what any atomic writer must at least pay;
* ``import torch`` -- ``python -c "import torch"``, the other floor of a torch-exact rewrite;
* ``pinit --out`` and ``pinit in place``.

Before each case the page cache is synced and the disk is given ``--settle`` seconds (a VM's
disk keeps writing after ``sync`` returns, and the case after a big write would pay for it); the
in-place input is copied at the start of the round, before that pause; the order of the cases
rotates from round to round.  The input is built once, in a temporary folder (deleted at the end
unless ``--keep``): one 64 MiB float32 tensor ``target.weight`` among others.  Targets (issue
#12): pinit ≤ 1.5× ``cp``, peak RSS ≤ 400 MB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
TARGET = "target.weight"


def build(path: Path, gb: float) -> None:
    import torch

    chunk = 64 << 20  # bytes per tensor
    n = max(1, round(gb * (1 << 30) / chunk) - 1)
    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}
    for i in range(n // 2):
        sd[f"layers.{i}.weight"] = torch.empty(4096, 4096).uniform_(-1, 1, generator=g)
    sd[TARGET] = torch.empty(4096, 4096).normal_(generator=g)  # 64 MiB, in the middle of the file
    for i in range(n // 2, n):
        sd[f"layers.{i}.weight"] = torch.empty(4096, 4096).uniform_(-1, 1, generator=g)
    sd["layers.0.bias"] = torch.zeros(4096)
    torch.save(sd, path)


def measure(cmd: list[str], shell: bool = False) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one child process; it must succeed."""
    os.sync()
    start = time.perf_counter()
    p = subprocess.Popen(cmd if not shell else " ".join(cmd), shell=shell, env=ENV, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {cmd}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds the disk is left alone before each case")
    ap.add_argument("--keep", type=Path, help="build (or reuse) the input under this folder and keep it")
    ap.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:
        build(args.build, args.gb)
        return
    folder = args.keep or Path(tempfile.mkdtemp(prefix="pinit-bench-zip-", dir="/tmp"))
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "model.pt"
    try:
        if not src.exists():
            t = time.perf_counter()
            # in a child: the parent stays small (a child's peak RSS counts the parent's pages it forked from)
            subprocess.run([PY, __file__, "--build", str(src), "--gb", str(args.gb)], check=True, env=ENV)
            print(f"built {src} ({src.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.1f} s")
        copy, out, work = folder / "copy.pt", folder / "out.pt", folder / "inplace.pt"
        pinit = [PY, "-m", "pinit", "reinit"]
        sel = ["--match", f"^{TARGET}$", "--scheme", "normal", "--seed", "0", "-q"]
        cases = {
            "cp": lambda: measure(["cp", str(src), str(copy)]),
            "cp && sync": lambda: measure(["cp", str(src), str(copy), "&&", "sync", str(copy)], shell=True),
            "import torch": lambda: measure([PY, "-c", "import torch"]),
            "pinit --out": lambda: measure([*pinit, str(src), *sel, "--out", str(out)]),
            "pinit in place": lambda: measure([*pinit, str(work), *sel]),
        }
        names = list(cases)
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
        for r in range(args.rounds):
            shutil.copyfile(src, work)  # not timed: the file to rewrite in place
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                os.sync()
                time.sleep(args.settle)
                results[name].append(cases[name]())
                for p in (copy, out):
                    p.unlink(missing_ok=True)
            work.unlink(missing_ok=True)
            print(f"round {r + 1}: " + ", ".join(f"{k} {results[k][-1][0]:.2f} s" for k in order))
        med = {k: statistics.median(w for w, _ in v) for k, v in results.items()}
        cp, durable = med["cp"], med["cp && sync"]
        print(f"\ninput {src.stat().st_size / 1e9:.2f} GB, {args.rounds} rounds, medians")
        print(f"{'case':16} {'wall s':>8} {'× cp':>6} {'× cp&&sync':>11} {'peak RSS MB':>12}")
        for name, runs in results.items():
            rss = max(m for _, m in runs)
            print(f"{name:16} {med[name]:8.2f} {med[name] / cp:6.2f} {med[name] / durable:11.2f} {rss:12.0f}")
        floor = max(durable, med["import torch"])
        print(
            f"\nfloor of an atomic, torch-exact rewrite: max(cp && sync, import torch) = {floor:.2f} s "
            f"= {floor / cp:.2f}× cp; pinit --out {med['pinit --out'] / floor:.2f}× and in place "
            f"{med['pinit in place'] / floor:.2f}× that floor"
        )
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
