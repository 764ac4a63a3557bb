"""Measure the degenerate-value statistics of the real checkpoints listed in MANIFEST.json.

Writes CALIBRATION.md next to this file (and prints it). Needs only torch and safetensors:

    . .venv/bin/activate && python tests/data/real/calibrate.py

A file outside the manifest can be measured too: ``python calibrate.py --files a.pt b.pth``
(prints the table, writes nothing).

Per floating tensor: exact zeros, subnormals (0 < |x| < torch.finfo(dtype).tiny) with their smallest and
largest magnitude, NaN, Inf, abs_max, and the smallest non-zero magnitude. Per file: the largest subnormal
share of any tensor, and every tensor that holds subnormals together with >= 25% exact zeros.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ZERO_SHARE_WITH_SUBNORMALS = 0.25


def walk(obj, prefix=""):
    """Yield (dotted/slashed name, tensor) for every tensor in a nested dict/list checkpoint."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from walk(v, f"{prefix}/{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from walk(v, f"{prefix}[{i}]")


def load_tensors(path: Path, fmt: str):
    if fmt == "safetensors":
        from safetensors.torch import load_file

        return sorted(load_file(str(path)).items())  # its dict order is not stable
    if fmt == "torchscript":
        # TorchScript archives are code; only load ones from a trusted package (see MANIFEST.json).
        return list(torch.jit.load(str(path), map_location="cpu").state_dict().items())
    return list(walk(torch.load(path, map_location="cpu", weights_only=True)))


def sniff(path: Path) -> str:
    head = path.read_bytes()[:8]
    if head[:2] == b"PK":
        import zipfile

        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        return "torchscript" if any(n.endswith("/code/") or "/code/" in n for n in names) else "torch-zip"
    if head[:1] == b"\x80":
        return "torch-legacy"
    return "safetensors"


def fmt_num(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, int):
        return str(x)
    return f"{x:.3g}"


def tensor_stats(name: str, t: torch.Tensor) -> dict:
    tiny = torch.finfo(t.dtype).tiny
    x = t.detach().reshape(-1).to(torch.float64)  # exact for fp16/bf16/fp32 values
    a = x.abs()
    finite = torch.isfinite(x)
    nonzero = (a > 0) & finite
    sub = nonzero & (a < tiny)
    n = x.numel()
    n_sub = int(sub.sum())
    # subnormal magnitudes as integer multiples of the dtype's smallest subnormal ("ulps"): healthy decayed
    # values sit on round-off fixed points (e.g. 4 ulps for a 0.9 decay); pointer halves are ~2e4..3.3e4 ulps
    ulps = torch.round(a[sub] / smallest_subnormal(t.dtype)).to(torch.int64)
    vals, counts = torch.unique(ulps, return_counts=True) if n_sub else (ulps, ulps)
    top = sorted(zip(counts.tolist(), vals.tolist()), reverse=True)[:4]
    return {
        "name": name,
        "dtype": str(t.dtype).removeprefix("torch."),
        "shape": list(t.shape),
        "numel": n,
        "zeros": int((x == 0).sum()),
        "subnormals": n_sub,
        "sub_min": float(a[sub].min()) if n_sub else None,
        "sub_max": float(a[sub].max()) if n_sub else None,
        "nan": int(torch.isnan(x).sum()),
        "inf": int(torch.isinf(x).sum()),
        "abs_max": float(a[finite].max()) if bool(finite.any()) else None,
        "min_nonzero": float(a[nonzero].min()) if bool(nonzero.any()) else None,
        "sub_ulps": top,
        "distinct_sub_ulps": int(vals.numel()) if n_sub else 0,
        "constant": bool(n > 1 and finite.all() and bool((x == x[0]).all())),
        "first": float(x[0]),
    }


def smallest_subnormal(dtype: torch.dtype) -> float:
    """2**-149 for float32, 2**-24 for float16, 2**-133 for bfloat16 (tiny * eps)."""
    fi = torch.finfo(dtype)
    return fi.tiny * fi.eps


def measure(path: Path, fmt: str) -> list[dict]:
    rows = []
    for name, t in load_tensors(path, fmt):
        if t.is_floating_point() and t.numel() > 0:
            rows.append(tensor_stats(name, t))
    return rows


def share(r: dict, key: str) -> float:
    return r[key] / r["numel"] if r["numel"] else 0.0


def summarize(rows: list[dict]) -> dict:
    worst = max(rows, key=lambda r: share(r, "subnormals"), default=None)
    with_sub = [r for r in rows if r["subnormals"]]
    zmax = max(with_sub, key=lambda r: share(r, "zeros"), default=None)
    ulps: dict[int, int] = {}
    for r in with_sub:
        if r["dtype"] == "float32":
            for count, ulp in r["sub_ulps"]:
                ulps[ulp] = ulps.get(ulp, 0) + count
    return {
        "floating_tensors": len(rows),
        "numel": sum(r["numel"] for r in rows),
        "tensors_with_subnormals": len(with_sub),
        "subnormals_total": sum(r["subnormals"] for r in rows),
        "zeros_total": sum(r["zeros"] for r in rows),
        "nan_total": sum(r["nan"] for r in rows),
        "inf_total": sum(r["inf"] for r in rows),
        "max_sub_share": share(worst, "subnormals") if worst else 0.0,
        "max_sub_share_tensor": worst["name"] if worst and worst["subnormals"] else None,
        "max_sub_share_count": f"{worst['subnormals']}/{worst['numel']}" if worst else None,
        "max_zero_share_with_sub": share(zmax, "zeros") if zmax else None,
        "max_zero_share_with_sub_tensor": zmax["name"] if zmax else None,
        "sub_and_zero_heavy": [
            (r["name"], r["subnormals"], r["zeros"], share(r, "zeros"))
            for r in with_sub
            if share(r, "zeros") >= ZERO_SHARE_WITH_SUBNORMALS
        ],
        "min_subnormal": min((r["sub_min"] for r in with_sub), default=None),
        "max_subnormal": max((r["sub_max"] for r in with_sub), default=None),
        "fp32_top_sub_ulps": sorted(((c, u) for u, c in ulps.items()), reverse=True)[:5],
        "all_zero": [r["name"] for r in rows if r["zeros"] == r["numel"] and r["numel"] > 1],
        "constant_nonzero": [(r["name"], r["first"]) for r in rows if r["constant"] and r["first"] != 0],
        "max_zero_share": max((share(r, "zeros") for r in rows if r["numel"] > 1), default=0.0),
    }


def table(rows: list[dict]) -> list[str]:
    out = [
        "| tensor | dtype | shape | numel | zeros | subnormals | sub min | sub max | sub ulps (count×ulp) | NaN "
        "| Inf | abs_max | min nonzero |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shape = "×".join(map(str, r["shape"])) or "()"
        ulps = ", ".join(f"{c}×{u}" for c, u in r["sub_ulps"]) or "-"
        if r["distinct_sub_ulps"] > len(r["sub_ulps"]):
            ulps += f" (+{r['distinct_sub_ulps'] - len(r['sub_ulps'])} more values)"
        out.append(
            f"| `{r['name']}` | {r['dtype']} | {shape} | {r['numel']} | {r['zeros']} | {r['subnormals']} "
            f"| {fmt_num(r['sub_min'])} | {fmt_num(r['sub_max'])} | {ulps} | {r['nan']} | {r['inf']} "
            f"| {fmt_num(r['abs_max'])} | {fmt_num(r['min_nonzero'])} |"
        )
    return out


def summary_lines(s: dict) -> list[str]:
    lines = [
        f"- floating tensors: {s['floating_tensors']} ({s['numel']} values); with subnormals: "
        f"{s['tensors_with_subnormals']}; subnormal values: {s['subnormals_total']}; exact zeros: "
        f"{s['zeros_total']}; NaN: {s['nan_total']}; Inf: {s['inf_total']}",
    ]
    if s["max_sub_share_tensor"]:
        lines.append(
            f"- max subnormal share of any tensor: {s['max_sub_share']:.4%} "
            f"(`{s['max_sub_share_tensor']}`, {s['max_sub_share_count']}); subnormal magnitudes "
            f"{fmt_num(s['min_subnormal'])} .. {fmt_num(s['max_subnormal'])}"
        )
        lines.append(
            f"- highest zero share of a tensor that has subnormals: {s['max_zero_share_with_sub']:.2%} "
            f"(`{s['max_zero_share_with_sub_tensor']}`)"
        )
        if s["fp32_top_sub_ulps"]:
            top = ", ".join(f"{c} at {u}×2^-149" for c, u in s["fp32_top_sub_ulps"])
            lines.append(f"- most common float32 subnormal values: {top}")
    else:
        lines.append("- max subnormal share of any tensor: 0 (no subnormals)")
    if s["sub_and_zero_heavy"]:
        for name, n_sub, n_zero, zshare in s["sub_and_zero_heavy"]:
            lines.append(f"- subnormals AND >= 25% zeros: `{name}`: {n_sub} subnormals, {n_zero} zeros ({zshare:.1%})")
    else:
        lines.append("- tensors with subnormals AND >= 25% zeros: none")
    lines.append(f"- highest zero share of any tensor (numel > 1): {s['max_zero_share']:.1%}")
    if s["all_zero"]:
        lines.append(f"- all-zero tensors ({len(s['all_zero'])}): " + ", ".join(f"`{n}`" for n in s["all_zero"]))
    if s["constant_nonzero"]:
        lines.append(
            f"- constant non-zero tensors ({len(s['constant_nonzero'])}): "
            + ", ".join(f"`{n}` (= {v:g})" for n, v in s["constant_nonzero"])
        )
    return lines


def findings(measured: list[tuple[dict, list[dict]]]) -> list[str]:
    """Cross-file numbers, real (original/slice) files apart from derived ones."""
    out = ["## Findings across files", ""]
    for label, kinds in (("real (original + slice)", ("original", "slice", "?")), ("derived", ("derived",))):
        rows = [(e["file"], r) for e, rs in measured if e.get("kind", "?") in kinds for r in rs]
        if not rows:
            continue
        with_sub = [(f, r) for f, r in rows if r["subnormals"]]
        out.append(f"### {label}: {len({f for f, _ in rows})} files, {len(rows)} floating tensors")
        out.append("")
        out.append(
            f"- NaN: {sum(r['nan'] for _, r in rows)}, Inf: {sum(r['inf'] for _, r in rows)}; max abs value: "
            f"{fmt_num(max((r['abs_max'] or 0) for _, r in rows))}"
        )
        out.append(f"- tensors with subnormals: {len(with_sub)}")
        if with_sub:
            f, r = max(with_sub, key=lambda fr: share(fr[1], "subnormals"))
            out.append(
                f"- max subnormal share: {share(r, 'subnormals'):.3%} ({r['subnormals']}/{r['numel']}, `{r['name']}`"
                f" in {f})"
            )
            f, r = max(with_sub, key=lambda fr: share(fr[1], "zeros"))
            out.append(
                f"- max zero share among tensors with subnormals: {share(r, 'zeros'):.2%} ({r['zeros']}/{r['numel']}"
                f", `{r['name']}` in {f})"
            )
            heavy = [(f, r) for f, r in with_sub if share(r, "zeros") >= ZERO_SHARE_WITH_SUBNORMALS]
            out.append(f"- tensors with subnormals AND >= 25% zeros: {len(heavy)}")
            for f, r in heavy:
                out.append(f"  - `{r['name']}` in {f}: {share(r, 'zeros'):.1%} zeros, {r['subnormals']} subnormals")
            for dtype in sorted({r["dtype"] for _, r in with_sub}):
                sub = [r for _, r in with_sub if r["dtype"] == dtype]
                unit = smallest_subnormal(getattr(torch, dtype))
                lo = min(r["sub_min"] for r in sub)
                hi = max(r["sub_max"] for r in sub)
                out.append(
                    f"- {dtype} subnormal magnitudes: {fmt_num(lo)} .. {fmt_num(hi)} "
                    f"({round(lo / unit)} .. {round(hi / unit)} × the smallest subnormal {unit:.3g})"
                )
        zero_heavy = [r for _, r in rows if r["numel"] > 1 and share(r, "zeros") >= ZERO_SHARE_WITH_SUBNORMALS]
        all_zero = [r for r in zero_heavy if r["zeros"] == r["numel"]]
        partial = max((share(r, "zeros") for r in zero_heavy if r["zeros"] < r["numel"]), default=0.0)
        out.append(
            f"- tensors with >= 25% exact zeros: {len(zero_heavy)} (all-zero: {len(all_zero)}; also holding "
            f"subnormals: {sum(1 for r in zero_heavy if r['subnormals'])}); highest zero share of a tensor that is "
            f"not all-zero: {partial:.1%}"
        )
        out.append("")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", nargs="+", type=Path, help="measure these files instead of the manifest")
    p.add_argument("--summary-only", action="store_true")
    args = p.parse_args(argv)

    if args.files:
        entries = [{"file": str(f), "format": sniff(f), "_path": f} for f in args.files]
    else:
        entries = json.loads((HERE / "MANIFEST.json").read_text())
        for e in entries:
            e["_path"] = HERE / e["file"]

    doc = [
        "# Calibration: degenerate-value statistics of real trained checkpoints",
        "",
        "Generated by `python tests/data/real/calibrate.py` from the files in `MANIFEST.json` (do not edit by hand).",
        f"Subnormal = 0 < |x| < torch.finfo(dtype).tiny (float32 {torch.finfo(torch.float32).tiny:.3g}, "
        f"float16 {torch.finfo(torch.float16).tiny:.3g}, bfloat16 {torch.finfo(torch.bfloat16).tiny:.3g}). "
        "'ulp' = multiple of the dtype's smallest subnormal (float32 2^-149 = 1.4e-45, float16 2^-24, "
        "bfloat16 2^-133). Integer tensors (num_batches_tracked, step counters) and empty tensors are skipped; "
        "TorchScript files are measured through state_dict().",
        "",
    ]
    overview = [
        "## Overview",
        "",
        "| file | kind | format | float tensors | values | tensors w/ subnormals | subnormals | max sub share "
        "(tensor) | subnormals AND >=25% zeros | NaN | Inf |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    details = []
    measured = []
    for e in entries:
        rows = measure(e["_path"], e["format"])
        measured.append((e, rows))
        s = summarize(rows)
        heavy = "; ".join(f"`{n}` ({z:.1%} zeros, {k} sub)" for n, k, _, z in s["sub_and_zero_heavy"]) or "none"
        worst = f"{s['max_sub_share']:.3%} (`{s['max_sub_share_tensor']}`)" if s["max_sub_share_tensor"] else "0"
        overview.append(
            f"| {e['file']} | {e.get('kind', '?')} | {e['format']} | {s['floating_tensors']} | {s['numel']} "
            f"| {s['tensors_with_subnormals']} | {s['subnormals_total']} | {worst} | {heavy} | {s['nan_total']} "
            f"| {s['inf_total']} |"
        )
        details += [f"## {e['file']}", "", *summary_lines(s), ""]
        if not args.summary_only:
            details += [*table(rows), ""]
    text = "\n".join([*doc, *findings(measured), *overview, "", *details])
    print(text)
    if not args.files:
        (HERE / "CALIBRATION.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
