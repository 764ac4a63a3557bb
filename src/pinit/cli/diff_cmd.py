"""``pinit diff``: compare two checkpoints.  Exit 0 equal within tolerance, 1 different, 2 error."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from pinit.cli import options as opt
from pinit.cli import output as out
from pinit.cli.common import load_options, open_path

if TYPE_CHECKING:
    from pinit.diff import DiffReport


def diff(
    a: Annotated[
        str, typer.Argument(help="First checkpoint (the reference for relative differences).", show_default=False)
    ],
    b: Annotated[str, typer.Argument(help="Second checkpoint.", show_default=False)],
    atol: Annotated[float, typer.Option("--atol", help="Absolute tolerance.", min=0.0)] = 0.0,
    rtol: Annotated[
        float, typer.Option("--rtol", help="Relative tolerance (|a-b| <= atol + rtol·|b|).", min=0.0)
    ] = 0.0,
    match: opt.Match = None,
    fmt: Annotated[opt.JsonOrTable, typer.Option("--format", "-f", help="Output format.")] = opt.JsonOrTable.table,
    unsafe_pickle: opt.UnsafePickle = False,
    allow_global: opt.AllowGlobal = None,
    debug: opt.Debug = False,
) -> None:
    """Compare two checkpoints tensor by tensor (names, shapes, dtypes, values); .pt and .safetensors compare fine."""
    from pinit.diff import diff_checkpoints

    options = load_options(allow_global, unsafe_pickle)
    with open_path(a, options) as ca, open_path(b, options) as cb:
        report = diff_checkpoints(ca, cb, atol=atol, rtol=rtol, match=match or ())
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
    for t in report.tensors:
        if t.status == "identical":
            continue
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
            [
                ("name", "left"),
                ("status", "left"),
                ("tensor", "left"),
                ("max abs diff", "right"),
                ("rel L2 diff", "right"),
                ("mismatched", "right"),
            ],
            rows,
            title=f"{report.a} ↔ {report.b}",
        )
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
    for side, groups in (("A", report.ties_only_in_a), ("B", report.ties_only_in_b)):
        for g in groups:  # the values may be equal, but one side's copies no longer change together
            print(out.safe_line(f"shared storage only in {side}: {' = '.join(g)}"))
    print(("equal: " if report.equal else "different: ") + (", ".join(parts) or "no tensors"))
