"""torch zip checkpoints (``torch.save``'s default format) read without torch.

The zip holds ``<prefix>/data.pkl`` (the object tree, pickled, with tensors as
persistent references to storages) and one uncompressed member per storage,
``<prefix>/data/<key>``.  :class:`RestrictedUnpickler` admits only the globals
that torch's ``weights_only`` unpickler admits, plus the allowlist; it never
calls anything from the file.  Tensors become :class:`TensorRef` placeholders
whose bytes are read straight from the zip member's position in the file.

Tensor kinds this reader does not model (quantized, sparse, nested, wrapper
subclasses) raise :class:`NeedsTorch`, and the caller loads the file with
``torch.load(weights_only=True)`` instead.

A whole pickled model (``torch.save(model)``) names its module classes
(``__main__.Net``, ``torch.nn.modules.conv.Conv2d``...).  They are never imported: each
unknown global of a pickle gets its own inert :class:`ModulePlaceholder` class, and once the
pickle is read, a global used only through NEWOBJ (or ``copyreg._reconstructor(cls, object,
None)``) and BUILD, never called and never stored as a value, whose every object's BUILD
state is a ``dict`` holding ``_parameters``, ``_buffers`` and ``_modules`` dicts, is a module
class; its objects are walked as ``state_dict()`` walks them.  Every other unknown global is
refused, all of them named in one :class:`UnsafeGlobalError`.  TorchScript archives
(``torch.jit.save``) are read by :mod:`pinit.formats.torchscript` on the same machinery.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import copyreg
import functools
import io
import pickle
import types
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pinit import dtypes
from pinit.errors import PinitError, UnsafeGlobalError, runs_code
from pinit.files import FileRef, file_storage, reopen, size_of
from pinit.formats import zip_layout
from pinit.storage import Storage, StreamStorage, TensorEntry

MAX_PICKLE_BYTES = 256 << 20
# Objects one pickle may create (lists, dicts, strings, tuples...) and tensors it may hold:
# a few bytes of pickle can create an object of 50-100 bytes, so without a count a 256 MiB
# pickle could ask for many gigabytes. Real checkpoints stay far below both (a state dict
# holds about ten objects per tensor).
MAX_PICKLE_OBJECTS = 8_000_000
# Opcodes one pickle may run: 200 MB of "push None, pop" create nothing but take 40 s to run.
# A state dict takes about 20 opcodes a tensor (500,000 tensors: 10 million).
MAX_PICKLE_OPS = 15_000_000
MAX_TENSORS = 500_000


class NeedsTorch(Exception):
    """The file holds something only torch itself can rebuild (still weights_only)."""


@dataclass(eq=False)  # hashed by identity, as torch storages are
class StorageRef:
    key: str
    dtype: str | None  # None for an untyped storage (the tensor gives the dtype)
    numel: int  # elements for typed storages, bytes for untyped


@dataclass(eq=False)  # hashed by identity, as torch tensors are (a tensor may be a dict key)
class TensorRef:
    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: str
    requires_grad: bool | None
    is_parameter: bool = False


class _Marker:
    """A torch global (a dtype, a storage class, ``torch.device``...) as the unpickler sees it.

    Shared by every file read in this process, so it is immutable: nothing a pickle does
    (BUILD, SETITEM, attribute sets) can change how the next file is read.
    """

    __slots__ = ("name", "value")
    name: str
    value: Any

    def __init__(self, name: str, value: Any = None) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "value", value)

    def __setattr__(self, key: str, value: Any) -> None:
        raise PinitError(f"the pickle tries to change torch's {self.name} object (refused)")

    def __delattr__(self, key: str) -> None:
        raise PinitError(f"the pickle tries to change torch's {self.name} object (refused)")

    def __repr__(self) -> str:
        return f"<{self.name}>"


class Opaque:
    """Stands in for an allowed non-torch object; records its arguments, runs nothing."""

    _pinit_global = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:
        obj = object.__new__(cls)
        obj.__dict__["_args"] = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_args"] = args
        self.__dict__["_called"] = True  # built by a call (REDUCE), not by cls.__new__ (NEWOBJ)

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("_items", {})[key] = value

    def append(self, value: Any) -> None:
        self.__dict__.setdefault("_list", []).append(value)

    def extend(self, values: Any) -> None:
        self.__dict__.setdefault("_list", []).extend(values)

    def __repr__(self) -> str:
        return f"<{self._pinit_global}>"

    def __reduce_ex__(self, protocol: Any) -> Any:
        """Pickled back (by PlaceholderPickler) as the global it stands for, built the same way."""
        d = self.__dict__
        cls = type(self)
        func, args = (cls, d["_args"]) if d.get("_called") else (copyreg.__newobj__, (cls, *d["_args"]))
        items = d.get("_items")
        listed = iter(d["_list"]) if "_list" in d else None
        return (func, args, d.get("_state"), listed, iter(items.items()) if items else None)


def opaque_class(full: str) -> type:
    """An inert placeholder class standing for the global ``full`` (``module.Name``)."""
    return type(full.rpartition(".")[2], (Opaque,), {"_pinit_global": full})


class TorchSize(tuple):  # type: ignore[type-arg]
    """A ``torch.Size`` read from a pickle: a tuple (as everything else sees it) that is pickled
    again as ``torch.Size``, so a value written back keeps its type."""

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (opaque_class("torch.Size"), (tuple(self),))


class ModulePlaceholder(Opaque):
    """Stands in for a class that may be an ``nn.Module`` (or a TorchScript class) of a whole
    pickled model: built by NEWOBJ and BUILD like any placeholder, nothing of the class is run.

    Each unpickler makes its own subclasses, so nothing survives the file. Once the whole
    pickle is read, the unpickler decides which of them are module classes (see
    :meth:`RestrictedUnpickler._settle_modules`) and gives each of their objects its
    ``state_dict`` layout, ``_pinit_module``: ``(name, value)`` pairs in ``state_dict`` order
    (parameters, buffers, then child modules), and ``_pinit_extra``: the module's other
    attributes (non-tensor content, kept on write-back).
    """

    def module_items(self) -> list[tuple[str, Any]] | None:
        """The parameters, buffers and child modules in ``state_dict`` order (None: not a module)."""
        items = self.__dict__.get("_pinit_module")
        return items if isinstance(items, list) else None

    def module_extra(self) -> list[tuple[str, Any]]:
        """The module's attributes that are not in its ``state_dict`` (hooks, hyper-parameters...)."""
        extra = self.__dict__.get("_pinit_extra")
        return extra if isinstance(extra, list) else []


