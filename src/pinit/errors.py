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


class UnsafeGlobalError(PinitError):
    """A pickle names a global that is not plain data."""

    def __init__(self, global_name: str, path: str | None = None) -> None:
        self.global_name = global_name
        super().__init__(
            f"refused to unpickle global '{global_name}' (not known to be plain data); "
            f"if you trust this file, allow it with --allow-global {global_name}, "
            "or load the file fully with --unsafe-pickle (this runs code from the file)",
            path,
        )
