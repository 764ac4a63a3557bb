"""pinit benchmarks: each case side by side with a naive baseline, measured in the same run.

    python benchmarks/bench.py            # ~2 GB fp32 and ~1 GB bf16 checkpoints (needs ~7 GB of disk)
    python benchmarks/bench.py --small    # ~200 MB / ~100 MB, a quick run

Synthetic checkpoints are generated once under benchmarks/data/ (git-ignored). Every process
runs with OPENBLAS_NUM_THREADS=1, as the pinit CLI sets it for itself (the naive script's torch
does not use OpenBLAS threads; pinit's statistics run their own two worker threads). Every
measurement is a separate process, run `--repeats` times, interleaved with its baseline,
and the median is reported: work time (measured inside the process), whole-process wall
time, and peak RSS (from wait4). Before each run, its input file is read into the page cache
and the page cache is synced (no run pays for an earlier run's writes); outputs are deleted
between runs. The table of ratios is printed and written to benchmarks/results.json (or
--json PATH; `--only` runs some parts and writes no JSON unless asked).

The statistics cases also run pinit with PINIT_NO_KERNEL=1: the numpy path used where the C
kernel could not be built. The reinit cases also show a copy that is fsynced, as pinit's atomic
write must be.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
PY = sys.executable

# --- the naive script users write today (load, then one reduction after another) -------------
NAIVE_STATS = r"""
import sys, time, torch
t0 = time.perf_counter()
path = sys.argv[1]
if path.endswith(".safetensors"):
    from safetensors.torch import load_file
    sd = load_file(path)
else:
    sd = torch.load(path, weights_only=True)
n = 0
for name, t in sd.items():
    if not t.is_floating_point():
        continue
    n += t.numel() * t.element_size()
    x = t.float()
    mean, std, mn, mx = x.mean().item(), x.std().item(), x.min().item(), x.max().item()
    nan, inf, zeros = torch.isnan(x).sum().item(), torch.isinf(x).sum().item(), (x == 0).sum().item()
print(f"WORK {time.perf_counter() - t0} {n}")
"""

PINIT_STATS = r"""
import sys, time
from pinit.checkpoint import open_checkpoint
from pinit.inspect import inspect_checkpoint
import numpy  # the libraries are imported before the clock starts, as torch is in the naive script
t0 = time.perf_counter()
with open_checkpoint(sys.argv[1]) as ckpt:
    n = sum(e.nbytes for e in ckpt.tensors if e.dt.is_float)
    report = inspect_checkpoint(ckpt)
print(f"WORK {time.perf_counter() - t0} {n}")
"""

NAIVE_REINIT = r"""
import sys, time, torch
from safetensors.torch import load_file, save_file
t0 = time.perf_counter()
sd = load_file(sys.argv[1])
g = torch.Generator().manual_seed(0)
torch.nn.init.normal_(sd[sys.argv[3]], generator=g)
save_file(sd, sys.argv[2])
print(f"WORK {time.perf_counter() - t0} 0")
"""

COPY_PLUS_TORCH = r"""
import os, sys, time, shutil
t0 = time.perf_counter()
import torch
shutil.copyfile(sys.argv[1], sys.argv[2])
if len(sys.argv) > 3:  # the copy an atomic writer makes: on disk before it counts as written
    fd = os.open(sys.argv[2], os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
print(f"WORK {time.perf_counter() - t0} 0")
"""


@dataclass
class Run:
    wall: float
    work: float | None
    nbytes: int
    rss_mb: float


@dataclass
class Case:
    name: str
    runs: list[Run] = field(default_factory=list)

    def med(self, attr: str) -> float:
        vals = [getattr(r, attr) for r in self.runs if getattr(r, attr) is not None]
        return statistics.median(vals) if vals else float("nan")


def run_rss(cmd: list[str]) -> Run:
    """Run a process: wall time, the WORK line it prints (work time, bytes), peak RSS from wait4."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
    os.sync()  # no run pays for the write-back of an earlier run's output
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert p.stdout is not None
    out_b = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode not in (0, 1):
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(cmd)}")
    work, nbytes = None, 0
    for line in out_b.decode().splitlines():
        if line.startswith("WORK "):
            _, w, n = line.split()
            work, nbytes = float(w), int(n)
    return Run(wall, work, nbytes, usage.ru_maxrss / 1024)