def module_class(full: str) -> type:
    return type(full.rpartition(".")[2], (ModulePlaceholder,), {"_pinit_global": full})


def is_module_class(x: Any) -> bool:
    return isinstance(x, type) and issubclass(x, ModulePlaceholder)


_MODULE_DICTS = ("_parameters", "_buffers", "_modules")
INERT_FUNCTION_PREFIX = "torch.nn.functional."  # functions a whole pickled model may hold as values


def nn_module_layout(state: Any) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]] | None:
    """The ``state_dict`` layout of an ``nn.Module``'s pickled ``__dict__`` (None when ``state``
    is not one): its non-None parameters, its non-None persistent buffers, its child modules,
    each keyed by attribute name, and its other attributes."""
    if type(state) is not dict or not all(isinstance(k, str) for k in state):
        return None
    parts = [state.get(k) for k in _MODULE_DICTS]
    if not all(type(p) in (dict, OrderedDict) and all(isinstance(k, str) for k in p) for p in parts):
        return None
    params, buffers, children = parts
    non_persistent = state.get("_non_persistent_buffers_set", set())
    if not isinstance(non_persistent, (set, frozenset)):
        return None
    items = [(k, v) for k, v in params.items() if v is not None]
    items += [(k, v) for k, v in buffers.items() if v is not None and k not in non_persistent]
    items += [(k, v) for k, v in children.items() if v is not None]
    # non-persistent buffers are state the model rebuilds (not in state_dict): neither listed nor counted
    extra = [(k, v) for k, v in state.items() if k not in _MODULE_DICTS]
    return items, extra


