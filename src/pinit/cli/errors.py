"""How the CLI ends: one ``error:`` line on stderr and exit code 2 for anything a user
can cause, a traceback only with ``--debug`` (or ``PINIT_DEBUG=1``)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

import typer
import typer.core

EXIT_OK = 0
EXIT_USAGE = 2


ERROR_LINE_LIMIT = 2000
"""Most characters of one ``error:`` or ``warning:`` line, whatever the file held."""


def _one_line(prefix: str, message: object) -> str:
    """``prefix`` and ``message`` as one bounded line: control and format characters escaped
    (a newline in a tensor name shows as ``\\n``), long names shortened (see ``safe_line``)."""
    from pinit.cli.output import safe_line

    return prefix + safe_line(str(message).strip(), ERROR_LINE_LIMIT - len(prefix))


def error_line(message: str) -> str:
    return _one_line("error: ", message)


def die(message: str) -> NoReturn:
    raise typer.Exit(_print_error(message))


def _print_error(message: str) -> int:
    print(error_line(message), file=sys.stderr)
    return EXIT_USAGE


def warn(message: str) -> None:
    print(_one_line("warning: ", message), file=sys.stderr)


def debug_requested(args: Sequence[str]) -> bool:
    return "--debug" in args or os.environ.get("PINIT_DEBUG", "") not in ("", "0")


def is_usage_error(e: Exception) -> bool:
    """Typer's usage errors (bad option, missing argument, bad value) are ``typer.TyperException``."""
    return isinstance(e, typer.TyperException)


class PinitGroup(typer.core.TyperGroup):
    """The top-level command group: turns every failure into one line and an exit code."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        from pinit.errors import PinitError

        argv = list(sys.argv[1:] if args is None else args)
        if not argv and not os.environ.get(complete_var or "_PINIT_COMPLETE"):
            argv = ["--help"]  # bare `pinit`: the help on stdout, exit 0 (not a usage error)
        code: int
        previous = _on_sigterm_raise()
        try:
            rv = super().main(argv, prog_name or "pinit", complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else EXIT_OK
        except typer.Exit as e:
            code = e.exit_code
            if isinstance(e.__cause__, KeyboardInterrupt):  # typer turns Ctrl-C into a silent exit 130
                _print_error("interrupted; a file being written was removed")
        except typer.Abort:
            code = _print_error("interrupted")
        except PinitError as e:
            if debug_requested(argv):
                traceback.print_exc()
            code = _print_error(str(e))
        except Terminated:
            _print_error("terminated (SIGTERM); a file being written was removed")
            code = EXIT_TERMINATED
        except KeyboardInterrupt:
            code = _print_error("interrupted")
        except BrokenPipeError:
            code = EXIT_OK
        except Exception as e:
            if debug_requested(argv):
                traceback.print_exc()
            if is_usage_error(e):  # bad option, missing argument, bad value
                ctx = getattr(e, "ctx", None)
                hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
                code = _print_error(e.format_message() + hint)  # type: ignore[attr-defined]
            else:
                code = _print_error(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)")
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        if standalone_mode:
            sys.exit(code)
        return code


EXIT_TERMINATED = 128 + 15  # what a shell reports for a process SIGTERM ended


class Terminated(BaseException):
    """SIGTERM (a CI job cancelled, ``kill``, a container stopped), raised in the main thread so
    that, as for Ctrl-C, every ``finally`` runs: the temporary file of a write is removed. Not a
    KeyboardInterrupt, which typer would turn into a silent exit 130."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


def _on_sigterm_raise() -> Any:
    """Make SIGTERM raise :class:`Terminated` while the command runs (main thread only, and only
    where nobody else set a handler); the previous handler, to restore, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)
