"""``pinit inspect``: list tensors with statistics and flags."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from pinit.cli import options as opt
from pinit.cli import output as out
from pinit.cli.common import load_options, open_path
from pinit.cli.errors import die, warn
from pinit.cli.meta_view import meta_lines

if TYPE_CHECKING:
    from pinit.inspect import Report, TensorReport
    from pinit.meta import Meta

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow"}


def inspect(
    path: Annotated[
        str | None,
        typer.Argument(
            help="Checkpoint: a file (safetensors, torch pickle, TorchScript), a sharded or DCP folder, "
            "an index (or --model).",
            show_default=False,
        ),
    ] = None,
    model: opt.Model = None,
    arg: opt.ModelArg = None,
    match: opt.Match = None,
    exclude: opt.Exclude = None,
    flagged: opt.Flagged = False,
    no_stats: Annotated[
        bool, typer.Option("--no-stats", help="Header only: names, shapes, dtypes; reads no tensor data.")
    ] = False,
    values: Annotated[
        int, typer.Option("--values", metavar="N", help="Show the first N values of each tensor.", min=0)
    ] = 0,
    hist: Annotated[bool, typer.Option("--hist", help="A small histogram of each floating tensor.")] = False,
    meta: Annotated[
        bool,
        typer.Option("--meta", help="Also show the non-tensor content (epoch, step, hyper-parameters, metadata)."),
    ] = False,
    sort: Annotated[
        opt.SortKey, typer.Option("--sort", help="Row order: file order, name, or size (largest first).")
    ] = opt.SortKey.order,
    max_abs: opt.MaxAbs = 1e6,
    fmt: Annotated[opt.InspectFormat, typer.Option("--format", "-f", help="Output format.")] = opt.InspectFormat.table,
    timeout: opt.Timeout = None,
    cache: opt.Cache = None,
    unsafe_pickle: opt.UnsafePickle = False,
    allow_global: opt.AllowGlobal = None,
    quiet: opt.Quiet = False,
    no_warnings: opt.NoWarnings = False,
    debug: opt.Debug = False,
) -> None:
    """List every tensor of a checkpoint: shape, dtype, requires_grad, statistics and flags.

    With --model MODULE:CALLABLE instead of PATH, lists a live model's parameters and buffers as built
    (true requires_grad, and .grad in JSON); this imports and runs that code, so name only code you trust.

    Exit 0 whatever the flags: inspect informs, 'pinit check' gates.
    """
    from pinit.inspect import inspect_checkpoint
    from pinit.meta import checkpoint_meta
    from pinit.selection import Selector

    selector = Selector(match or (), exclude or ())
    if meta and fmt is opt.InspectFormat.csv:
        die("--meta goes with --format table, markdown or json, not csv")
    if (path is None) == (model is None):
        die("give a checkpoint PATH or --model MODULE:CALLABLE (one of them)")
    if arg and model is None:
        die("--arg goes with --model")
    if model is not None:
        from pinit.live import model_checkpoint, parse_model_spec

        opened = model_checkpoint(parse_model_spec(model, arg or ()))
    else:
        assert path is not None
        opened = open_path(path, load_options(allow_global, unsafe_pickle, timeout, cache))
    with opened as ckpt:
        chosen = [e for e in ckpt.tensors if selector(e.name)]
        total = sum(e.nbytes for e in chosen)
        work = (0, 0) if no_stats else (total, len(chosen))
        with out.progress_bar(work[0], "statistics", quiet, count=work[1]) as progress:
            report = inspect_checkpoint(
                ckpt,
                selector=selector,
                flagged=flagged,
                stats=not no_stats,
                values=values,
                hist=hist,
                max_abs=max_abs,
                sort=sort.value,
                progress=progress,
            )
        if model is not None:  # a live model's tensors also report their .grad
            from pinit.live import attach_grads

            attach_grads(report, ckpt, max_abs)
        meta_doc = checkpoint_meta(ckpt) if meta else None
    problem = ckpt.coverage.problem() if ckpt.coverage is not None else None
    # never shown as healthy: said on stderr (even with --quiet), in the summary lines and JSON coverage
    if problem is not None and opt.warning_filter(quiet, no_warnings)(True):
        warn(f"{ckpt.path}: {problem}")
    render(report, fmt, with_stats=not no_stats, values=values > 0, hist=hist, meta=meta_doc)


def render(
    report: Report, fmt: opt.InspectFormat, *, with_stats: bool, values: bool, hist: bool, meta: Meta | None = None
) -> None:
    if fmt is opt.InspectFormat.json:
        doc = report.as_json()
        if meta is not None:
            doc["meta"] = meta.as_json()
        out.print_json(doc)
    elif fmt is opt.InspectFormat.csv:
        _render_csv(report)
    else:
        columns, rows = _table(report, with_stats, values, hist)
        if fmt is opt.InspectFormat.markdown:
            out.render_markdown(columns, rows)
            print()
            for line in _summary_lines(report, with_stats):
                print(f"- {out.safe_line(line)}")
            if meta is not None:
                print("\n```\n" + "\n".join(meta_lines(meta)) + "\n```")
        else:
            out.render_table(columns, rows, title=f"{report.path} ({report.format})")
            for line in _summary_lines(report, with_stats):
                print(out.safe_line(line))
            if meta is not None:
                print("\n".join(meta_lines(meta)))


def _flag_cells(t: TensorReport) -> out.Cell:
    if not t.flags:
        return ("", None)
    worst = "error" if any(f.severity == "error" for f in t.flags) else "warning"
    return (", ".join(f.code for f in t.flags), SEVERITY_STYLE[worst])  # a narrow table wraps between codes


def _table(report: Report, with_stats: bool, values: bool, hist: bool) -> tuple[list[out.Column], list[list[out.Cell]]]:
    # on a narrow terminal: name, shape, dtype, flags, std, mean first (and what was asked
    # for: hist, values); min, max, params, requires_grad are hidden first, the last first
    Col = out.Col
    columns: list[out.Column] = [
        Col("name", "name", 0),
        Col("shape", "text", 1),
        Col("dtype", "text", 2),
        Col("params", "number", 9),
        Col("requires_grad", "text", 10),
    ]
    if with_stats:
        columns += [
            Col("mean", "number", 5),
            Col("std", "number", 4),
            Col("min", "number", 7),
            Col("max", "number", 8),
            Col("flags", "prose", 3, min_width=0),  # wrapped between codes, never inside one
        ]
    if hist:
        columns.append(Col("hist", "text", 6))
    if values:
        columns.append(Col("values", "prose", 6))
    rows = []
    for t in report.tensors:
        e = t.entry
        same = [n for n in t.tied_with if n in t.identical]
        overlapping = [n for n in t.tied_with if n not in t.identical]
        name = out.safe_text(e.name)
        if same:
            name += f"  (= {', '.join(out.safe_text(n) for n in same)})"
        if overlapping:
            name += f"  (shares bytes with {', '.join(out.safe_text(n) for n in overlapping)})"
        row: list[out.Cell] = [
            (name, None),
            (out.fmt_shape(e.shape), None),
            (e.dtype, None),
            (out.fmt_int(e.numel), None),
            (out.fmt_bool3(e.requires_grad), None),
        ]
        if with_stats:
            s = t.stats
            row += [
                (out.fmt_num(s.mean if s else None), None),
                (out.fmt_num(s.std if s else None), None),
                (out.fmt_num(s.min if s else None), None),
                (out.fmt_num(s.max if s else None), None),
                _flag_cells(t),
            ]
        if hist:
            row.append((out.sparkline(t.hist), None))
        if values:
            row.append(("[" + ", ".join(out.fmt_value(v) for v in t.values or []) + "]", None))
        rows.append(row)
    return columns, rows


def _summary_lines(report: Report, with_stats: bool = True) -> list[str]:
    s = report.summary()
    dtypes = ", ".join(f"{k}: {out.fmt_int(v)}" for k, v in s["by_dtype"].items())
    lines = [
        f"{out.plural(s['tensors'], 'tensor')}, {out.plural(s['parameters'], 'parameter')}, "
        f"{out.fmt_bytes(s['bytes'])}" + (f" ({dtypes})" if dtypes else ""),
        f"flags: {out.plural(s['errors'], 'error')}, {out.plural(s['warnings'], 'warning')}"
        if with_stats
        else "flags: not computed (--no-stats)",
    ]
    cov = s["coverage"]
    if cov["tensors_read"] != cov["tensors_found"] or not cov["tensors_found"]:
        found = out.plural(cov["tensors_found"], "tensor")
        lines.append(
            f"coverage: {cov['tensors_read']} of {found} found {'was' if cov['tensors_read'] == 1 else 'were'} read"
        )
        lines += [f"not read: {u}" for u in cov["uninterpreted"]]
    by_name = {t.name: t for t in report.tensors}
    for group in s["tied"]:
        first = by_name.get(group[0])
        identical = first is not None and all(n == group[0] or n in first.identical for n in group)
        shown = [out.safe_text(n) for n in group]
        lines.append("tied: " + " = ".join(shown) if identical else "shares storage: " + ", ".join(shown))
    for t in report.tensors:
        for f in t.flags:
            lines.append(f"{f.severity}: {out.safe_text(t.name)}: {f.code}: {f.message}")
    return lines


def _render_csv(report: Report) -> None:
    header = [
        "name", "shape", "dtype", "numel", "nbytes", "requires_grad",
        "mean", "std", "min", "max", "abs_max", "zeros", "nan", "inf", "subnormal", "flags", "tied_with",
    ]  # fmt: skip
    rows = []
    for t in report.tensors:
        e = t.entry
        st = t.stats.as_json() if t.stats else {}
        rows.append(
            [
                e.name,
                "x".join(str(s) for s in e.shape),
                e.dtype,
                e.numel,
                e.nbytes,
                out.fmt_bool3(e.requires_grad).replace("—", ""),
            ]
            + [st.get(k) for k in ("mean", "std", "min", "max", "abs_max", "zeros", "nan", "inf", "subnormal")]
            + [";".join(f.code for f in t.flags), ";".join(t.tied_with)]
        )
    out.render_csv(header, rows)
