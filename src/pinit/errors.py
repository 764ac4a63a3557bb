"""Exceptions raised by the pinit core.

Every error a user can cause is a :class:`PinitError`; the CLI turns it into one
``error:`` line and exit code 2.  Anything else is a bug and shows a traceback
only with ``--debug``.
"""

from __future__ import annotations


class PinitError(Exception):
    """An error caused by the input or the options, explained in one line."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        if self.path:
            return f"{self.path}: {self.message}"
        return self.message


# Globals that run code or reach the operating system when called: a pickle naming one is
# an attack or an unsafe file. They are named as code execution and --allow-global is never
# suggested for them (given anyway, pinit still only builds an inert placeholder).
CODE_EXECUTION_MODULES = frozenset(
    {
        "os", "posix", "nt", "subprocess", "commands", "sys", "runpy", "importlib", "ctypes",
        "shutil", "socket", "pty", "code", "codeop", "webbrowser", "multiprocessing", "asyncio",
        "signal", "platform", "timeit", "pdb", "bdb", "marshal", "pickle", "_pickle", "dill",
        "cloudpickle", "types", "operator", "_thread", "urllib", "http", "ftplib", "smtplib",
        "telnetlib", "io", "_io", "copyreg",
        "zipimport", "pkgutil", "site",
    }
)  # fmt: skip
CODE_EXECUTION_BUILTINS = frozenset(
    {
        "eval", "exec", "compile", "__import__", "open", "getattr", "setattr", "delattr",
        "globals", "locals", "vars", "breakpoint", "input", "exit", "quit", "help",
    }
)  # fmt: skip
MAX_GLOBALS_SHOWN = 12


def runs_code(global_name: str) -> bool:
    """True for a global known to run code or reach the OS (``posix.system``, ``builtins.eval``,
    ``subprocess.Popen``, ``torch.load``...): never plain data, whatever the user allows."""
    module, _, name = global_name.rpartition(".")
    top = module.split(".")[0]
    if module == "builtins":
        return name in CODE_EXECUTION_BUILTINS
    if top in CODE_EXECUTION_MODULES:
        return True
    if global_name.startswith("torch.jit._pickle."):  # TorchScript's list and type-tag builders: data
        return False
    # entry points that load other pickles, or compile or run code
    return global_name in ("numpy.load", "numpy.lib.npyio.load", "torch.load") or global_name.startswith(
        ("torch.serialization.load", "torch.jit.", "torch.hub.", "torch._dynamo.", "torch.compile", "torch.ops.")
    )


def _listing(names: list[str]) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:MAX_GLOBALS_SHOWN])
    more = len(names) - MAX_GLOBALS_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


class UnsafeGlobalError(PinitError):
    """A pickle names globals that are not plain data: all of them, found in one pass.

    ``globals`` holds every refused name in the order the pickle names them;
    ``code_execution`` the subset known to run code (never offered to --allow-global).
    """

    def __init__(self, global_names: str | list[str], path: str | None = None) -> None:
        names = [global_names] if isinstance(global_names, str) else list(dict.fromkeys(global_names))
        self.globals = names
        self.global_name = names[0]  # the first, for callers that name one
        self.code_execution = [g for g in names if runs_code(g)]
        data_like = [g for g in names if g not in self.code_execution]
        if self.code_execution:
            message = (
                f"refused to unpickle: the file calls {_listing(self.code_execution)}, which "
                f"{'runs' if len(self.code_execution) == 1 else 'run'} code (code execution: a malicious "
                "or unsafe file; do not load it; --unsafe-pickle would run that code)"
            )
            if data_like:
                message += f"; it also needs {len(data_like)} other global(s): {_listing(data_like)}"
        elif len(names) == 1:
            g = names[0]
            message = (
                f"refused to unpickle global '{g}' (not known to be plain data); "
                f"if you trust this file, allow it with --allow-global {g}, "
                "or load the file fully with --unsafe-pickle (this runs code from the file)"
            )
        else:
            flags = " ".join(f"--allow-global {g}" for g in names[:MAX_GLOBALS_SHOWN])
            message = (
                f"refused to unpickle {len(names)} globals not known to be plain data: {_listing(names)}; "
                f"if you trust this file, allow them with {flags}"
                + (" (and the rest)" if len(names) > MAX_GLOBALS_SHOWN else "")
                + ", or load the file fully with --unsafe-pickle (this runs code from the file)"
            )
        super().__init__(message, path)