def make_data(small: bool) -> dict[str, Path]:
    """Synthetic transformer-like checkpoints: fp32 (~2 GB, 236 tensors) and bf16 (~1 GB)."""
    DATA.mkdir(exist_ok=True)
    tag = "small" if small else "full"
    files = {
        "fp32.safetensors": DATA / f"{tag}_fp32.safetensors",
        "fp32.pt": DATA / f"{tag}_fp32.pt",
        "bf16.safetensors": DATA / f"{tag}_bf16.safetensors",
        "bf16.pt": DATA / f"{tag}_bf16.pt",
        "1MB.safetensors": DATA / "tiny_1mb.safetensors",
        "1MB.pt": DATA / "tiny_1mb.pt",
    }
    if all(p.exists() for p in files.values()):
        return files
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    d = 448 if small else 1408  # 29 layers of 8 tensors: ~1.9 GB in fp32, ~0.95 GB in bf16

    def model(dtype: torch.dtype, layers: int) -> dict[str, torch.Tensor]:
        sd: dict[str, torch.Tensor] = {"embed.weight": torch.randn(4096, d, generator=g).to(dtype)}
        for i in range(layers):
            p = f"layers.{i}."
            for k in ("q", "k", "v", "o"):
                sd[p + f"attn.{k}.weight"] = torch.randn(d, d, generator=g).mul_(0.02).to(dtype)
            sd[p + "mlp.up.weight"] = torch.randn(2 * d, d, generator=g).mul_(0.02).to(dtype)
            sd[p + "mlp.down.weight"] = torch.randn(d, 2 * d, generator=g).mul_(0.02).to(dtype)
            sd[p + "norm1.weight"] = torch.ones(d, dtype=dtype)
            sd[p + "norm2.weight"] = torch.ones(d, dtype=dtype)
        sd["norm.weight"] = torch.ones(d, dtype=dtype)
        sd["head.weight"] = torch.randn(2048, d, generator=g).mul_(0.02).to(dtype)
        sd["head.small"] = torch.randn(2048, 2048, generator=g).to(dtype)  # the 16 MB tensor reinit rewrites
        return sd

    sd32 = model(torch.float32, 29)
    save_file(sd32, files["fp32.safetensors"])
    torch.save(sd32, files["fp32.pt"])
    del sd32
    sd16 = model(torch.bfloat16, 29)
    save_file(sd16, files["bf16.safetensors"])
    torch.save(sd16, files["bf16.pt"])
    del sd16
    tiny = {f"t{i}": torch.randn(64, 64, generator=g) for i in range(64)}
    save_file(tiny, files["1MB.safetensors"])
    torch.save(tiny, files["1MB.pt"])
    return files


def make_folder(n: int) -> Path:
    folder = DATA / f"folder_{n}"
    if folder.exists() and len(list(folder.iterdir())) == n:
        return folder
    import torch
    from safetensors.torch import save_file

    folder.mkdir(exist_ok=True)
    g = torch.Generator().manual_seed(1)
    for i in range(n):
        sd = {f"layer{j}.weight": torch.randn(64, 64, generator=g) for j in range(8)}
        if i % 2:
            save_file(sd, folder / f"ckpt_{i:03d}.safetensors")
        else:
            torch.save(sd, folder / f"ckpt_{i:03d}.pt")
    return folder


NAIVE_CHECK = r"""
import sys, time, glob, torch
from safetensors.torch import load_file
t0 = time.perf_counter()
bad = 0
for path in sorted(glob.glob(sys.argv[1] + "/*")):
    sd = load_file(path) if path.endswith(".safetensors") else torch.load(path, weights_only=True)
    for t in sd.values():
        if t.is_floating_point() and (torch.isnan(t).any() or torch.isinf(t).any() or (t.abs() > 1e6).any()):
            bad += 1
print(f"WORK {time.perf_counter() - t0} 0")
"""


