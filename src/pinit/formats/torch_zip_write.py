"""Write a new torch zip (what ``torch.save(state_dict)`` writes) from tensors, streamed.

For conversions to ``.pt`` from sources that are not a torch zip already (safetensors, a DCP
folder): a flat ``{name: tensor}`` dict, or a nested state dict of plain data holding the
tensors (what ``dcp_to_torch_save`` writes), one storage record per tensor, without torch and
without holding more than one tensor in memory. The layout follows torch 2.13's writer:
``<prefix>/data.pkl`` (protocol 2; tensors as ``torch._utils._rebuild_tensor_v2`` of a legacy
typed storage, or ``_rebuild_tensor_v3`` of an untyped storage for dtypes without one, such as
float8 and uint16), ``.format_version``, ``.storage_alignment``, ``byteorder``, ``data/<key>``
records whose data start at a multiple of 64 bytes, ``version`` and ``.data/serialization_id``.
(A torch zip read by pinit is not rewritten here: ``output_io._patch_torch_zip`` patches its
records in place and keeps its pickle.)

Records are written in two passes over the tensors: unchanged ones in order, then the new
ones as they are produced (a zip's members need not lie in the pickle's order), each with its
CRC-32 computed as it is written.
"""

from __future__ import annotations

import io
import os
import secrets
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from pinit import dtypes
from pinit.errors import PinitError
from pinit.formats.torch_zip import PlaceholderPickler, _Marker, opaque_class

ALIGNMENT = 64  # torch's .storage_alignment
PREFIX = "archive"  # the record prefix torch.save gives a file object
_LOCAL_HEADER = 30
_ZIP64_EXTRA = 20  # what zipfile adds to a local header written as zip64
_PAD_ID = b"FB"  # the extra-field id torch pads local headers with

_REBUILD_V2 = opaque_class("torch._utils._rebuild_tensor_v2")
_REBUILD_V3 = opaque_class("torch._utils._rebuild_tensor_v3")
_UNTYPED = opaque_class("torch.storage.UntypedStorage")
_STORAGE_CLASS = {dt: opaque_class(f"torch.{cls}") for cls, dt in dtypes.STORAGE_CLASS_DTYPE.items()}


class _Storage:
    def __init__(self, key: str, dtype: str, numel: int) -> None:
        self.key, self.dtype, self.numel = key, dtype, numel


class _Tensor:
    """Pickled as torch pickles a contiguous CPU tensor."""

    def __init__(self, key: str, dtype: str, shape: tuple[int, ...]) -> None:
        numel = 1
        for n in shape:
            numel *= n
        self.dtype, self.shape, self.numel = dtype, shape, numel
        itemsize = dtypes.get(dtype).itemsize
        typed = dtype in _STORAGE_CLASS
        self.storage = _Storage(key, dtype, numel if typed else numel * itemsize)
        self.typed = typed

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        strides = []
        step = 1
        for n in reversed(self.shape):
            strides.append(step)
            step *= max(n, 1)
        args = (self.storage, 0, self.shape, tuple(reversed(strides)), False, OrderedDict())
        if self.typed:
            return (_REBUILD_V2, args)
        return (_REBUILD_V3, (*args, opaque_class(f"torch.{self.dtype}")))


# what torch.load(weights_only=True) admits without add_safe_globals, besides torch's own names
# (torch 2.13, torch/_weights_only_unpickler.py: _get_allowed_globals)
WEIGHTS_ONLY_PLAIN = frozenset(
    {
        "collections.OrderedDict",
        "collections.Counter",
        "_codecs.encode",
        "builtins.bytearray",
        "builtins.set",
        "builtins.complex",
    }
)