class PlaceholderPickler(pickle._Pickler):  # type: ignore[name-defined,misc]
    """A pickler that writes each placeholder class back as the global it stands for.

    By name only: the global is neither imported nor called, so a tree that holds
    placeholders for --allow-global names can be saved again by torch.save.
    """

    def save_global(self, obj: Any, name: str | None = None) -> None:
        full = getattr(obj, "_pinit_global", None) if isinstance(obj, type) else None
        if full is None or not issubclass(obj, Opaque):
            super().save_global(obj, name)
            return
        module, _, qualname = full.rpartition(".")
        self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
        self.memoize(obj)


# what torch.save(pickle_module=...) needs
PLACEHOLDER_PICKLE = types.SimpleNamespace(
    __name__="pinit.placeholder_pickle", Pickler=PlaceholderPickler, dump=pickle.dump, HIGHEST_PROTOCOL=2
)


MAX_INT64 = (1 << 63) - 1  # torch sizes, strides and offsets are int64


def _is_int64(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and -MAX_INT64 - 1 <= x <= MAX_INT64


def _int_tuple(v: Any, what: str) -> tuple[int, ...]:
    if not isinstance(v, (tuple, list)) or not all(_is_int64(x) for x in v):
        raise PinitError(f"invalid tensor {what} {v!r:.200} in pickle")
    return tuple(v)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None = None) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise PinitError("tensor in pickle without a storage")
    if not _is_int64(offset):
        raise PinitError("invalid storage offset in pickle")
    dt = dtype or storage.dtype
    if dt is None:
        raise PinitError("untyped storage used without a dtype")
    shape = _int_tuple(size, "size")
    numel = 1
    for n in shape:  # a running product, as torch computes it: it must stay an int64
        numel *= n
        if abs(numel) > MAX_INT64:
            raise PinitError(f"invalid tensor size {list(shape)!r:.200} in pickle (too many elements)")
    return TensorRef(storage, offset, shape, _int_tuple(stride, "stride"), dt, None)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):  # type: ignore[no-untyped-def]
    t = _rebuild_tensor(storage, offset, size, stride)
    t.requires_grad = True if requires_grad is True else None
    return t


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):  # type: ignore[no-untyped-def]
    if not isinstance(dtype, _Marker) or dtype.name != "dtype":
        raise PinitError("invalid dtype in pickle")
    t = _rebuild_tensor(storage, offset, size, stride, dtype.value)
    t.requires_grad = True if requires_grad is True else None
    return t


def _rebuild_parameter(data, requires_grad, hooks=None, state=None):  # type: ignore[no-untyped-def]
    if not isinstance(data, TensorRef):
        raise PinitError("parameter in pickle without tensor data")
    data.requires_grad = bool(requires_grad)
    data.is_parameter = True
    return data


def _rebuild_from_type_v2(func, new_type, args, state):  # type: ignore[no-untyped-def]
    if not callable(func) or not isinstance(args, tuple):
        raise PinitError("invalid tensor rebuild in pickle")
    t = func(*args)
    if isinstance(new_type, _Marker) and new_type.name == "type" and new_type.value == "Parameter":
        if isinstance(t, TensorRef):
            t.is_parameter = True
            if t.requires_grad is None:
                t.requires_grad = False
    elif not (isinstance(new_type, _Marker) and new_type.name == "type"):
        raise NeedsTorch("tensor subclass")
    return t


def _bytearray(*args: Any) -> bytearray:
    # bytearray(n) allocates and zeroes n bytes: a few pickle bytes must not ask for gigabytes
    if args and isinstance(args[0], int):
        raise PinitError("bytearray of a given size in pickle (only bytearrays holding data are read)")
    return bytearray(*args)


def _needs_torch(*_args: Any, **_kw: Any) -> Any:
    raise NeedsTorch("tensor kind")


def _codecs_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise PinitError("unexpected _codecs.encode call in pickle")
    return codecs.encode(text, encoding)


_TORCH_DTYPE_NAMES = set(dtypes.BY_NAME) | {
    "float4_e2m1fn_x2",
    "float8_e8m0fnu",
    "qint8",
    "quint8",
    "qint32",
    "quint4x2",
    "quint2x4",
    "complex32",
    "cfloat",
    "cdouble",
    "half",
    "float",
    "double",
    "long",
    "int",
    "short",
    "bits8",
    "bits16",
    "uint1",
    "int1",
}

