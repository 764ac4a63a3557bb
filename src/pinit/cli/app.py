"""The ``pinit`` command: a thin layer that parses options, calls the core and renders."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from pinit import __version__
from pinit.cli import check_cmd, diff_cmd, inspect_cmd, options, reinit_cmd, schemes_cmd
from pinit.cli.errors import PinitGroup

app = typer.Typer(
    cls=PinitGroup,
    name="pinit",
    help="Inspect, check and re-initialize PyTorch checkpoints (.pt/.pth/.bin/.ckpt, .safetensors, sharded folders).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pinit {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: options.Debug = False,
) -> None:
    """Inspect, check and re-initialize PyTorch checkpoints."""


app.command("inspect")(inspect_cmd.inspect)
app.command("reinit")(reinit_cmd.reinit)
app.command("check")(check_cmd.check)
app.command("diff")(diff_cmd.diff)
app.command("schemes")(schemes_cmd.schemes)


def main() -> None:
    """Run the command line; ends with ``SystemExit`` as any click program does."""
    # pinit runs its own worker threads; BLAS threads inside each would only compete for the
    # two cores (numpy is imported later, so this still applies). A user's setting wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    app()


def entry_point() -> None:
    """The ``pinit`` console script and ``python -m pinit``: :func:`main`, then, once torch is
    loaded, an exit without the interpreter's teardown, which takes half a second with torch
    (longer than most of pinit's work). Every file pinit writes is closed and fsynced by then;
    only the standard streams are left to flush. Python callers use :func:`main`."""
    try:
        main()
    except SystemExit as e:
        if "torch" in sys.modules and (e.code is None or isinstance(e.code, int)):
            _exit_now(e.code or 0)
        raise


def _exit_now(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
