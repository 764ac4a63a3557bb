"""Header-only listing of safetensors files: pinit's own parser vs the safetensors package.

Run by hand: ``python benchmarks/bench_safetensors_header.py``. Writes files with many tensors
into a temporary folder, then times, interleaved and repeated, listing every tensor's name,
dtype and shape with ``pinit.formats.safetensors.read_header`` and with
``safetensors.safe_open(..., framework="numpy")`` (the package's own validation), and prints
the ratio. Also shows the two error messages for one corrupt header.
"""

from __future__ import annotations

import json
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from pinit.errors import PinitError
from pinit.formats.safetensors import read_header


def pinit_listing(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        h = read_header(fd, os.fstat(fd).st_size)
        return sum(len(t.shape) for t in h.tensors) + len(h.tensors)
    finally:
        os.close(fd)


def package_listing(path: Path) -> int:
    n = 0
    with safe_open(str(path), framework="numpy") as f:
        for k in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
            s = f.get_slice(k)
            s.get_dtype()
            n += len(s.get_shape()) + 1
    return n


def best_of(fn, path: Path, rounds: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(path)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'tensors':>8} {'pinit ms':>9} {'safetensors ms':>15} {'ratio':>6}")
        for n in (100, 10_000, 100_000):
            path = Path(tmp) / f"t{n}.safetensors"
            save_file({f"layers.{i}.weight": np.zeros((2, 2), np.float32) for i in range(n)}, str(path))
            assert pinit_listing(path) == package_listing(path)
            ours = theirs = 0.0
            for _ in range(3):  # interleaved
                ours += best_of(pinit_listing, path, 3)
                theirs += best_of(package_listing, path, 3)
            print(f"{n:>8} {ours / 3 * 1e3:>9.1f} {theirs / 3 * 1e3:>15.1f} {theirs / ours:>5.1f}x")
        bad = Path(tmp) / "bad.safetensors"
        header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}).encode()
        bad.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
        try:
            pinit_listing(bad)
        except PinitError as e:
            print("pinit:      ", e)
        try:
            package_listing(bad)
        except Exception as e:
            print("safetensors:", type(e).__name__, e)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
