"""``pinit report``: one self-contained HTML page of a checkpoint, and its plots as PNG files."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated

import typer

from pinit.cli import options as opt
from pinit.cli import output as out
from pinit.cli.common import load_options, open_path
from pinit.cli.errors import die, warn

if TYPE_CHECKING:
    from pinit.checkpoint import Checkpoint


def report(
    path: Annotated[
        str,
        typer.Argument(
            help="Checkpoint: a file (safetensors, torch pickle, TorchScript), a sharded or DCP folder, or an index.",
            show_default=False,
        ),
    ],
    out_html: Annotated[
        str | None,
        typer.Option("--out", "-o", metavar="FILE", help="Write the HTML page here.", show_default=False),
    ] = None,
    png: Annotated[
        str | None,
        typer.Option("--png", metavar="DIR", help="Also write each plot as a PNG file into this folder."),
    ] = None,
    max_histograms: Annotated[
        int,
        typer.Option(
            "--max-histograms",
            metavar="N",
            help="Most histograms drawn (flagged ones first, then the largest).",
            min=0,
        ),
    ] = 200,
    max_abs: opt.MaxAbs = 1e6,
    timeout: opt.Timeout = None,
    cache: opt.Cache = None,
    unsafe_pickle: opt.UnsafePickle = False,
    allow_global: opt.AllowGlobal = None,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Write an HTML report: summary, flags, std/abs_max across depth, histograms, tied groups, metadata.

    The page is one file that works offline (plots are embedded). Needs matplotlib: pip install 'pinit[report]'.
    """
    from pinit.inspect import inspect_checkpoint
    from pinit.meta import checkpoint_meta
    from pinit.report import build_page, require_matplotlib, write_page

    if out_html is None and png is None:
        die("say where to write: --out FILE (the HTML page) and/or --png DIR")
    require_matplotlib()  # before any tensor is read
    with open_path(path, load_options(allow_global, unsafe_pickle, timeout, cache)) as ckpt:
        total = sum(e.nbytes for e in ckpt.tensors)
        with out.progress_bar(total, "statistics", quiet, count=len(ckpt.tensors)) as progress:
            rep = inspect_checkpoint(ckpt, hist=True, max_abs=max_abs, progress=progress)
        meta = checkpoint_meta(ckpt)
    _refuse_overwriting_input(ckpt, out_html)
    problem = ckpt.coverage.problem() if ckpt.coverage is not None else None
    if problem is not None:
        warn(f"{ckpt.path}: {problem}")
    from pinit import __version__

    page = build_page(rep, meta, max_histograms=max_histograms, version=__version__)
    write_page(page, out_html, png)
    if not quiet:
        for note in page.notes:
            print(f"note: {note}")
    s = rep.summary()
    where = [out.safe_text(out_html)] if out_html else []
    if png is not None:
        where.append(f"{len(page.plots)} PNG file{'s' if len(page.plots) != 1 else ''} to {out.safe_text(png)}")
    print(
        f"{out.safe_text(ckpt.path)}: {s['tensors']:,} tensors, {s['errors']:,} error and {s['warnings']:,} warning"
        f" flags; wrote {' and '.join(where)}"
    )


def _refuse_overwriting_input(ckpt: Checkpoint, out_html: str | None) -> None:
    """``-o`` naming the checkpoint itself (or one of its shards) is a slip that would lose it."""
    if out_html is None or not os.path.exists(out_html):
        return
    for source in [ckpt.path, *ckpt.source.files()]:
        try:
            same = os.path.samefile(out_html, source)
        except OSError:
            continue
        if same:
            die(f"--out {out_html} is the checkpoint being reported on; name another file")
