"""Small helpers the command modules share: opening a checkpoint under the load options."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pinit.cli.errors import warn

if TYPE_CHECKING:
    from pinit.checkpoint import Checkpoint, LoadOptions


def load_options(allow_global: list[str] | None, unsafe_pickle: bool) -> LoadOptions:
    from pinit.checkpoint import LoadOptions

    if unsafe_pickle:
        warn("--unsafe-pickle: torch pickles are loaded fully, which runs any code they hold")
    return LoadOptions(allow_globals=tuple(allow_global or ()), unsafe_pickle=unsafe_pickle)


def open_path(path: str, options: LoadOptions) -> Checkpoint:
    from pinit.checkpoint import open_checkpoint

    return open_checkpoint(path, options)
