"""Which pickle globals pinit admits: torch's plain-data set plus a small allowlist.

``weights_only=True`` refuses some harmless standard-library types that real
training checkpoints hold (Lightning stores an ``argparse.Namespace`` or a
``pathlib.PosixPath`` among its hyper-parameters).  These are admitted through
torch's own ``safe_globals`` mechanism; ``--allow-global module.Name`` adds more.
"""

from __future__ import annotations

from pinit.errors import PinitError, runs_code

# Data-only types that weights_only refuses but training checkpoints hold.
DEFAULT_ALLOWED_GLOBALS: tuple[str, ...] = (
    "argparse.Namespace",
    "pathlib.Path",
    "pathlib.PosixPath",
    "pathlib.WindowsPath",
    "pathlib.PurePath",
    "pathlib.PurePosixPath",
    "pathlib.PureWindowsPath",
    "builtins.frozenset",
    "builtins.slice",
    "builtins.range",
    "datetime.datetime",
    "datetime.date",
    "datetime.time",
    "datetime.timedelta",
    "datetime.timezone",
    "decimal.Decimal",
    "fractions.Fraction",
    "uuid.UUID",
    "enum.Enum",
)


def parse_global(spec: str) -> str:
    """Validate a ``module.Name`` given to --allow-global."""
    parts = spec.strip().split(".")
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        raise PinitError(f"--allow-global expects module.Name, got '{spec}'")
    from pinit.formats.torch_zip import canonical_global

    if runs_code(canonical_global(spec.strip())):
        raise PinitError(
            f"--allow-global {spec.strip()}: this global runs code, so it is never admitted as data "
            "(a file that needs it runs that code when torch loads it)"
        )
    return spec.strip()
