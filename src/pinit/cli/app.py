"""The ``pinit`` command: a thin layer that parses options, calls the core and renders."""

from __future__ import annotations

import os
import re
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperOption

from pinit import __version__
from pinit.cli import check_cmd, diff_cmd, init_cmd, inspect_cmd, options, reinit_cmd, report_cmd, schemes_cmd
from pinit.cli.errors import PinitGroup


def fmt_default(v: float) -> str:
    """One format for every number in the help: ``1e6``, ``0``, ``0.5`` (never ``1000000.0``)."""
    s = f"{v:g}"
    if "e" in s:
        mantissa, exp = s.split("e")
        s = f"{mantissa}e{int(exp)}"
    return s


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?")


class _Argument(TyperArgument):
    """A positional argument shown as ``PATH`` (``PATH...`` for several), not ``{path}``."""

    def make_metavar(self, ctx: Any, *, usage: bool = False) -> str:
        var = self.metavar or (self.name or "").upper()
        if self.nargs != 1:
            var += "..."
        return f"[{var}]" if usage and not self.required else var


class _Option(TyperOption):
    """An option whose placeholder is a word (``FLOAT``, ``INT``, ``[a|b]``; never ``<str>`` or
    ``<float range>``) and whose numbers (default, range) are written as :func:`fmt_default`."""

    def make_metavar(self, ctx: Any) -> str:
        if self.metavar is not None:
            return self.metavar
        t = self.type
        choices = getattr(t, "choices", None)
        if choices is not None:
            return "[" + "|".join(str(getattr(c, "value", c)) for c in choices) + "]"
        from typer._click import types

        if isinstance(t, types.FloatParamType):
            return "FLOAT"
        if isinstance(t, types.IntParamType):
            return "INT"
        return "TEXT"

    def _get_default_string(self, *, ctx: Any, show_default_is_str: bool, default_value: Any) -> str:
        if show_default_is_str:  # the default a None stands for (a setting may come from pyproject.toml)
            return str(self.show_default)
        if isinstance(default_value, float):
            return fmt_default(default_value)
        return super()._get_default_string(
            ctx=ctx, show_default_is_str=show_default_is_str, default_value=default_value
        )

    def get_help_record(self, ctx: Any) -> tuple[str, str] | None:
        rv = super().get_help_record(ctx)
        describe = getattr(self.type, "_describe_range", None)
        if rv is None or describe is None:
            return rv
        raw = describe()
        nice = _NUMBER.sub(lambda m: fmt_default(float(m.group())), raw)
        return rv[0], rv[1].replace(raw, nice)


class PinitCommand(TyperCommand):
    """A command whose help reads like other CLIs': ``Usage: pinit diff [OPTIONS] A B``,
    ``--max-abs FLOAT  ... [default: 1e6; x>=0]``.  Typer builds its own parameter objects;
    they are given the subclasses above, which change only how they are shown."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for p in self.params:
            if type(p) is TyperArgument:
                p.__class__ = _Argument
            elif type(p) is TyperOption:
                p.__class__ = _Option


app = typer.Typer(
    cls=PinitGroup,
    name="pinit",
    help="Inspect, check and re-initialize PyTorch checkpoints (.pt/.pth/.bin/.ckpt, .safetensors, sharded folders).",
    no_args_is_help=True,  # bare `pinit`: the help, exit 0 (PinitGroup)
    add_completion=True,  # --install-completion / --show-completion (Typer's own)
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


app.command("inspect", cls=PinitCommand)(inspect_cmd.inspect)
app.command("reinit", cls=PinitCommand)(reinit_cmd.reinit)
app.command("check", cls=PinitCommand)(check_cmd.check)
app.command("diff", cls=PinitCommand)(diff_cmd.diff)
app.command("schemes", cls=PinitCommand)(schemes_cmd.schemes)
app.command("report", cls=PinitCommand)(report_cmd.report)
app.command("init", cls=PinitCommand)(init_cmd.init)


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
    from pinit.cli.common import room_for_open_files

    room_for_open_files()
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
