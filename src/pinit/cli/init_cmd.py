"""``pinit init MODULE:CALLABLE --out FILE``: build a model, initialize it, save its state dict."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from pinit.cli import options as opt
from pinit.cli import output as out
from pinit.cli.errors import warn

if TYPE_CHECKING:
    from pinit.live import InitResult


def init(
    model: Annotated[
        str,
        typer.Argument(
            metavar="MODULE:CALLABLE",
            help="The model: MODULE:CALLABLE or path/to/file.py:CALLABLE (imported and called: this runs that code).",
            show_default=False,
        ),
    ],
    out_path: Annotated[
        str,
        typer.Option(
            "--out", "-o", metavar="FILE", help="Where to save the state dict: .safetensors → safetensors, else torch."
        ),
    ],
    arg: opt.ModelArg = None,
    scheme: Annotated[
        str | None,
        typer.Option(
            "--scheme",
            "-s",
            metavar="NAME",
            help="'default' (each module's own reset_parameters(), seeded per module; the default) or a "
            "scheme of 'pinit schemes' applied to the --match tensors.",
            show_default="default",
        ),
    ] = None,
    plan: opt.Plan = None,
    match: opt.Match = None,
    exclude: opt.Exclude = None,
    a: opt.SchemeA = None,
    b: opt.SchemeB = None,
    mean: opt.SchemeMean = None,
    std: opt.SchemeStd = None,
    value: opt.SchemeValue = None,
    gain: opt.SchemeGain = None,
    mode: opt.SchemeMode = None,
    nonlinearity: opt.SchemeNonlinearity = None,
    sparsity: opt.SchemeSparsity = None,
    groups: opt.SchemeGroups = None,
    seed: opt.Seed = None,
    allow_uninitialized: Annotated[
        bool,
        typer.Option(
            "--allow-uninitialized", help="Save even when some tensor still looks uninitialized (or holds NaN/Inf)."
        ),
    ] = False,
    no_provenance: Annotated[
        bool, typer.Option("--no-provenance", help="Do not add the 'pinit' record to safetensors metadata.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace a read-only output file.")] = False,
    fmt: Annotated[opt.JsonOrTable, typer.Option("--format", "-f", help="Report format.")] = opt.JsonOrTable.table,
    quiet: opt.Quiet = False,
    no_warnings: opt.NoWarnings = False,
    debug: opt.Debug = False,
) -> None:
    """Build a model from your code, initialize it, and save its state dict (loads with strict=True).

    This imports and runs MODULE:CALLABLE (called with the --arg values): name only code you trust.
    --scheme default calls every module's reset_parameters() under torch.manual_seed(derive_seed(seed,
    module_name)), so the result depends only on the seed; modules without one and tensors no rule covers
    are listed, and a result that still looks uninitialized is an error unless --allow-uninitialized.
    """
    from pinit.files import is_url
    from pinit.live import init_model, parse_model_spec

    if is_url(out_path):
        from pinit.errors import PinitError

        raise PinitError("--out must be a local path: pinit writes local files only")
    spec = parse_model_spec(model, arg or ())
    result = init_model(
        spec,
        out_path,
        scheme=scheme,
        options=opt.scheme_options(a, b, mean, std, value, gain, mode, nonlinearity, sparsity, groups),
        plan=plan,
        match=match or (),
        exclude=exclude or (),
        seed=seed,
        allow_uninitialized=allow_uninitialized,
        provenance=not no_provenance,
        force=force,
    )
    shown = opt.warning_filter(quiet, no_warnings)
    for w in result.warnings:
        if shown(False):
            warn(w)
    if result.seed_drawn:
        print(f"seed: {result.seed} (drawn; rerun with --seed {result.seed} to reproduce)", file=sys.stderr)
    if fmt is opt.JsonOrTable.json:
        out.print_json(result.as_json())
        return
    _render(result)


def _render(result: InitResult) -> None:
    rows: list[list[out.Cell]] = [
        [(out.safe_text(i["name"] or "(root)"), None), (i["how"], None)] for i in result.initialized
    ]
    title = f"{result.model}: initialized (seed {result.seed})"
    out.render_table([out.Col("module / tensor", "name", 0), out.Col("how", "text", 1)], rows, title=title)
    if result.not_covered:
        print(out.safe_line(f"not covered (kept as built): {', '.join(result.not_covered)}"))
    if result.aliases:
        print(out.safe_line("tied, saved once: " + ", ".join(f"{k} = {v}" for k, v in result.aliases.items())))
    print(out.safe_line(f"wrote {result.out} ({result.format})"))