def describe_machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (OSError, ValueError):
        mem = float("nan")
    kernel = subprocess.run(
        [PY, "-c", "from pinit.stats import kernel_available; print(kernel_available())"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return (
        f"{cpu} ({platform.machine()}), {os.cpu_count()} cores, {mem:.0f} GiB RAM, "
        f"Python {platform.python_version()}, pinit C kernel built: {kernel}"
    )


def warm(path: Path) -> None:
    """Read a file into the page cache (the notes measure with a warm cache; this machine evicts
    cold pages on its own, so each run starts with its input read again)."""
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # (keeps our RSS small)


def interleave(cases: list[tuple[Case, list[str]]], repeats: int, inputs: tuple[Path, ...] = ()) -> None:
    for _ in range(repeats):
        for case, cmd in cases:
            for path in inputs:
                warm(path)
            case.runs.append(run_rss(cmd))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="small files for a quick run")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each case, medians reported (default: 3)")
    ap.add_argument(
        "--json",
        help="where to write the results (default: benchmarks/results.json, after a full run that is not --small)",
    )
    ap.add_argument(
        "--only",
        default="stats,listing,reinit,check",
        help="comma-separated parts to run, among stats, listing, reinit, check (default: all)",
    )
    ap.add_argument("--make-data", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_data:  # run in a child, so that this process never holds the data (wait4's
        make_data(args.small)  # peak RSS of a child starts from its parent's at fork time)
        make_folder(50)
        return
    subprocess.run([PY, __file__, "--make-data", *(["--small"] if args.small else [])], check=True)
    files = make_data(args.small)
    pinit = [PY, "-m", "pinit"]
    rows: list[dict[str, object]] = []

    parts = set(args.only.split(","))
    if parts - {"stats", "listing", "reinit", "check"}:
        ap.error(f"--only takes stats, listing, reinit, check; not {args.only}")

    # 1. statistics: pinit inspect vs the naive script, per file
    for key in ("fp32.safetensors", "fp32.pt", "bf16.safetensors", "bf16.pt") if "stats" in parts else ():
        f = files[key]
        naive, ours, whole = Case("naive"), Case("pinit"), Case("pinit inspect (CLI)")
        fallback = Case("pinit without its C kernel")
        interleave(
            [
                (naive, [PY, "-c", NAIVE_STATS, str(f)]),
                (ours, [PY, "-c", PINIT_STATS, str(f)]),
                (fallback, ["env", "PINIT_NO_KERNEL=1", PY, "-c", PINIT_STATS, str(f)]),
                (whole, [*pinit, "inspect", str(f), "--format", "json", "--quiet"]),
            ],
            args.repeats,
            inputs=(f,),
        )
        gb = ours.runs[0].nbytes / 1e9
        rows.append(
            {
                "case": f"statistics {key} ({gb:.2f} GB)",
                "naive GB/s": gb / naive.med("work"),
                "pinit GB/s": gb / ours.med("work"),
                "speedup (work)": naive.med("work") / ours.med("work"),
                "numpy fallback GB/s": gb / fallback.med("work"),
                "fallback speedup (work)": naive.med("work") / fallback.med("work"),
                "naive process s": naive.med("wall"),
                "pinit inspect process s": whole.med("wall"),
                "speedup (process)": naive.med("wall") / whole.med("wall"),
                "naive peak RSS MB": naive.med("rss_mb"),
                "pinit peak RSS MB": whole.med("rss_mb"),
            }
        )

    # 2. header-only listing and --help against `import typer, rich`
    if "listing" in parts:
        base, helpc = Case("import typer, rich"), Case("pinit --help")
        cases = [(base, [PY, "-c", "import typer, rich"]), (helpc, [*pinit, "--help"])]
        listing = {}
        for key in ("1MB.safetensors", "fp32.safetensors", "1MB.pt", "fp32.pt"):
            listing[key] = Case(f"--no-stats {key}")
            cases.append((listing[key], [*pinit, "inspect", str(files[key]), "--no-stats", "--format", "json"]))
        interleave(cases, args.repeats)
        rows.append(
            {
                "case": "pinit --help",
                "baseline s (import typer, rich)": base.med("wall"),
                "pinit s": helpc.med("wall"),
                "ratio": helpc.med("wall") / base.med("wall"),
            }
        )
        for key, c in listing.items():
            rows.append(
                {
                    "case": f"inspect --no-stats {key}",
                    "baseline s (import typer, rich)": base.med("wall"),
                    "pinit s": c.med("wall"),
                    "ratio": c.med("wall") / base.med("wall"),
                    "pinit peak RSS MB": c.med("rss_mb"),
                }
            )

    # 3. reinit of one 16 MB tensor of the fp32 safetensors file
    if "reinit" in parts:
        src = files["fp32.safetensors"]
        with tempfile.TemporaryDirectory(dir=DATA) as tmp:
            t = Path(tmp)
            naive, copy, new, inplace = Case("load+init+save"), Case("copy+import torch"), Case("new"), Case("in place")
            synced = Case("copy+fsync+import torch")
            work_copy = t / "inplace.safetensors"
            shutil.copyfile(src, work_copy)
            sel = ["--match", "^head.small$", "--scheme", "normal", "--seed", "0", "--quiet"]
            runs = [
                (naive, src, [PY, "-c", NAIVE_REINIT, str(src), str(t / "out.safetensors"), "head.small"]),
                (copy, src, [PY, "-c", COPY_PLUS_TORCH, str(src), str(t / "out.safetensors")]),
                (synced, src, [PY, "-c", COPY_PLUS_TORCH, str(src), str(t / "out.safetensors"), "fsync"]),
                (new, src, [*pinit, "reinit", str(src), *sel, "--out", str(t / "out.safetensors")]),
                (inplace, work_copy, [*pinit, "reinit", str(work_copy), *sel]),
            ]
            for _ in range(args.repeats):
                for case, source, cmd in runs:
                    # every run starts alike: its input in the page cache, no output file yet (replacing
                    # a 2 GB file costs a second of its own here), no dirty pages (run_rss syncs)
                    (t / "out.safetensors").unlink(missing_ok=True)
                    warm(source)
                    case.runs.append(run_rss(cmd))
            for label, c in (("to a new file", new), ("in place", inplace)):
                rows.append(
                    {
                        "case": f"reinit one 16 MB tensor of {src.stat().st_size / 1e9:.2f} GB, {label}",
                        "load+init+save s": naive.med("wall"),
                        "copy + import torch s": copy.med("wall"),
                        "pinit s": c.med("wall"),
                        "ratio vs copy+import": c.med("wall") / copy.med("wall"),
                        "copy + fsync + import torch s": synced.med("wall"),
                        "ratio vs copy+fsync+import": c.med("wall") / synced.med("wall"),
                        "speedup vs load+save": naive.med("wall") / c.med("wall"),
                        "naive peak RSS MB": naive.med("rss_mb"),
                        "pinit peak RSS MB": c.med("rss_mb"),
                    }
                )

    # 4. check over a folder of 50 small checkpoints, one process
    if "check" in parts:
        folder = make_folder(50)  # made by the child above
        naive, ours = Case("naive check"), Case("pinit check")
        interleave(
            [(naive, [PY, "-c", NAIVE_CHECK, str(folder)]), (ours, [*pinit, "check", str(folder), "--format", "json"])],
            args.repeats,
        )
        rows.append(
            {
                "case": "check a folder of 50 small checkpoints",
                "naive s": naive.med("wall"),
                "pinit s": ours.med("wall"),
                "speedup": naive.med("wall") / ours.med("wall"),
            }
        )

    machine = describe_machine()
    doc = {"machine": machine, "small": args.small, "repeats": args.repeats, "rows": rows}
    full = parts == {"stats", "listing", "reinit", "check"} and not args.small
    out = args.json or (str(HERE / "results.json") if full else None)
    if out:
        Path(out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"machine: {machine}; medians of {args.repeats} interleaved runs; page cache warm")
    for r in rows:
        print(f"\n{r['case']}")
        for k, v in r.items():
            if k != "case":
                print(f"  {k:34s} {v:10.3f}" if isinstance(v, float) else f"  {k:34s} {v}")


if __name__ == "__main__":
    main()
