"""Checkpoints that need torch itself to read: legacy pickles, tensor kinds the
zip reader does not model, and ``--unsafe-pickle``.

Always ``weights_only=True`` with pinit's allowlist through torch's own
``safe_globals``, except under ``--unsafe-pickle`` where the caller asked for a
full load.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np

from pinit import dtypes
from pinit.errors import PinitError, UnsafeGlobalError
from pinit.flatten import flatten
from pinit.formats.pickle_safety import resolve_globals
from pinit.storage import MemoryStorage, TensorEntry

_GLOBAL_RE = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL|global) ([\w.]+)")


def torch_load(path: str, allowed: frozenset[str], unsafe: bool, mmap: bool) -> Any:
    """``torch.load`` under pinit's safety rules; every failure becomes a PinitError."""
    import pickle

    import torch

    kwargs: dict[str, Any] = {"map_location": "cpu", "weights_only": not unsafe}
    if mmap:
        kwargs["mmap"] = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if unsafe:
                return torch.load(path, **kwargs)
            with torch.serialization.safe_globals(resolve_globals(sorted(allowed))):
                return torch.load(path, **kwargs)
    except pickle.UnpicklingError as e:
        text = str(e)
        m = _GLOBAL_RE.search(text)
        if m and "Weights only load failed" in text:
            name = m.group(1)  # torch names builtins without their module ("exec")
            raise UnsafeGlobalError(name if "." in name else f"builtins.{name}") from None
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        raise PinitError(f"cannot unpickle: {first}") from None
    except PinitError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PinitError(f"torch could not load it ({type(e).__name__}: {first})") from None


def is_torch_tensor(x: Any) -> bool:
    import torch

    return isinstance(x, torch.Tensor)


def to_entries(obj: Any) -> list[TensorEntry]:
    """Entries for the tensors of an object tree that torch has loaded."""
    import torch

    out = []
    storages: dict[int, MemoryStorage] = {}
    for i, leaf in enumerate(flatten(obj, is_torch_tensor)):
        t: torch.Tensor = leaf.value
        if t.layout != torch.strided or t.is_quantized or t.device.type != "cpu":
            raise PinitError(f"tensor '{leaf.name}' is a {t.layout} / quantized / {t.device} tensor, not supported")
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in dtypes.BY_NAME:
            raise PinitError(f"tensor '{leaf.name}' has unsupported dtype {dtype}")
        us = t.untyped_storage()
        key = us.data_ptr() if us.nbytes() else id(us)
        storage = storages.get(key)
        if storage is None:
            raw = torch.empty(0, dtype=torch.uint8).set_(us).numpy() if us.nbytes() else np.empty(0, np.uint8)
            raw.flags.writeable = False
            storage = storages[key] = MemoryStorage(raw, key=("mem", key))
        if isinstance(t, torch.nn.Parameter):
            requires_grad: bool | None = t.requires_grad
        else:
            requires_grad = True if t.requires_grad else None
        entry = TensorEntry(
            name=leaf.name,
            dtype=dtype,
            shape=tuple(t.shape),
            storage=storage,
            offset=t.storage_offset(),
            strides=tuple(t.stride()),
            requires_grad=requires_grad,
            index=i,
        )
        entry.validate()
        out.append(entry)
    return out
