"""diff, bf16 statistics and whole-process inspect against `cat` and the naive scripts (issue #15).

    python benchmarks/bench_diff_half.py                   # 2 GB fp32 + 2 GB bf16 (+ a 2 GB copy), ~7 GB of disk
    python benchmarks/bench_diff_half.py --gb 0.25         # a quick run
    python benchmarks/bench_diff_half.py --dir /big/tmp    # where the files go (default: a temporary folder)

The files are written once into --dir (deleted afterwards unless --keep): A, a synthetic fp32
safetensors checkpoint of transformer-like tensors; B, a copy of A in which one 2*d x d matrix
differs; C, a bf16 checkpoint of the same byte size as A. Every measurement is a separate process
(bench.run_rss: wall time, the WORK line, peak RSS from wait4), all of them interleaved round by
round, each input read into the page cache just before its run; medians are reported, and ratios
of medians:

- diff: `pinit diff A B` against the naive torch script (load both, torch.equal, then the
  differences) and against `cat A B > /dev/null`;
- statistics: the work rate (GB/s) inside the process for fp32 and bf16, and their ratio;
- inspect: `pinit inspect FILE --format json --quiet`, whole process, against `cat FILE`, and the
  naive statistics script (skipped with --no-naive-stats: about 10 s a run per 2 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import NAIVE_STATS, PINIT_STATS, PY, Case, Run, describe_machine, run_rss

NAIVE_DIFF = r"""
import sys, time, torch
from safetensors.torch import load_file
t0 = time.perf_counter()
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
changed = 0
for name, x in a.items():
    y = b.get(name)
    if y is None or x.shape != y.shape or x.dtype != y.dtype:
        changed += 1
        continue
    if torch.equal(x, y):
        continue
    changed += 1
    xd, yd = x.double(), y.double()
    d = (xd - yd).abs()
    max_abs, rel = d.max().item(), (d.norm() / xd.norm()).item()
    mismatched = (~torch.isclose(xd, yd, rtol=0.0, atol=0.0, equal_nan=True)).sum().item()
