"""pinit: inspect, check and re-initialize PyTorch checkpoints.

The library core; the command line lives in :mod:`pinit.cli`.  Importing
``pinit`` does not import torch.

    from pinit import open_checkpoint, inspect_checkpoint
    with open_checkpoint("model.safetensors") as ckpt:
        report = inspect_checkpoint(ckpt)
    print(report.as_json()["summary"])
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "LoadOptions",
    "PinitError",
    "Selector",
    "__version__",
    "derive_seed",
    "diff_checkpoints",
    "inspect_checkpoint",
    "open_checkpoint",
    "reinit",
    "run_check",
]

_LAZY = {
    "LoadOptions": "pinit.checkpoint",
    "open_checkpoint": "pinit.checkpoint",
    "inspect_checkpoint": "pinit.inspect",
    "Selector": "pinit.selection",
    "PinitError": "pinit.errors",
    "reinit": "pinit.reinitialize",
    "derive_seed": "pinit.reinitialize",
    "run_check": "pinit.check",
    "diff_checkpoints": "pinit.diff",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pinit' has no attribute '{name}'")
    import importlib

    return getattr(importlib.import_module(module), name)