class _TorchPickler(PlaceholderPickler):
    """Pickles as torch.save does: storages as persistent ids, dtypes and qschemes read from a
    pickle (``torch_zip._Marker``) as the globals ``torch.<name>``; ``globals`` collects every
    global written."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.globals: set[str] = set()

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Storage):
            cls = _STORAGE_CLASS.get(obj.dtype, _UNTYPED)
            return ("storage", cls, obj.key, "cpu", obj.numel)
        return None

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if isinstance(obj, _Marker):
            if obj.name in ("dtype", "qscheme") and isinstance(obj.value, str):
                self.save_global(opaque_class(f"torch.{obj.value}"))
                return
            raise PinitError(f"a torch {obj.name} object cannot be written back")
        super().save(obj, save_persistent_id)

    def save_global(self, obj: Any, name: str | None = None) -> None:
        full = getattr(obj, "_pinit_global", None) if isinstance(obj, type) else None
        if full is None:
            full = f"{getattr(obj, '__module__', None) or '?'}.{name or getattr(obj, '__qualname__', '?')}"
        self.globals.add(full)
        super().save_global(obj, name)


def needs_unsafe_load(names: set[str]) -> list[str]:
    """The globals of ``names`` that ``torch.load(weights_only=True)`` refuses by default."""
    return sorted(n for n in names if not n.startswith("torch.") and n not in WEIGHTS_ONLY_PLAIN)


def tensor_standins(tensors: Sequence[tuple[str, str, tuple[int, ...]]]) -> dict[str, Any]:
    """One stand-in per tensor, ``{name: stand-in}`` in order, each pickled as torch pickles a
    contiguous CPU tensor; tensor ``i`` lives in storage record ``str(i)``. Put them anywhere in
    the object given to :func:`write_state_dict_zip` (a flat dict, or a nested state dict)."""
    for name, dtype, _ in tensors:
        if dtype not in dtypes.BY_NAME:
            raise PinitError(f"tensor '{name}' has dtype {dtype}, which pinit cannot write to a torch file")
    return {name: _Tensor(str(i), dtype, tuple(shape)) for i, (name, dtype, shape) in enumerate(tensors)}


def state_dict_pickle(obj: Any) -> tuple[bytes, set[str]]:
    """``data.pkl`` of ``obj`` (plain data holding the stand-ins of :func:`tensor_standins`) and
    the globals it names; a PinitError for an object that cannot be written back."""
    buf = io.BytesIO()
    pickler = _TorchPickler(buf, protocol=2)
    pickler.dump(obj)
    return buf.getvalue(), pickler.globals


def _aligned_info(name: str, size: int, offset: int) -> zipfile.ZipInfo:
    """A STORED member whose data will start at a multiple of ALIGNMENT when its local header
    is written at ``offset`` (the padding goes in an extra field, as torch's writer does)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = size
    zip64 = size * 1.05 > zipfile.ZIP64_LIMIT  # what ZipFile.open(mode="w") decides
    fixed = offset + _LOCAL_HEADER + len(name.encode("utf-8")) + (_ZIP64_EXTRA if zip64 else 0)
    pad = -(fixed + 4) % ALIGNMENT
    info.extra = _PAD_ID + struct.pack("<H", pad) + b"Z" * pad
    return info


def write_state_dict_zip(
    fd: int,
    tensors: Sequence[tuple[str, str, tuple[int, ...]]],
    chunks_of: Callable[[int], Iterable[np.ndarray]],
    pending: frozenset[str] = frozenset(),
    fill: Callable[[], Iterable[tuple[Sequence[str], np.ndarray]]] | None = None,
    progress: Callable[[int], None] | None = None,
    pickled: bytes | None = None,
) -> None:
    """Write a torch zip to ``fd`` (a new, empty file): its ``data.pkl`` is ``pickled`` (from
    :func:`state_dict_pickle` of an object holding the stand-ins of :func:`tensor_standins` of the
    same ``tensors``), by default the flat dict ``{name: tensor}``.

    ``tensors`` are (name, dtype, shape) in the dict's order; ``chunks_of(i)`` yields the bytes
    of tensor ``i`` in chunks, for every name not in ``pending``; the bytes of the ``pending``
    names come from ``fill()``, one tensor (and the names sharing it) at a time."""
    sizes = [_nbytes(dtype, shape) for _, dtype, shape in tensors]
    index = {name: i for i, (name, _, _) in enumerate(tensors)}
    with os.fdopen(os.dup(fd), "w+b") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:

        def member(name: str, data: bytes) -> None:
            zf.writestr(_aligned_info(f"{PREFIX}/{name}", len(data), f.tell()), data)

        def record(i: int, parts: Iterable[Any]) -> None:
            info = _aligned_info(f"{PREFIX}/data/{i}", sizes[i], f.tell())
            done = 0
            with zf.open(info, "w") as w:
                for part in parts:
                    mv = memoryview(part).cast("B")
                    w.write(mv)
                    done += len(mv)
                    if progress is not None:
                        progress(len(mv))
            if done != sizes[i]:
                raise PinitError(f"tensor '{tensors[i][0]}': {done} bytes written, not {sizes[i]}")

        member("data.pkl", pickled if pickled is not None else state_dict_pickle(tensor_standins(tensors))[0])
        member(".format_version", b"1")
        member(".storage_alignment", str(ALIGNMENT).encode())
        member("byteorder", b"little")
        for i, (name, _, _) in enumerate(tensors):
            if name not in pending:
                record(i, chunks_of(i))
        written: set[str] = set()
        if pending:
            if fill is None:
                raise PinitError("new values expected but none given")
            for names, data in fill():
                for name in names:
                    record(index[name], [data])
                    written.add(name)
                del data  # one new tensor in memory at a time
        if written != pending:
            raise PinitError(f"no new bytes for {', '.join(sorted(pending - written))}")
        member("version", b"3")
        member(".data/serialization_id", str(secrets.randbits(64)).zfill(20).encode())
        f.flush()


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    n = dtypes.get(dtype).itemsize
    for d in shape:
        n *= d
    return n