print(f"WORK {time.perf_counter() - t0} 0")
"""

CAT = ["sh", "-c", 'cat "$@" > /dev/null', "cat"]


def write_safetensors(path: Path, tensors: list[tuple[str, str, tuple[int, ...]]], seed: int) -> None:
    """A safetensors file of random N(0, 0.02) values (ones for names ending in 'norm.weight'),
    written tensor by tensor (no tensor library, bounded memory). dtype: F32 or BF16."""
    import numpy as np

    rng = np.random.default_rng(seed)
    header: dict[str, object] = {}
    offset = 0
    for name, dtype, shape in tensors:
        n = int(np.prod(shape)) * (4 if dtype == "F32" else 2)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, dtype, shape in tensors:
            count = int(np.prod(shape))
            if name.endswith("norm.weight"):
                x = np.ones(count, dtype=np.float32)
            else:
                x = rng.standard_normal(count, dtype=np.float32) * np.float32(0.02)
            if dtype == "BF16":
                f.write((x.view(np.uint32) >> 16).astype("<u2").tobytes())
            else:
                f.write(x.astype("<f4").tobytes())


def layout(gb: float, dtype: str) -> list[tuple[str, str, tuple[int, ...]]]:
    """bench.py's synthetic model (29 layers of 8 tensors, plus embeddings and head), sized so
    that the file holds about ``gb`` GB whatever the dtype."""
    item = 4 if dtype == "F32" else 2
    # elements: 232 d^2 (29 layers of 8 d^2) + 6203 d (embeddings, head, norms); solved for d
    a, b, n = 232.0, 6203.0, gb * 1e9 / item
    d = max(64, round((-b + (b * b + 4 * a * n) ** 0.5) / (2 * a) / 64) * 64)
    t: list[tuple[str, str, tuple[int, ...]]] = [("embed.weight", dtype, (4096, d))]
    for i in range(29):
        p = f"layers.{i}."
        t += [(p + f"attn.{k}.weight", dtype, (d, d)) for k in "qkvo"]
        t += [(p + "mlp.up.weight", dtype, (2 * d, d)), (p + "mlp.down.weight", dtype, (d, 2 * d))]
        t += [(p + "norm1.weight", dtype, (d,)), (p + "norm2.weight", dtype, (d,))]
    t += [("norm.weight", dtype, (d,)), ("head.weight", dtype, (2048, d))]
    return t


def change_one_tensor(src: Path, dst: Path, name: str) -> None:
    """dst: a copy of src whose tensor ``name`` (float32) has 1e-3 added to every value."""
    import numpy as np

    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        begin, end = header[name]["data_offsets"]
        f.seek(8 + n + begin)
        x = np.frombuffer(f.read(end - begin), dtype="<f4") + np.float32(1e-3)
        f.seek(8 + n + begin)
        f.write(x.astype("<f4").tobytes())


@dataclass
class Timed(Run):
    cpu: float = 0.0  # user + system seconds of the process (less sensitive than wall time to neighbours)


def run_timed(cmd: list[str]) -> Timed:
    """bench.run_rss, plus the CPU time of the process (from the same wait4)."""
    before = os.times()
    r = run_rss(cmd)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return Timed(r.wall, r.work, r.nbytes, r.rss_mb, cpu)


def warm(*paths: Path) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(16 << 20):
                pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=2.0, help="size of each checkpoint in GB (default: 2)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds, medians reported (default: 5)")
    ap.add_argument("--dir", help="folder for the files (default: a temporary folder, deleted afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the files (with --dir, they are reused)")
    ap.add_argument("--no-naive-stats", action="store_true", help="skip the naive statistics script")
    ap.add_argument("--json", help="write the results here as JSON")
    args = ap.parse_args()

    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="pinit-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    # Every process finds its modules compiled, as after any install (some sandboxes set
    # PYTHONDONTWRITEBYTECODE, which recompiles pinit's sources at each start: ~70 ms); the
    # bytecode goes to a folder of its own, not into the source tree.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(base / "pycache")
    fa, fb, fc = base / "a_fp32.safetensors", base / "b_fp32.safetensors", base / "c_bf16.safetensors"
    try:
        if not (args.keep and fa.exists() and fb.exists() and fc.exists()):
            write_safetensors(fa, layout(args.gb, "F32"), seed=0)
            change_one_tensor(fa, fb, "layers.10.mlp.up.weight")
            write_safetensors(fc, layout(args.gb, "BF16"), seed=1)
        rows = measure(fa, fb, fc, args.repeats, not args.no_naive_stats)
        machine = describe_machine()
    finally:
        if not args.keep:
            for p in (fa, fb, fc):
                p.unlink(missing_ok=True)
            shutil.rmtree(base / "pycache", ignore_errors=True)
            if not args.dir:
                shutil.rmtree(base, ignore_errors=True)
    print(f"machine: {machine}; medians of {args.repeats} interleaved rounds; page cache warm")
    for r in rows:
        print(f"\n{r['case']}")
        for k, v in r.items():
            if k != "case":
                print(f"  {k:40s} {v:10.3f}" if isinstance(v, float) else f"  {k:40s} {v}")
    if args.json:
        doc = {"machine": machine, "repeats": args.repeats, "rows": rows}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


def measure(fa: Path, fb: Path, fc: Path, repeats: int, naive_stats: bool) -> list[dict[str, object]]:
    pinit = [PY, "-m", "pinit"]
    c: dict[str, Case] = {}
    plan: list[tuple[str, tuple[Path, ...], list[str]]] = [
        ("cat A B", (fa, fb), [*CAT, str(fa), str(fb)]),
        ("naive diff", (fa, fb), [PY, "-c", NAIVE_DIFF, str(fa), str(fb)]),
        ("pinit diff", (fa, fb), [*pinit, "diff", str(fa), str(fb), "--format", "json"]),
    ]
    for key, f in (("fp32", fa), ("bf16", fc)):
        plan += [
            (f"cat {key}", (f,), [*CAT, str(f)]),
            (f"pinit inspect {key}", (f,), [*pinit, "inspect", str(f), "--format", "json", "--quiet"]),
            (f"pinit stats work {key}", (f,), [PY, "-c", PINIT_STATS, str(f)]),
        ]
        if naive_stats:
            plan.append((f"naive stats {key}", (f,), [PY, "-c", NAIVE_STATS, str(f)]))
    for name, _, _ in plan:
        c[name] = Case(name)
    for _, inputs, cmd in plan:  # a round not counted: bytecode compiled, files and libraries cached
        warm(*inputs)
        run_timed(cmd)
    for _ in range(repeats):
        for name, inputs, cmd in plan:
            warm(*inputs)
            c[name].runs.append(run_timed(cmd))

    def wall(name: str) -> float:
        return c[name].med("wall")

    def cpu(*names: str) -> str:
        return " / ".join(f"{c[n].med('cpu'):.3f}" for n in names)

    def spread(name: str) -> str:
        vals = sorted(r.wall for r in c[name].runs)
        return f"{vals[0]:.3f}..{vals[-1]:.3f}"

    size_a = fa.stat().st_size
    rows: list[dict[str, object]] = [
        {
            "case": f"diff A B, two {size_a / 1e9:.2f} GB fp32 files differing in one tensor (whole process)",
            "cat A B s": wall("cat A B"),
            "naive torch script s": wall("naive diff"),
            "pinit diff s": wall("pinit diff"),
            "pinit diff s (min..max)": spread("pinit diff"),
            "speedup vs naive (>= 4)": wall("naive diff") / wall("pinit diff"),
            "ratio to cat A B (<= 2)": wall("pinit diff") / wall("cat A B"),
            "CPU s: cat A B / naive / pinit": cpu("cat A B", "naive diff", "pinit diff"),
            "naive peak RSS MB": c["naive diff"].med("rss_mb"),
            "pinit peak RSS MB": c["pinit diff"].med("rss_mb"),
        }
    ]
    rates = {}
    for key, f in (("fp32", fa), ("bf16", fc)):
        work = c[f"pinit stats work {key}"]
        gb = work.runs[0].nbytes / 1e9
        rates[key] = gb / work.med("work")
        row: dict[str, object] = {
            "case": f"inspect {key}, {f.stat().st_size / 1e9:.2f} GB (whole process)",
            f"cat {key} s": wall(f"cat {key}"),
            "pinit inspect s": wall(f"pinit inspect {key}"),
            "pinit inspect s (min..max)": spread(f"pinit inspect {key}"),
            "ratio to cat (<= 2)": wall(f"pinit inspect {key}") / wall(f"cat {key}"),
            "CPU s: cat / pinit inspect": cpu(f"cat {key}", f"pinit inspect {key}"),
            "statistics work GB/s (in process)": rates[key],
            "pinit peak RSS MB": c[f"pinit inspect {key}"].med("rss_mb"),
        }
        if naive_stats:
            naive = c[f"naive stats {key}"]
            row["naive stats s (whole process)"] = naive.med("wall")
            row["speedup vs naive (process)"] = naive.med("wall") / wall(f"pinit inspect {key}")
            row["naive peak RSS MB"] = naive.med("rss_mb")
        rows.append(row)
    rows.append(
        {
            "case": "bf16 statistics throughput per byte against fp32 (>= 0.66)",
            "fp32 GB/s": rates["fp32"],
            "bf16 GB/s": rates["bf16"],
            "ratio bf16 / fp32": rates["bf16"] / rates["fp32"],
        }
    )
    return rows


if __name__ == "__main__":
    main()
