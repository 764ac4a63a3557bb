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
from pinit.formats.torch_zip import (
    PLACEHOLDER_PICKLE,
    NeedsTorch,
    canonical_global,
    opaque_class,
    prescan_legacy,
    py2_global,
)
from pinit.storage import MemoryStorage, TensorEntry

_GLOBAL_RE = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL|global) ([\w.]+)")


def torch_load(path: str, allowed: frozenset[str], unsafe: bool, mmap: bool) -> Any:
    """``torch.load`` under pinit's safety rules; every failure becomes a PinitError."""
    import pickle

    import torch

    if not unsafe:
        with open(path, "rb") as f:
            legacy = not f.read(4).startswith(b"PK\x03\x04")
        if legacy:
            try:
                prescan_legacy(path, allowed)
            except NeedsTorch:  # quantized storages and the like: torch's loader decides
                pass
            except PinitError as e:
                e.path = e.path or path
                raise
    kwargs: dict[str, Any] = {"map_location": "cpu", "weights_only": not unsafe}
    if mmap:
        kwargs["mmap"] = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if unsafe:
                return torch.load(path, **kwargs)
            with torch.serialization.safe_globals(safe_globals(allowed)):
                return torch.load(path, **kwargs)
    except pickle.UnpicklingError as e:
        text = str(e)
        m = _GLOBAL_RE.search(text)
        if m and "Weights only load failed" in text:
            name = m.group(1)  # torch names builtins without their module ("exec"), others as written
            name = canonical_global(name if "." in name else f"builtins.{name}")
            if name in allowed:  # torch refuses os, posix, nt and sys whatever the allowlist says
                raise PinitError(
                    f"torch refuses to unpickle global '{name}' even when allowed (its module is blocked); "
                    "only --unsafe-pickle loads this file (this runs code from the file)",
                    path,
                ) from None
            raise UnsafeGlobalError(name, path) from None
        # torch's first line is boilerplate ("Weights only load failed. In PyTorch 2.6, ..."); the reason follows
        why = re.search(r"WeightsUnpickler error:\s*(\S.*)", text)
        first = why.group(1) if why else text.strip().splitlines()[0] if text.strip() else type(e).__name__
        raise PinitError(f"cannot unpickle: {first}", path) from None
    except PinitError as e:
        if e.path is None:
            e.path = path
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PinitError(f"torch could not load it ({type(e).__name__}: {first})", path) from None


def safe_globals(allowed: frozenset[str]) -> list[Any]:
    """What torch's ``safe_globals`` gets: an inert placeholder for every admitted name, the
    default allowlist's included, so torch never calls a global from the file. A real
    ``Fraction("1e1000000000")`` or ``Decimal`` would be evaluated into a billion-digit number
    (hours); a placeholder records its arguments, and torch would call ``builtins.exec`` as
    readily as a class for a name the user vouched for."""
    out: list[Any] = []
    for g in sorted({canonical_global(g) for g in allowed}):
        placeholder = opaque_class(g)
        # torch looks names up as the file spells them: register the Python 2 spelling too
        out += [(placeholder, name) for name in sorted({g, py2_global(g)})]
    return out


def pickle_module_for(allowed: frozenset[str], unsafe: bool) -> Any:
    """The pickle module for torch.save of a tree that :func:`torch_load` built: placeholders
    are written back as the globals they stand for, built the same way."""
    import pickle

    return pickle if unsafe else PLACEHOLDER_PICKLE


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
