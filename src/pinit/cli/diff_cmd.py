"""``pinit diff``: compare two checkpoints.  Exit 0 equal within tolerance, 1 different, 2 error."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from pinit.cli import options as opt
from pinit.cli import output as out
from pinit.cli.common import load_options, open_path

if TYPE_CHECKING:
    from pinit.diff import DiffReport, TensorDiff


def diff(
    a: Annotated[
        str,
        typer.Argument(
            metavar="A", help="First checkpoint (the reference for relative differences).", show_default=False
        ),
    ],
    b: Annotated[str, typer.Argument(metavar="B", help="Second checkpoint.", show_default=False)],
    atol: Annotated[float, typer.Option("--atol", metavar="FLOAT", help="Absolute tolerance.", min=0.0)] = 0.0,
    rtol: Annotated[
        float, typer.Option("--rtol", metavar="FLOAT", help="Relative tolerance (|a-b| <= atol + rtol·|b|).", min=0.0)
    ] = 0.0,
    match: opt.Match = None,
    fmt: Annotated[opt.JsonOrTable, typer.Option("--format", "-f", help="Output format.")] = opt.JsonOrTable.table,
    timeout: opt.Timeout = None,
    cache: opt.Cache = None,
    unsafe_pickle: opt.UnsafePickle = False,
    allow_global: opt.AllowGlobal = None,
    quiet: opt.Quiet = False,
    no_warnings: opt.NoWarnings = False,
    debug: opt.Debug = False,
) -> None:
    """Compare two checkpoints tensor by tensor (names, shapes, dtypes, values); .pt and .safetensors compare fine."""
    from pinit.diff import diff_checkpoints
    from pinit.selection import Selector

    options = load_options(allow_global, unsafe_pickle, timeout, cache)
    with open_path(a, options) as ca, open_path(b, options) as cb:
        selector, in_b = Selector(match or (), ()), {e.name for e in cb.tensors}
        work = sum(e.nbytes for e in ca.tensors if e.name in in_b and selector(e.name))
        with out.progress_bar(work, "comparing", quiet) as progress:
            report = diff_checkpoints(ca, cb, atol=atol, rtol=rtol, match=match or (), progress=progress)
    if fmt is opt.JsonOrTable.json:
        out.print_json(report.as_json())
    else:
        _table(report)
    raise typer.Exit(0 if report.equal else 1)


def _desc(dtype: str | None, shape: tuple[int, ...] | None) -> str:
    """``float32[8, 3]``, or one dash for a side that lacks the tensor."""
    if dtype is None or shape is None:
        return "—"
    return f"{dtype}{out.fmt_shape(shape)}"


def _notes(t: TensorDiff) -> list[str]:
    """Lines under the table for NaN/Inf positions that differ (a NaN against a number leaves
    the max abs diff at 0, which is over finite positions, yet the tensor is "changed")."""
    name = out.safe_text(t.name)
    lines = []
    for n, side, other in ((t.nan_only_in_a, "A", "B"), (t.nan_only_in_b, "B", "A")):
        if n:
            lines.append(f"{name}: NaN in {side} at {out.plural(n, 'position')} where {other} has a number")
    if t.inf_mismatch:
        lines.append(f"{name}: ±Inf at {out.plural(t.inf_mismatch, 'position')} where the other side differs")
    return lines


def _table(report: DiffReport) -> None:
    style = {
        "changed": "bold red",
        "shape_changed": "bold red",
        "dtype_changed": "bold red",
        "only_in_a": "yellow",
        "only_in_b": "yellow",
        "within_tolerance": "cyan",
    }
    rows: list[list[out.Cell]] = []
    notes: list[str] = []
    for t in report.tensors:
        if t.status == "identical":
            continue
        notes += _notes(t)
        if t.shape_a != t.shape_b or t.dtype_a != t.dtype_b:
            what = f"{_desc(t.dtype_a, t.shape_a)} → {_desc(t.dtype_b, t.shape_b)}"
        else:
            what = _desc(t.dtype_a, t.shape_a)
        rows.append(
            [
                (out.safe_text(t.name), None),
                (t.status, style.get(t.status)),
                (what, None),
                (out.fmt_num(t.max_abs_diff), None),
                (out.fmt_num(t.rel_l2_diff), None),
                ("" if t.mismatched is None else out.fmt_int(t.mismatched), None),
            ]
        )
    if rows:
        out.render_table(
            [  # on a narrow terminal mismatched goes first, then rel L2 diff, then tensor
                out.Col("name", "name", 0),
                out.Col("status", "text", 0),
                out.Col("tensor", "text", 2),
                out.Col("max abs diff", "number", 1),
                out.Col("rel L2 diff", "number", 3),
                out.Col("mismatched", "number", 4),
            ],
            rows,
            title=f"{report.a} ↔ {report.b}",
        )
    for note in notes:  # why a row differs, where its numbers do not say
        print(out.safe_line(note))
    s = report.summary()
    parts = [
        f"{s[k]} {k.replace('_', ' ')}"
        for k in (
            "identical",
            "within_tolerance",
            "changed",
            "shape_changed",
            "dtype_changed",
            "only_in_a",
            "only_in_b",
        )
        if s[k]
    ]
    upcast = [t.values for t in report.tensors if t.status == "dtype_changed" and t.values is not None]
    if upcast:  # the dtype changes whose values were compared (upcast to float64)
        kinds = ", ".join(
            f"{upcast.count(v)} {v.replace('_', ' ')}"
            for v in ("identical", "within_tolerance", "changed")
            if v in upcast
        )
        i = next(i for i, p in enumerate(parts) if p.endswith("dtype changed"))
        parts[i] += f" (values: {kinds})"
    for side, groups in (("A", report.ties_only_in_a), ("B", report.ties_only_in_b)):
        for g in groups:  # the values may be equal, but one side's copies no longer change together
            print(out.safe_line(f"shared storage only in {side}: {' = '.join(g)}"))
    print(("equal: " if report.equal else "different: ") + (", ".join(parts) or "no tensors"))