_REBUILDERS: dict[str, Any] = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
}
for _name in (
    "_rebuild_qtensor",
    "_rebuild_sparse_tensor",
    "_rebuild_nested_tensor",
    "_rebuild_wrapper_subclass",
    "_rebuild_meta_tensor_no_storage",
    "_rebuild_device_tensor_from_cpu_tensor",
    "_rebuild_device_tensor_from_numpy",
):
    _REBUILDERS[f"torch._utils.{_name}"] = _needs_torch

_PLAIN: dict[str, Any] = {
    "collections.OrderedDict": OrderedDict,
    "collections.Counter": Counter,
    "builtins.set": set,
    "builtins.bytearray": _bytearray,
    "builtins.complex": complex,
    "_codecs.encode": _codecs_encode,
    "torch.Size": TorchSize,
    "torch.device": _Marker("device"),
    "torch.serialization._get_layout": _Marker("layout"),
    "torch.nn.parameter.Parameter": _Marker("type", "Parameter"),
    "torch.Tensor": _Marker("type", "Tensor"),
    "torch.storage.UntypedStorage": _Marker("storage", None),
    "torch.storage.TypedStorage": _Marker("storage", None),
}
for _cls, _dt in dtypes.STORAGE_CLASS_DTYPE.items():
    _PLAIN[f"torch.{_cls}"] = _Marker("storage", _dt)
    _PLAIN[f"torch.cuda.{_cls}"] = _Marker("storage", _dt)
for _q in ("QInt32Storage", "QInt8Storage", "QUInt2x4Storage", "QUInt4x2Storage", "QUInt8Storage"):
    _PLAIN[f"torch.{_q}"] = _Marker("storage", "quantized")
for _dt in _TORCH_DTYPE_NAMES:
    _PLAIN[f"torch.{_dt}"] = _Marker("dtype", _dt)
for _qs in (
    "per_tensor_affine",
    "per_tensor_symmetric",
    "per_channel_affine",
    "per_channel_symmetric",
    "per_channel_affine_float_qparams",
):
    _PLAIN[f"torch.{_qs}"] = _Marker("qscheme", _qs)


_OBJECT = _Marker("object", "builtins.object")  # the base copyreg._reconstructor names


def _classes_stored_as_values(root: Any, classes: set[type]) -> set[str]:
    """The globals among ``classes`` that the object tree holds as values (a class stored in a
    dict, passed as an argument...), not only as the class of objects built from it."""
    found: set[str] = set()
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen or isinstance(node, (str, bytes, bytearray, int, float, complex, TensorRef)):
            continue
        seen.add(id(node))
        if isinstance(node, type):
            if node in classes:
                found.add(node._pinit_global)  # type: ignore[attr-defined]
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple, set, frozenset)):
            stack.extend(node)
        elif isinstance(node, Opaque):
            stack.extend(node.__dict__.values())
    return found


def _remap(full: str, names: dict[tuple[str, str], tuple[str, str]], modules: dict[str, str]) -> str:
    module, _, name = full.rpartition(".")
    if (module, name) in names:
        module, name = names[(module, name)]
    elif module in modules:
        module = modules[module]
    return f"{module}.{name}"


def canonical_global(full: str) -> str:
    """``module.Name`` as Python 3 names it: protocol-2 pickles write ``__builtin__.eval``, ``commands.run``."""
    return _remap(full, _compat_pickle.NAME_MAPPING, _compat_pickle.IMPORT_MAPPING)


def py2_global(full: str) -> str:
    """``module.Name`` as a protocol-2 pickle writes it (``subprocess.run`` -> ``commands.run``)."""
    return _remap(full, _compat_pickle.REVERSE_NAME_MAPPING, _compat_pickle.REVERSE_IMPORT_MAPPING)


