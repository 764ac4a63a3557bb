"""TorchScript archives (``torch.jit.save``) read without the TorchScript runtime.

An archive is a torch zip whose ``data.pkl`` pickles the scripted module: each module is an
object of a ``__torch__.*`` class, built by NEWOBJ and given a flat ``__dict__`` by BUILD
(parameters, buffers, child modules and other attributes side by side), with tensors as
persistent references to the ``data/<key>`` records.  Which attributes are parameters and
which buffers, the archive says in the class definitions under ``code/``::

    class Conv2d(Module):
      __parameters__ = ["weight", ]
      __buffers__ = []

Those files are parsed with :mod:`ast` and only these literal lists are read (never compiled or
run); ``data.pkl`` goes through the restricted unpickler with the ``__torch__`` classes as inert
placeholders.  Tensors are named as ``torch.jit.load(f).state_dict()`` names them: per module its
parameters, then its buffers, in attribute order, then its child modules, joined with ``.``.
Constants (``constants.pkl``) belong to the code, not the state dict, and are not listed.
"""

from __future__ import annotations

import ast
import io
import zipfile
from typing import Any

from pinit.errors import PinitError
from pinit.formats import zip_layout
from pinit.formats.torch_zip import (
    MAX_PICKLE_BYTES,
    ModulePlaceholder,
    NeedsTorch,
    RestrictedUnpickler,
    TensorRef,
    ZipCheckpoint,
    _pickle_errors,
)

MAX_CODE_BYTES = 64 << 20  # all code/ files together (a large model's code is a few MB)
MAX_CODE_FILE = 16 << 20


class ClassInfo:
    """What the archive's code says of one TorchScript class."""

    def __init__(self, is_module: bool, parameters: list[str], buffers: list[str]) -> None:
        self.is_module = is_module
        self.parameters = parameters
        self.buffers = buffers


def _literal_names(node: ast.expr) -> list[str] | None:
    try:
        value = ast.literal_eval(node)  # literals only: never evaluates a name or a call
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        return None
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def parse_classes(source: str) -> dict[str, ClassInfo]:
    """The classes defined at the top of one ``code/`` file: whether each is a module, and its
    ``__parameters__`` and ``__buffers__`` lists (a class without them is not a module)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return {}
    out: dict[str, ClassInfo] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        lists: dict[str, list[str] | None] = {}
        for stmt in node.body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                target = stmt.targets[0].id
                if target in ("__parameters__", "__buffers__"):
                    lists[target] = _literal_names(stmt.value)
        params, buffers = lists.get("__parameters__"), lists.get("__buffers__")
        based_on_module = any(isinstance(b, ast.Name) and b.id == "Module" for b in node.bases)
        is_module = based_on_module and params is not None and buffers is not None
        out[node.name] = ClassInfo(is_module, params or [], buffers or [])
    return out


def read_code(fd: int, layout: zip_layout.ZipLayout) -> dict[str, ClassInfo]:
    """Every class the archive's ``code/`` files define, by its qualified name (``__torch__.a.b.C``),
    the module part ASCII case folded as the archive's record names are."""
    classes: dict[str, ClassInfo] = {}
    budget = MAX_CODE_BYTES
    for key, info in layout.records.items():
        if not (key.startswith("code/") and key.endswith(".py")):
            continue
        if info.file_size > MAX_CODE_FILE or info.file_size > budget:
            continue  # its classes stay unknown: their tensors are reported as not read
        budget -= info.file_size
        raw = zip_layout.read_record(fd, info, MAX_CODE_FILE)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        module = key[len("code/") : -len(".py")].replace("/", ".")
        for name, ci in parse_classes(text).items():
            classes[f"{module}.{name}"] = ci
    return classes


def _class_key(full: str) -> str:
    module, _, name = full.rpartition(".")
    return f"{zip_layout.record_key(module) or module}.{name}"


_LIST_BUILDERS = (
    "build_intlist",
    "build_floatlist",
    "build_boollist",
    "build_doublelist",
    "build_complexlist",
    "build_tensorlist",
    "build_intlist_from_string",
)


