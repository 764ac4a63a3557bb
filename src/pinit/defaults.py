"""The ``default`` scheme: PyTorch's own initialization for the layer a tensor belongs to.

Inferred from the tensor's name, shape and siblings (the other tensors of the
same module prefix), following ``reset_parameters`` of the torch.nn layers:

- ``*.running_mean`` zeros, ``*.running_var`` ones (BatchNorm buffers);
- a 1-D ``*.weight`` ones, and its ``*.bias`` zeros (BatchNorm, LayerNorm, GroupNorm);
- a ``*.bias`` whose sibling ``weight`` is ≥ 2-D: ``uniform(±1/√fan_in)`` (Linear, Conv);
- a 2-D ``*.weight`` of an embedding (name with embed/wte/wpe): ``normal(0, 1)``;
- any other ≥ 2-D tensor: ``kaiming_uniform(a=√5)`` (Linear, Conv).

Anything else has no default and is an error asking for a scheme.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from pinit.storage import TensorEntry

_EMBEDDING = re.compile(r"(embed|(^|[._])wte($|[._])|(^|[._])wpe($|[._]))", re.IGNORECASE)


def fan_in(shape: tuple[int, ...]) -> int:
    """fan_in as torch.nn.init._calculate_fan_in_and_fan_out computes it (ndim >= 2)."""
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive


def infer(entry: TensorEntry, by_name: Mapping[str, TensorEntry]) -> tuple[str, dict[str, Any]] | str:
    """``(scheme, torch kwargs)`` for ``entry``, or a reason string when there is no default."""
    name = entry.name
    prefix, _, leaf = name.rpartition(".")
    ndim = len(entry.shape)
    if leaf == "running_mean":
        return "zeros", {}
    if leaf == "running_var":
        return "ones", {}
    if leaf == "bias" and ndim == 1:
        weight = by_name.get(f"{prefix}.weight" if prefix else "weight")
        if weight is not None and len(weight.shape) >= 2:
            fi = fan_in(weight.shape)
            bound = 1.0 / math.sqrt(fi) if fi > 0 else 0.0
            return "uniform", {"a": -bound, "b": bound}
        return "zeros", {}
    if leaf == "weight" and ndim == 1:
        return "ones", {}
    if ndim == 2 and _EMBEDDING.search(prefix or name):
        return "normal", {"mean": 0.0, "std": 1.0}
    if ndim >= 2:
        return "kaiming_uniform", {"a": math.sqrt(5), "mode": "fan_in", "nonlinearity": "leaky_relu"}
    return f"no default for a {ndim}-D tensor named '{name}'; choose a scheme"
