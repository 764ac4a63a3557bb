"""The non-tensor content of a checkpoint (epoch, step, hyper-parameters...) as plain data.

:func:`checkpoint_meta` turns a torch checkpoint's unpickled object tree into JSON-able data:

- a tensor becomes a reference ``{"tensor": NAME, "shape": [...], "dtype": ...}`` (NAME is its
  listed name, or null for a tensor inside an object pinit does not interpret, which is not read);
  a container that holds only tensors (a ``state_dict``, an optimizer's ``state``) becomes
  ``{"tensors": N}``;
- an inert placeholder for a pickled object (``argparse.Namespace``, ``pathlib.PosixPath``...)
  becomes ``{"object": "module.Name", "args": [...], "state": ..., "items": ..., "list": ...}``
  with only the parts it has;
- dict keys become strings, tuples and sets lists, NaN and infinities the strings ``"nan"``,
  ``"inf"``, ``"-inf"``, bytes ``{"bytes": N, "head": HEX}``.

The result is bounded whatever the file holds: nesting, items per container, string length and
the total number of values are capped; what was cut is said in place (a string
``head…(N chars)…tail``, a dict key ``"…"``, a last list item ``"… N more items not shown"``) and
listed in :attr:`Meta.cut`.  A safetensors file's ``__metadata__`` goes through the same bounds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pinit.checkpoint import Checkpoint, SafetensorsSource, ShardedSource
from pinit.flatten import _key_text, _type_name, iter_tensors
from pinit.formats.torch_zip import Opaque, TensorRef

MAX_DEPTH = 12
MAX_ITEMS = 100  # items shown per dict or list
MAX_STRING = 1000  # characters of one string or key
MAX_VALUES = 5000  # values shown in all
MAX_BYTES_HEAD = 32
CUT_KEY = "…"  # the dict key that says how many keys were left out
OBJECT_PARTS = ("args", "state", "items", "list")


@dataclass
class Meta:
    """The non-tensor content of one checkpoint, as JSON-able data."""

    source: str  # "pickle" (a torch checkpoint's object tree), "safetensors" (__metadata__), "sharded", "none"
    data: Any
    cut: list[str] = field(default_factory=list)  # "path: what was shortened or left out", one per cut

    @property
    def empty(self) -> bool:
        """No non-tensor content: no metadata, or an object tree of tensors only."""
        return self.data is None or self.data == {} or is_tensors(self.data)

    def as_json(self) -> Any:
        return self.data


def is_tensor_ref(x: Any) -> bool:
    return isinstance(x, dict) and set(x) == {"tensor", "shape", "dtype"}


def is_tensors(x: Any) -> bool:
    return isinstance(x, dict) and set(x) == {"tensors"} and isinstance(x["tensors"], int)


def is_object(x: Any) -> bool:
    return (
        isinstance(x, dict)
        and isinstance(x.get("object"), str)
        and set(x) <= {"object", *OBJECT_PARTS, "attributes", "repr"}
    )


def shorten(text: str, limit: int = MAX_STRING) -> str:
    """``text``, or its start and end around ``…(N chars)…`` when longer than ``limit``."""
    if len(text) <= limit:
        return text
    marker = f"…({len(text):,} chars)…"
    half = max(0, limit - len(marker)) // 2
    return text[:half] + marker + text[len(text) - half :]


def checkpoint_meta(ckpt: Checkpoint) -> Meta:
    """The non-tensor content of ``ckpt``: its object tree (torch), ``__metadata__`` (safetensors),
    or for a sharded checkpoint the index's ``metadata`` and each shard's own."""
    source = ckpt.source
    if isinstance(source, ShardedSource):
        walker = _Walker(lambda x: False, {})
        index_meta = source.index.get("metadata")
        shards: dict[str, Any] = {}
        for shard in source.shards:
            m = checkpoint_meta(shard)
            if not m.empty:
                shards[os.path.basename(shard.path)] = m.data
                walker.cut += [f"{os.path.basename(shard.path)}: {c}" for c in m.cut]
        data: dict[str, Any] = {}
        if index_meta is not None:
            data["index"] = walker.value(index_meta, "index", 0)
        if shards:
            data["shards"] = shards
        return Meta("sharded", data, walker.cut)
    if source.tree is not None:
        names: dict[int, str] = {}
        for leaf in iter_tensors(source.tree, source.is_tensor):
            names.setdefault(id(leaf.value), leaf.name)
        walker = _Walker(source.is_tensor, names)
        return Meta("pickle", walker.value(source.tree, "", 0), walker.cut)
    if isinstance(source, SafetensorsSource) and source.metadata is not None:
        walker = _Walker(lambda x: False, {})
        return Meta("safetensors", walker.value(dict(source.metadata), "", 0), walker.cut)
    return Meta("none", None)


class _Walker:
    def __init__(self, is_tensor: Callable[[Any], bool], names: dict[int, str]) -> None:
        self.is_tensor = is_tensor
        self.names = names
        self.cut: list[str] = []
        self.budget = MAX_VALUES
        self.on_path: set[int] = set()
        self.shown: dict[int, str] = {}  # id of a container or object already shown -> its path
        self.only_tensors: dict[int, int | None] = {}  # container id -> tensor count, None: holds other content

    def note(self, path: str, what: str) -> None:
        if len(self.cut) < MAX_ITEMS:
            self.cut.append(f"{path or '<root>'}: {what}")
        elif len(self.cut) == MAX_ITEMS:
            self.cut.append("… more cuts not listed")

    def tensor_count(self, node: Any, depth: int = 0) -> int | None:
        """The tensors under a container that holds nothing else (None otherwise). Memoized, so
        each container is looked at once whatever the sharing; a tree nested deeper than
        MAX_DEPTH, or that contains itself, counts as holding other content."""
        if self.is_tensor(node):
            return 1
        if id(node) in self.only_tensors:
            return self.only_tensors[id(node)]
        if not isinstance(node, (Mapping, list, tuple)) or depth > MAX_DEPTH:
            return None
        if isinstance(node, Mapping) and not all(isinstance(k, (str, int)) for k in node):
            return None
        self.only_tensors[id(node)] = None  # while walking it: a cycle back to it holds other content
        total: int | None = 0
        for v in node.values() if isinstance(node, Mapping) else node:
            n = self.tensor_count(v, depth + 1)
            if n is None:
                total = None
                break
            total += n
        self.only_tensors[id(node)] = total
        return total

    def value(self, x: Any, path: str, depth: int) -> Any:
        self.budget -= 1
        if self.budget < 0:
            if self.budget == -1:
                self.note(path, f"output limit of {MAX_VALUES} values reached; the rest is not shown")
            return "… not shown (output limit reached)"
        if x is None or isinstance(x, (bool, int)):
            if isinstance(x, int) and not isinstance(x, bool) and x.bit_length() > 64:
                text = str(x) if x.bit_length() < 10_000 else f"an integer of {x.bit_length():,} bits"
                return shorten(text, 100)
            return x
        if isinstance(x, float):
            return x if math.isfinite(x) else "nan" if math.isnan(x) else "inf" if x > 0 else "-inf"
        if isinstance(x, str):
            return self.string(x, path)
        if isinstance(x, (bytes, bytearray)):
            return {"bytes": len(x), "head": bytes(x[:MAX_BYTES_HEAD]).hex()}
        if isinstance(x, complex):
            return str(x)
        if self.is_tensor(x):
            return self.tensor(x)
        if depth >= MAX_DEPTH:
            self.note(path, f"nested deeper than {MAX_DEPTH} levels; not shown")
            return f"… nested deeper than {MAX_DEPTH} levels, not shown"
        if id(x) in self.on_path:
            self.note(path, "refers to a container that holds it")
            return "… refers to a container that holds it"
        if id(x) in self.shown:  # a container the pickle refers to twice: shown once
            return f"… the same object as {self.shown[id(x)] or '<root>'}"
        self.on_path.add(id(x))
        try:
            if isinstance(x, (Mapping, list, tuple)):
                n = self.tensor_count(x)
                if n is not None and n > 0:
                    return {"tensors": n}
            if _nested_or_long(x):  # small flat ones (an optimizer's betas) read better repeated
                self.shown[id(x)] = path
            if isinstance(x, Mapping):
                return self.mapping(x.items(), len(x), path, depth)
            if isinstance(x, (list, tuple, set, frozenset)):
                return self.sequence(iter(x), len(x), path, depth)
            if isinstance(x, Opaque):
                return self.opaque(x, path, depth)
            return self.other(x, path, depth)
        finally:
            self.on_path.discard(id(x))

    def string(self, s: str, path: str) -> str:
        short = shorten(s)
        if short is not s:
            self.note(path, f"a string of {len(s):,} characters shortened")
        try:
            short.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a pickle: JSON could not encode it
            short = short.encode("utf-8", "backslashreplace").decode("utf-8")
        return short

    def tensor(self, t: Any) -> dict[str, Any]:
        dtype = t.dtype if isinstance(t, TensorRef) else str(t.dtype).removeprefix("torch.")
        return {"tensor": self.names.get(id(t)), "shape": list(t.shape), "dtype": dtype}

    def mapping(self, items: Any, n: int, path: str, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i, (k, v) in enumerate(items):
            if i >= MAX_ITEMS:
                out[CUT_KEY] = f"{n - MAX_ITEMS:,} more keys not shown"
                self.note(path, f"{n - MAX_ITEMS:,} of {n:,} keys not shown")
                break
            key = self.string(_key_text(k), path)
            while key in out:  # two keys that read the same (1 and "1")
                key += "'"
            out[key] = self.value(v, f"{path}.{key}" if path else key, depth + 1)
        return out

    def sequence(self, items: Iterator[Any], n: int, path: str, depth: int) -> list[Any]:
        out: list[Any] = []
        for i, v in enumerate(items):
            if i >= MAX_ITEMS:
                out.append(f"… {n - MAX_ITEMS:,} more items not shown")
                self.note(path, f"{n - MAX_ITEMS:,} of {n:,} items not shown")
                break
            out.append(self.value(v, f"{path}.{i}" if path else str(i), depth + 1))
        return out

    def opaque(self, x: Opaque, path: str, depth: int) -> dict[str, Any]:
        d = x.__dict__
        out: dict[str, Any] = {"object": _type_name(x)}
        for part in OBJECT_PARTS:
            v = d.get(f"_{part}")
            if v is None or (part == "args" and not v):
                continue
            out[part] = self.value(v, f"{path}.<{part}>", depth + 1)
        return out

    def other(self, x: Any, path: str, depth: int) -> dict[str, Any]:
        """A real object (a torch-loaded checkpoint's allowed global, a torch dtype...)."""
        out: dict[str, Any] = {"object": _type_name(x)}
        d = getattr(x, "__dict__", None)
        if isinstance(d, dict) and d:
            out["attributes"] = self.mapping(d.items(), len(d), path, depth)
        else:
            try:
                text = repr(x)
            except Exception:  # a repr that fails says nothing more than the type
                return out
            out["repr"] = self.string(text, path)
        return out


def _nested_or_long(x: Any) -> bool:
    if not isinstance(x, (Mapping, list, tuple, set, frozenset)):
        return False
    if len(x) > 16:
        return True
    values = x.values() if isinstance(x, Mapping) else x
    return any(not (v is None or isinstance(v, (bool, int, float, str, bytes))) for v in values)


def tree_lines(data: Any) -> Iterator[tuple[int, str | None, str | None]]:
    """``data`` (from :class:`Meta`) as the lines of an indented tree: ``(depth, key, text)``;
    ``key`` is None only for a root that is not a container, ``text`` is None for a node whose
    children follow.  The callers escape both for their medium (terminal, HTML)."""
    if isinstance(data, dict) and not (is_tensor_ref(data) or is_tensors(data) or is_object(data)) and data:
        for k, v in data.items():
            yield from _lines(v, k, 0)
    elif isinstance(data, list) and data and not (all(_is_scalar(v) for v in data) and len(data) <= 16):
        for i, v in enumerate(data):
            yield from _lines(v, f"[{i}]", 0)
    else:
        yield from _lines(data, None, 0)


def _lines(data: Any, key: str | None, depth: int) -> Iterator[tuple[int, str | None, str | None]]:
    if is_tensor_ref(data):
        name = data["tensor"]
        where = name if name is not None else "inside an object, not read"
        shape = "[" + ", ".join(str(s) for s in data["shape"]) + "]"
        yield depth, key, f"<tensor {where} {data['dtype']} {shape}>"
        return
    if is_tensors(data):
        n = data["tensors"]
        yield depth, key, f"<{n:,} tensor{'s' if n != 1 else ''}>"
        return
    if is_object(data):
        parts = [p for p in (*OBJECT_PARTS, "attributes") if p in data]
        if "repr" in data:
            yield depth, key, f"<{data['object']}> {data['repr']}"
        elif parts == ["args"] and all(_is_scalar(a) for a in data["args"]):
            yield depth, key, f"<{data['object']}> ({', '.join(_scalar_text(a) for a in data['args'])})"
        else:
            yield depth, key, f"<{data['object']}>" + ("" if parts else " (no content)")
            for p in parts:
                yield from _lines(data[p], p, depth + 1)
        return
    if isinstance(data, dict):
        if not data:
            yield depth, key, "{}"
            return
        yield depth, key, None
        for k, v in data.items():
            yield from _lines(v, k, depth + 1)
        return
    if isinstance(data, list):
        if all(_is_scalar(v) for v in data) and len(data) <= 16:
            yield depth, key, "[" + ", ".join(_scalar_text(v) for v in data) + "]"
            return
        yield depth, key, None
        for i, v in enumerate(data):
            yield from _lines(v, f"[{i}]", depth + 1)
        return
    yield depth, key, _scalar_text(data)


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= 40)


def _scalar_text(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)
