"""``pinit schemes``: every initialization scheme, its options and shapes (never imports torch)."""

from __future__ import annotations

from typing import Annotated

import typer

from pinit.cli import output as out
from pinit.cli.options import JsonOrTable, Quiet


def schemes(
    fmt: Annotated[JsonOrTable, typer.Option("--format", "-f", help="Output format.")] = JsonOrTable.table,
    quiet: Quiet = False,  # accepted as by every command; schemes has no progress bar or warnings
) -> None:
    """List every initialization scheme with its options, defaults, accepted shapes and the 'default' rules."""
    from pinit.schemes import DEFAULT_RULES, SCHEMES, schemes_json

    if fmt is JsonOrTable.json:
        out.print_json({"schemes": schemes_json()})
        return
    rows = [
        [
            (s.name, "bold"),
            (", ".join(o.describe() for o in s.options) or "—", None),
            (s.shapes, None),
            (s.summary, None),
        ]
        for s in SCHEMES.values()
    ]
    out.render_table(
        [("scheme", "left"), ("options", "left"), ("shapes", "left"), ("what it does", "left")],
        rows,
        title="Schemes (each is torch.nn.init.<name>_; the trailing underscore is accepted too)",
    )
    print()
    out.render_table(
        [("tensor", "left"), ("default init", "left")],
        [[(t, None), (i, None)] for t, i in DEFAULT_RULES],
        title="Rules of the 'default' scheme (PyTorch's own reset_parameters), first match wins",
    )
    print()
    print("--gain takes a number or a nonlinearity name meaning calculate_gain(name), e.g. relu or leaky_relu:0.2")
