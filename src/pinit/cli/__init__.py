"""The ``pinit`` command line (Typer).  Importing it does not import torch or numpy."""

from pinit.cli.app import app, entry_point, main

__all__ = ["app", "entry_point", "main"]