# opcodes that create a new object (counted against MAX_PICKLE_OBJECTS)
_CREATING_OPCODES = (
    b"]", b"}", b"\x8f", b"l", b"d", b"t", b"\x85", b"\x86", b"\x87", b"\x90",  # containers
    b"X", b"\x8c", b"V", b"T", b"U", b"B", b"C", b"\x8e", b"\x96", b"S",  # strings and bytes
    b"F", b"G", b"\x8a", b"\x8b", b"L",  # floats and longs
    b"R", b"\x81", b"\x92", b"i", b"o", b"c", b"\x93",  # calls and globals
)  # fmt: skip


class RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined,misc]
    """An unpickler that builds only plain data and placeholders; it calls nothing foreign.

    Built on pickle's pure-Python unpickler, whose memo is a dict: the C unpickler sizes its
    memo array from the index a PUT names, so a 30-byte pickle (``LONG_BINPUT 2**31``) made
    it allocate and zero 16 GiB.

    Every global that is not admitted is recorded, and unpickling goes on with an inert
    placeholder, so that one refusal names all of them (:class:`UnsafeGlobalError`).
    Nothing a pickle does outlives it: BUILD is admitted only on the objects this pickle
    created (placeholders, ordered dicts, tensors), never on a class or a shared object.
    """

    dispatch: ClassVar[dict[int, Any]] = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(
        self,
        file: io.BufferedIOBase,
        allowed: frozenset[str],
        refused: list[str] | None = None,
        modules: bool = False,
    ) -> None:
        super().__init__(file)
        self.allowed = allowed
        self.refused: list[str] = [] if refused is None else refused
        self.objects = 0
        self.ops = 0
        self.tensors = 0
        # modules=True: classes of a whole pickled model (torch.save(model)) may be read as inert
        # module placeholders; which globals are module classes is decided once the pickle is read
        self.modules = modules
        self.classes: dict[str, type] = {}  # global -> its ModulePlaceholder subclass, for this pickle only
        self.instances: dict[str, list[ModulePlaceholder]] = {}  # objects built by NEWOBJ, per global
        self.called: set[str] = set()  # module-class candidates called (REDUCE, INST, OBJ): not module classes
        self.pending: list[str] = []  # candidates refused unless found to be module classes

    def load(self) -> Any:
        try:
            obj = super().load()
            if self.classes:
                self._settle_modules(obj)
        except Exception as e:
            if isinstance(e, PinitError) and all(g in self.pending for g in self.refused):
                raise  # pinit's own refusal (BUILD on a class...), not a refused global's placeholder
            if self.refused:  # what made the rest fail is most likely a refused global's placeholder
                raise UnsafeGlobalError(self.refused) from None
            raise
        if self.refused:
            raise UnsafeGlobalError(self.refused)
        return obj

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles (torch.save's default) name Python 2 modules such as
        # ``__builtin__``; map them as pickle's own find_class does (fix_imports).
        full = canonical_global(f"{module}.{name}")
        if full in _REBUILDERS:
            return functools.partial(self._count_tensor, _REBUILDERS[full])
        if full in _PLAIN:
            return _PLAIN[full]
        if self.modules and full == "copyreg._reconstructor":  # protocol 0/1 pickles build objects with it
            return self._reconstructor
        if self.modules and full == "builtins.object":
            return _OBJECT
        allowed = full in self.allowed or f"{module}.{name}" in self.allowed
        if self.modules and not runs_code(full):
            return self._candidate(full, allowed)
        if allowed:
            return opaque_class(full)
        if full not in self.refused:
            self.refused.append(full)
        return opaque_class(full)  # inert: unpickling goes on to find every other refused global

    def _candidate(self, full: str, allowed: bool) -> type:
        """The placeholder class of a global that may be a module class (one per global and pickle)."""
        cls = self.classes.get(full)
        if cls is None:
            cls = self.classes[full] = module_class(full)
            if not allowed and full not in self.refused:
                self.refused.append(full)  # taken back if it turns out to be a module class
                self.pending.append(full)
        return cls

    def _reconstructor(self, cls: Any = None, base: Any = None, state: Any = None, *rest: Any) -> Any:
        # copyreg._reconstructor(cls, object, None) is object.__new__(cls): what NEWOBJ does.
        # Any other call would run base.__init__ (copyreg._reconstructor(Popen, Popen, argv)): refused
        if rest or not is_module_class(cls) or base is not _OBJECT or state is not None:
            if "copyreg._reconstructor" not in self.refused:
                self.refused.append("copyreg._reconstructor")
            return opaque_class("copyreg._reconstructor")()
        return self._new_instance(cls, ())

    def _new_instance(self, cls: type, args: tuple[Any, ...]) -> Any:
        obj = cls.__new__(cls, *args)
        if is_module_class(cls):
            self.instances.setdefault(cls._pinit_global, []).append(obj)  # type: ignore[attr-defined]
        return obj

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new_instance(cls, args) if is_module_class(cls) else cls.__new__(cls, *args))

    def load_newobj_ex(self) -> None:
        cls = self.stack[-3]
        if is_module_class(cls):  # torch.save never writes NEWOBJ_EX: not how a module is pickled
            self.class_called(cls)
        super().load_newobj_ex()

    def load_reduce(self) -> None:
        func = self.stack[-2]
        if is_module_class(func):  # a call of the class would run its constructor
            self.class_called(func)
        super().load_reduce()

    def _instantiate(self, klass: Any, args: Any) -> None:
        if is_module_class(klass):  # INST / OBJ
            self.class_called(klass)
        super()._instantiate(klass, args)

    def class_called(self, cls: type) -> None:
        """A candidate module class is called: it is not read as a module class."""
        self.called.add(cls._pinit_global)  # type: ignore[attr-defined]

    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.REDUCE[0]] = load_reduce

    def module_layout(self, obj: ModulePlaceholder) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]] | None:
        """The state_dict layout of one object of a candidate class, or None if it is not a module."""
        d = obj.__dict__
        if d.get("_args") != () or d.get("_called") or "_items" in d or "_list" in d or "_state" not in d:
            return None
        return nn_module_layout(d["_state"])

    def _settle_modules(self, root: Any) -> None:
        """Decide which candidate globals are module classes: used only through NEWOBJ (or
        ``copyreg._reconstructor``) and BUILD, never called, never stored as a value, and every
        object of theirs has a module's state. Their objects get their state_dict layout;
        every other candidate stays refused (or, if allowed, an inert placeholder)."""
        as_value = _classes_stored_as_values(root, set(self.classes.values()))
        layouts: dict[int, tuple[list[tuple[str, Any]], list[tuple[str, Any]]]] = {}
        confirmed: set[str] = set()
        for full, objs in self.instances.items():
            if full in self.called or full in as_value:
                continue
            found = [self.module_layout(o) for o in objs]
            if all(f is not None for f in found):
                confirmed.add(full)
                for o, f in zip(objs, found):
                    layouts[id(o)] = f  # type: ignore[assignment]
        for full in confirmed:
            for o in self.instances[full]:
                o.__dict__["_pinit_module"], o.__dict__["_pinit_extra"] = layouts[id(o)]
        # torch.nn.functional's functions kept as a module's attribute (TransformerEncoderLayer's
        # activation, F.relu), never called here: inert values, as the module classes are
        confirmed |= {
            full
            for full in self.pending
            if full.startswith(INERT_FUNCTION_PREFIX) and full not in self.called and full not in self.instances
        }
        for full in self.pending:
            if full in confirmed and full in self.refused:
                self.refused.remove(full)

    def _count_tensor(self, rebuild: Any, *args: Any, **kwargs: Any) -> Any:
        self.tensors += 1
        if self.tensors > MAX_TENSORS:
            raise PinitError(f"the pickle holds more than {MAX_TENSORS:,} tensors (a hostile or broken file)")
        return rebuild(*args, **kwargs)

    def load_build(self) -> None:
        inst = self.stack[-2]
        if isinstance(inst, TensorRef):  # a tensor's Python attributes: not part of its data
            self.stack.pop()
            return
        if isinstance(inst, type) or not isinstance(inst, (Opaque, OrderedDict)):
            if isinstance(inst, type):
                what = f"class {inst.__name__}"
            elif isinstance(inst, _Marker):
                what = f"torch's shared {inst.name} object ({inst.value})"
            else:
                what = f"a {type(inst).__name__} object"
            raise PinitError(f"the pickle sets the state of {what} (BUILD refused: only objects it created)")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise PinitError(f"unexpected persistent id in pickle: {pid!r:.80}")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _Marker) or kind.name != "storage":
            raise PinitError("invalid storage type in pickle")
        if kind.value == "quantized":
            raise NeedsTorch("quantized storage")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise PinitError("invalid storage reference in pickle")
        return StorageRef(key, kind.value, numel)


