"""Options shared by several commands, defined once."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any

import typer

Match = Annotated[
    list[str] | None,
    typer.Option(
        "--match",
        "-m",
        metavar="RE",
        help="Select tensors whose name matches this regular expression (re.search); repeatable, a union.",
    ),
]
Exclude = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude", "-x", metavar="RE", help="Drop tensors whose name matches this regular expression; repeatable."
    ),
]
Flagged = Annotated[bool, typer.Option("--flagged", help="Only tensors with at least one error flag.")]
MaxAbs = Annotated[
    float,
    typer.Option("--max-abs", metavar="FLOAT", help="Finite values with |x| above this are flagged 'huge'.", min=0.0),
]
UnsafePickle = Annotated[
    bool,
    typer.Option(
        "--unsafe-pickle",
        help="Load torch pickles fully, running any code they hold. Only for files you trust.",
    ),
]
AllowGlobal = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-global",
        metavar="MODULE.NAME",
        help="Admit one more pickle global (e.g. omegaconf.DictConfig) as plain data; repeatable.",
    ),
]
Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="No progress bar and no ordinary warnings; warnings about lost or unread content stay.",
    ),
]
NoWarnings = Annotated[
    bool,
    typer.Option("--no-warnings", help="No warnings at all, not even about lost or unread content."),
]
Debug = Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")]
Timeout = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        help="Timeout of each request for a remote checkpoint (hf://, https://, s3://, gs://); "
        "transient failures are retried 3 times.",
        show_default="60",
    ),
]
Cache = Annotated[
    str | None,
    typer.Option(
        "--cache",
        metavar="DIR",
        help="Keep the byte ranges read from remote checkpoints in DIR and reuse them while the file is "
        "unchanged (same size and ETag/Last-Modified). Without it nothing is kept.",
    ),
]
Model = Annotated[
    str | None,
    typer.Option(
        "--model",
        metavar="MODULE:CALLABLE",
        help="A live model: imports MODULE (or runs path/to/file.py) and calls CALLABLE, which must return "
        "a torch.nn.Module. This RUNS THAT CODE: name only code you trust.",
    ),
]
ModelArg = Annotated[
    list[str] | None,
    typer.Option(
        "--arg",
        metavar="KEY=VALUE",
        help="Keyword argument of the --model callable; VALUE is a Python literal (else a string); repeatable.",
    ),
]


class InspectFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


class SortKey(str, Enum):
    order = "order"
    name = "name"
    size = "size"


class JsonOrTable(str, Enum):
    table = "table"
    json = "json"


Seed = Annotated[
    int | None,
    typer.Option(
        "--seed",
        metavar="N",
        help="Seed of the per-tensor generators (drawn, printed and recorded when omitted and a "
        "selected scheme is random).",
        min=0,
    ),
]


def warning_filter(quiet: bool, no_warnings: bool) -> Callable[[bool], bool]:
    """Whether a warning is shown, given whether it is about lost content (dropped non-tensor
    content, ties becoming copies, what was not read, other hard links keeping the old data):
    ``--quiet`` hides only the others, ``--no-warnings`` hides every one."""

    def shown(lost_content: bool) -> bool:
        return not no_warnings and (lost_content or not quiet)

    return shown


Plan = Annotated[
    str | None,
    typer.Option("--plan", metavar="FILE", help="TOML file of [[rule]] tables (match, scheme, options)."),
]

# The options of the schemes (reinit and init), one to one onto torch.nn.init's arguments.
_SCHEME_PANEL = "Scheme options (mapped onto torch.nn.init arguments)"
SchemeA = Annotated[
    float | None,
    typer.Option(
        "--a",
        metavar="FLOAT",
        help="uniform/trunc_normal lower bound; kaiming slope.",
        rich_help_panel=_SCHEME_PANEL,
    ),
]
SchemeB = Annotated[
    float | None,
    typer.Option("--b", metavar="FLOAT", help="uniform/trunc_normal upper bound.", rich_help_panel=_SCHEME_PANEL),
]
SchemeMean = Annotated[
    float | None,
    typer.Option("--mean", metavar="FLOAT", help="normal/trunc_normal mean.", rich_help_panel=_SCHEME_PANEL),
]
SchemeStd = Annotated[
    float | None,
    typer.Option(
        "--std",
        metavar="FLOAT",
        help="normal/trunc_normal/sparse standard deviation.",
        rich_help_panel=_SCHEME_PANEL,
    ),
]
SchemeValue = Annotated[
    float | None, typer.Option("--value", metavar="FLOAT", help="constant value.", rich_help_panel=_SCHEME_PANEL)
]
SchemeGain = Annotated[
    str | None,
    typer.Option(
        "--gain",
        metavar="FLOAT|NAME",
        help="A number, or a nonlinearity name meaning calculate_gain(name).",
        rich_help_panel=_SCHEME_PANEL,
    ),
]
SchemeMode = Annotated[
    str | None,
    typer.Option("--mode", metavar="fan_in|fan_out", help="kaiming: fan_in or fan_out.", rich_help_panel=_SCHEME_PANEL),
]
SchemeNonlinearity = Annotated[
    str | None,
    typer.Option(
        "--nonlinearity", metavar="NAME", help="kaiming: relu, leaky_relu, tanh, ...", rich_help_panel=_SCHEME_PANEL
    ),
]
SchemeSparsity = Annotated[
    float | None,
    typer.Option(
        "--sparsity", metavar="FLOAT", help="sparse: fraction of zeros per column.", rich_help_panel=_SCHEME_PANEL
    ),
]
SchemeGroups = Annotated[
    int | None,
    typer.Option("--groups", metavar="N", help="dirac: number of groups.", rich_help_panel=_SCHEME_PANEL),
]


def scheme_options(
    a: float | None,
    b: float | None,
    mean: float | None,
    std: float | None,
    value: float | None,
    gain: str | None,
    mode: str | None,
    nonlinearity: str | None,
    sparsity: float | None,
    groups: int | None,
) -> dict[str, Any]:
    """The scheme options given on the command line (None: not given)."""
    given = {
        "a": a, "b": b, "mean": mean, "std": std, "value": value, "gain": gain, "mode": mode,
        "nonlinearity": nonlinearity, "sparsity": sparsity, "groups": groups,
    }  # fmt: skip
    return {k: v for k, v in given.items() if v is not None}
