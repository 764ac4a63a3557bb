"""``pinit reinit``: rewrite chosen tensors with a torch.nn.init scheme and save."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from pinit.cli import options as opt
from pinit.cli import output as out
from pinit.cli.common import large_allocations_from_mmap, load_options
from pinit.cli.errors import warn

if TYPE_CHECKING:
    from pinit.reinitialize import ReinitResult


def reinit(
    path: Annotated[
        str,
        typer.Argument(
            help="Checkpoint: a file (safetensors, torch pickle, TorchScript), a sharded or DCP folder, or an index.",
            show_default=False,
        ),
    ],
    match: opt.Match = None,
    exclude: opt.Exclude = None,
    flagged: opt.Flagged = False,
    scheme: Annotated[
        str | None,
        typer.Option("--scheme", "-s", metavar="NAME", help="Scheme name (see 'pinit schemes'), e.g. kaiming_normal."),
    ] = None,
    plan: opt.Plan = None,
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
    out_path: Annotated[
        str | None,
        typer.Option(
            "--out",
            "-o",
            metavar="PATH",
            help="Write here instead of in place; .safetensors → safetensors, else torch zip.",
        ),
    ] = None,
    backup: Annotated[bool, typer.Option("--backup", help="Keep the file being replaced as PATH.bak.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Rewrite a read-only file in place.")] = False,
    with_tied: Annotated[
        bool,
        typer.Option(
            "--with-tied",
            help="Also re-initialize every tensor sharing storage with a selected one (tied weights, "
            "views such as q = qkv[0:1]): the group is drawn once. Without it such a selection is an error.",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show statistics before and after; write nothing.")
    ] = False,
    no_provenance: Annotated[
        bool, typer.Option("--no-provenance", help="Do not add the 'pinit' record to safetensors metadata.")
    ] = False,
    max_abs: opt.MaxAbs = 1e6,
    fmt: Annotated[opt.JsonOrTable, typer.Option("--format", "-f", help="Report format.")] = opt.JsonOrTable.table,
    timeout: opt.Timeout = None,
    cache: opt.Cache = None,
    unsafe_pickle: opt.UnsafePickle = False,
    allow_global: opt.AllowGlobal = None,
    quiet: opt.Quiet = False,
    no_warnings: opt.NoWarnings = False,
    debug: opt.Debug = False,
) -> None:
    """Re-initialize the selected tensors with one torch.nn.init scheme and save (in place by default)."""
    from pinit.reinitialize import reinit as run_reinit

    given = opt.scheme_options(a, b, mean, std, value, gain, mode, nonlinearity, sparsity, groups)
    _local_output(path, out_path, dry_run)
    large_allocations_from_mmap()
    result = run_reinit(
        path,
        match=match or (),
        exclude=exclude or (),
        scheme=scheme,
        options=given,
        plan=plan,
        flagged=flagged,
        seed=seed,
        out=out_path,
        backup=backup,
        force=force,
        with_tied=with_tied,
        dry_run=dry_run,
        provenance=not no_provenance,
        max_abs=max_abs,
        load_options=load_options(allow_global, unsafe_pickle, timeout, cache),
        progress=lambda total: out.progress_bar(total, "re-initializing", quiet),
    )
    shown = opt.warning_filter(quiet, no_warnings)
    for w in result.warnings:
        if shown(w.lost_content):
            warn(w.text)
    if result.seed_drawn:
        print(f"seed: {result.seed} (drawn; rerun with --seed {result.seed} to reproduce)", file=sys.stderr)
    if fmt is opt.JsonOrTable.json:
        out.print_json(result.as_json())
        return
    _render(result)


def _local_output(path: str, out_path: str | None, dry_run: bool) -> None:
    """pinit writes local files only: a remote checkpoint (hf://, https://, s3://, gs://) is
    re-initialized into a local --out, never in place."""
    from pinit.errors import PinitError
    from pinit.files import is_url

    if out_path is not None and is_url(out_path):
        raise PinitError("--out must be a local path: pinit writes local files only")
    if out_path is None and not dry_run and is_url(path):
        from pinit.remote import redact

        raise PinitError("a remote checkpoint is not written in place: give --out FILE (a local path)", redact(path))


def _render(result: ReinitResult) -> None:
    # on a narrow terminal: name, scheme, after std, before std first; then after max, after min,
    # options, before mean, after mean are hidden, the last first (while names keep NAME_WANT)
    Col = out.Col
    columns: list[out.Column] = [Col("name", "name", 0), Col("scheme", "text", 1), Col("options", "prose", 8)]
    if result.dry_run:
        columns += [
            Col("before mean", "number", 7),
            Col("before std", "number", 3),
            Col("after mean", "number", 6),
            Col("after std", "number", 2),
            Col("after min", "number", 9),
            Col("after max", "number", 10),
        ]
    rows = []
    for c in result.changes:
        applied = c.scheme if c.scheme == c.applied else f"{c.scheme} → {c.applied}"
        opts = ", ".join(f"{k}={out.fmt_num(v) if isinstance(v, float) else v}" for k, v in c.options.items())
        row: list[out.Cell] = [(out.safe_text(c.name), None), (applied, None), (opts, None)]
        if result.dry_run:
            b, af = c.before, c.after
            row += [
                (out.fmt_num(b.mean if b else None), None),
                (out.fmt_num(b.std if b else None), None),
                (out.fmt_num(af.mean if af else None), None),
                (out.fmt_num(af.std if af else None), None),
                (out.fmt_num(af.min if af else None), None),
                (out.fmt_num(af.max if af else None), None),
            ]
        rows.append(row)
    seed = f" (seed {result.seed})" if result.seed is not None else ""
    title = f"{result.path}: {'dry run, nothing written' if result.dry_run else 're-initialized'}{seed}"
    out.render_table(columns, rows, title=title)
    if result.dry_run:
        print(f"{out.plural(len(result.changes), 'tensor')} would change; nothing was written")
    else:
        written = ", ".join(result.files_written)
        n = out.plural(len(result.changes), "tensor")
        print(out.safe_line(f"{n} re-initialized; wrote {written} ({result.format})"))