def _counting(op: Any, creates: bool) -> Any:
    def run(self: RestrictedUnpickler) -> None:
        self.ops += 1
        if self.ops > MAX_PICKLE_OPS:
            raise PinitError(f"the pickle runs more than {MAX_PICKLE_OPS:,} opcodes (a hostile or broken file)")
        if creates:
            self.objects += 1
            if self.objects > MAX_PICKLE_OBJECTS:
                raise PinitError(
                    f"the pickle creates more than {MAX_PICKLE_OBJECTS:,} objects (a hostile or broken file)"
                )
        op(self)

    return run


_CREATING = {code[0] for code in _CREATING_OPCODES}
for _key, _op in list(RestrictedUnpickler.dispatch.items()):
    RestrictedUnpickler.dispatch[_key] = _counting(_op, _key in _CREATING)


class _LegacyScanUnpickler(RestrictedUnpickler):
    """The restricted unpickler for the object pickle of a legacy (non-zip) torch file, whose
    storage references are ``('storage', type, key, location, numel, view_metadata)``."""

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise PinitError(f"unexpected persistent id in pickle: {pid!r:.80}")
        return super().persistent_load(pid[:5])


def prescan_legacy(path: str, allowed: frozenset[str]) -> None:
    """Unpickle a legacy torch file's pickles with the restricted unpickler, building nothing
    but placeholders, before torch's own ``weights_only`` loader reads it: every global is
    checked by pinit's rules (all refused ones named at once), and what torch would admit but
    pinit refuses (``bytearray(n)`` allocating gigabytes from a few bytes) is refused first."""
    refused: list[str] = []
    with _pickle_errors(), open(path, "rb") as f:
        for _ in range(3):  # magic number, protocol version, system info
            RestrictedUnpickler(f, allowed, refused).load()
        _LegacyScanUnpickler(f, allowed, refused).load()