def _build_list(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise PinitError("invalid TorchScript list in pickle")
    return data


def _restore_type_tag(value: Any, type_str: Any) -> Any:
    return value  # the type tag only tells the TorchScript runtime the element type


class TorchScriptUnpickler(RestrictedUnpickler):
    """The restricted unpickler for a TorchScript archive's ``data.pkl``: ``__torch__.*`` classes
    are inert placeholders (never refused, never imported); their objects are modules where the
    archive's code says so; calling one (REDUCE) is refused as for any other pickle."""

    def __init__(self, file: Any, allowed: frozenset[str], classes: dict[str, ClassInfo]) -> None:
        super().__init__(file, allowed, modules=True)
        self.code_classes = classes

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if module == "__torch__" or module.startswith("__torch__."):
            return self._candidate(full, allowed=True)
        if module == "torch.jit._pickle":
            if name in _LIST_BUILDERS:
                return _build_list
            if name == "restore_type_tag":
                return _restore_type_tag
        return super().find_class(module, name)

    def class_called(self, cls: type) -> None:
        super().class_called(cls)
        full = cls._pinit_global  # type: ignore[attr-defined]
        if full not in self.refused:
            self.refused.append(full)  # its constructor would run: refused and named

    def info(self, obj: Any) -> ClassInfo | None:
        full = getattr(type(obj), "_pinit_global", None)
        return self.code_classes.get(_class_key(full)) if isinstance(full, str) else None

    def module_layout(self, obj: ModulePlaceholder) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]] | None:
        d = obj.__dict__
        if d.get("_args") != () or d.get("_called") or "_items" in d or "_list" in d:
            return None
        info = self.info(obj)
        state = d.get("_state")
        if info is None or not info.is_module or type(state) is not dict:
            return None
        if not all(isinstance(k, str) for k in state):
            return None
        params, buffers = set(info.parameters), set(info.buffers)
        items = [(k, v) for k, v in state.items() if k in params and v is not None]
        items += [(k, v) for k, v in state.items() if k in buffers and v is not None]
        children = [(k, v) for k, v in state.items() if k not in params and k not in buffers and self._is_module(v)]
        items += children
        listed = params | buffers | {k for k, _ in children}
        extra = [(k, v) for k, v in state.items() if k not in listed]
        for k, v in state.items():
            if isinstance(v, TensorRef) and k in params:
                v.is_parameter = True
                v.requires_grad = v.requires_grad is True  # the archive records it per parameter
        return items, extra

    def _is_module(self, v: Any) -> bool:
        if not isinstance(v, ModulePlaceholder):
            return False
        info = self.info(v)
        return info is not None and info.is_module


def _unreadable(path: str, fd: int, layout: zip_layout.ZipLayout, why: str) -> ZipCheckpoint:
    storages = sum(k.startswith("data/") for k in layout.records)
    note = f"a TorchScript archive (torch.jit.save) with {storages} storage record(s) that pinit cannot read ({why})"
    return ZipCheckpoint(
        {}, path, fd, layout.records, layout.prefix, format="torchscript", uninterpreted=[note], storages=storages
    )


def read_archive(path: str, fd: int, layout: zip_layout.ZipLayout, allowed: frozenset[str]) -> ZipCheckpoint:
    """The module tree of a TorchScript archive, with TensorRef leaves on its ``data/`` records."""
    pkl_info: zipfile.ZipInfo | None = layout.find("data.pkl")
    if pkl_info is None:
        return _unreadable(path, fd, layout, "no data.pkl: an archive of an older TorchScript version")
    if pkl_info.file_size > MAX_PICKLE_BYTES:
        raise PinitError(f"data.pkl is larger than {MAX_PICKLE_BYTES >> 20} MiB")
    if layout.byteorder != "little":
        raise PinitError(f"big-endian checkpoints are not supported (byteorder '{layout.byteorder}')")
    classes = read_code(fd, layout)
    data = zip_layout.read_record(fd, pkl_info, MAX_PICKLE_BYTES)
    try:
        with _pickle_errors():
            obj = TorchScriptUnpickler(io.BytesIO(data), allowed, classes).load()
    except NeedsTorch as e:  # quantized or other tensor kinds: torch.load cannot read an archive either
        return _unreadable(path, fd, layout, f"it holds a {e} pinit does not model")
    return ZipCheckpoint(obj, path, fd, layout.records, layout.prefix, format="torchscript")