def unpickle(data: bytes | io.BufferedIOBase, allowed: frozenset[str], modules: bool = False) -> Any:
    """The object tree of a pickle (bytes, or a file positioned at its start); ``modules``: the
    classes of a whole pickled model may be read as inert module placeholders."""
    f = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    with _pickle_errors():
        return RestrictedUnpickler(f, allowed, modules=modules).load()


@contextmanager
def _pickle_errors() -> Iterator[None]:
    """Turn whatever a malformed pickle makes the unpickler raise into one PinitError."""
    try:
        yield
    except (PinitError, NeedsTorch):
        raise
    except RecursionError:
        raise PinitError("pickle nested too deeply") from None
    except MemoryError:
        raise PinitError("pickle asks for more memory than is available") from None
    except Exception as e:  # EOF, bad opcode, wrong types for the placeholders, an unreadable file
        raise PinitError(f"cannot read the pickle ({type(e).__name__}: {e})") from None


@dataclass
class ZipCheckpoint:
    obj: Any  # the object tree with TensorRef leaves
    path: str
    fd: FileRef  # a descriptor, or a remote file (pinit.remote)
    members: dict[str, zipfile.ZipInfo]
    prefix: str
    format: str = "torch"  # "torchscript" for a torch.jit.save archive
    # what pinit found but could not interpret (an archive's pickles it cannot read): never healthy
    uninterpreted: list[str] = field(default_factory=list)
    storages: int = 0  # storage records of an archive that could not be read


def _member_data_offset(fd: FileRef, info: zipfile.ZipInfo, file_size: int) -> int:
    return zip_layout.data_offset(fd, info, file_size)  # where torch (miniz) reads it; local header checked


def read_zip(path: str, fd: FileRef, allowed: frozenset[str]) -> ZipCheckpoint:
    """Read the object tree of a torch zip checkpoint (no tensor data is read)."""
    try:
        with reopen(fd) as f, zipfile.ZipFile(f) as zf:  # the very file torch_layout reads
            infos, start_dir = zf.infolist(), zf.start_dir
    except Exception as e:  # BadZipFile, OSError, a bad name encoding, NotImplementedError (zip version)
        raise PinitError(f"not a readable zip archive ({e})") from None
    # the members torch.load reads, or a refusal where another reader could read others (SPEC 1)
    layout = zip_layout.torch_layout(fd, infos, start_dir)
    if layout.find("constants.pkl") is not None and any(k.startswith("code/") for k in layout.records):
        from pinit.formats import torchscript

        return torchscript.read_archive(path, fd, layout, allowed)
    pkl_info = layout.find("data.pkl")
    if pkl_info is None:  # torch_layout refuses archives without one
        raise PinitError("zip archive is not a torch checkpoint (no data.pkl)")
    if pkl_info.file_size > MAX_PICKLE_BYTES:
        raise PinitError(f"data.pkl is larger than {MAX_PICKLE_BYTES >> 20} MiB")
    data = zip_layout.read_record(fd, pkl_info, MAX_PICKLE_BYTES)  # inflates no more than that
    if layout.byteorder != "little":
        raise PinitError(f"big-endian checkpoints are not supported (byteorder '{layout.byteorder}')")
    obj = unpickle(data, allowed, modules=True)
    return ZipCheckpoint(obj, path, fd, layout.records, layout.prefix)


def _storage(ckpt: ZipCheckpoint, ref: StorageRef, file_size: int) -> Storage:
    # ckpt.members: the records below the prefix, looked up ignoring ASCII case as torch does
    info = zip_layout.find(ckpt.members, f"data/{ref.key}")
    if info is None:
        raise PinitError(f"storage '{ref.key}' is missing from the zip archive")
    nbytes = ref.numel * (dtypes.get(ref.dtype).itemsize if ref.dtype else 1)
    # torch.load(mmap=True) reads the first nbytes of a longer record (without mmap torch refuses it);
    # a shorter one both refuse (mmap reads past the record)
    if nbytes > info.file_size:
        raise PinitError(f"storage '{ref.key}' claims {nbytes} bytes but its zip member holds {info.file_size}")
    key = (ckpt.path, ref.key)
    start = _member_data_offset(ckpt.fd, info, file_size)
    if info.compress_type == zipfile.ZIP_STORED:
        return file_storage(ckpt.fd, start, nbytes, key, ckpt.path)
    if nbytes != info.file_size:  # torch inflates it only when the sizes agree (mmap reads it compressed)
        raise PinitError(f"storage '{ref.key}' claims {nbytes} bytes but its compressed member holds {info.file_size}")
    zip_layout.InflatedReader(ckpt.fd, info, start).check()  # torch refuses one of another inflated size
    return StreamStorage(lambda: zip_layout.InflatedReader(ckpt.fd, info, start), nbytes, key)


def to_entries(ckpt: ZipCheckpoint, leaves: list[Any]) -> list[TensorEntry]:
    """Entries for the flattened TensorRef leaves, each validated against its storage."""
    file_size = size_of(ckpt.fd)
    storages: dict[str, Storage] = {}
    out = []
    for i, leaf in enumerate(leaves):
        ref: TensorRef = leaf.value
        if ref.dtype not in dtypes.BY_NAME:
            raise NeedsTorch(f"dtype {ref.dtype}")
        if len(ref.strides) != len(ref.shape):
            raise PinitError(f"tensor '{leaf.name}' has {len(ref.shape)} sizes but {len(ref.strides)} strides")
        storage = storages.get(ref.storage.key)
        if storage is None:
            storage = storages[ref.storage.key] = _storage(ckpt, ref.storage, file_size)
        entry = TensorEntry(
            name=leaf.name,
            dtype=ref.dtype,
            shape=ref.shape,
            storage=storage,
            offset=ref.offset,
            strides=ref.strides,
            requires_grad=ref.requires_grad,
            index=i,
        )
        if getattr(leaf, "attribute", False):  # a plain module attribute, not in the state dict
            entry.extra["attribute"] = True
        entry.validate()
        out.append(entry)
    return out
