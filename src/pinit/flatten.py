"""Flatten nested checkpoint containers into dotted tensor names.

A plain state dict keeps its keys; dicts, lists and tuples nested inside are
joined with ``.``, list and tuple items by their index.  A pickled ``nn.Module``
(or TorchScript module) placeholder is walked as ``state_dict()`` walks it: its
parameters, its persistent buffers, then its child modules.  Anything else that is
not a tensor is a leaf that is kept on write-back but not listed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pinit.errors import PinitError
from pinit.formats.torch_zip import ModulePlaceholder

MAX_DEPTH = 200
MAX_PATHS = 64  # paths that may reach one object (tied references are 2 or 3)

PathKey = Any  # a dict key or a list index


@dataclass(frozen=True)
class Leaf:
    name: str
    path: tuple[PathKey, ...]
    value: Any
    attribute: bool = False  # kept as a plain attribute of a pickled module: outside its state_dict


def _key_text(key: PathKey) -> str:
    if isinstance(key, str):
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:  # a pickled lone surrogate: name it printably ("a\\ud800")
            return key.encode("utf-8", "backslashreplace").decode("utf-8")
        return key
    if isinstance(key, bool) or key is None or isinstance(key, (int, float)):
        return str(key)
    if isinstance(key, bytes):
        return key.decode("utf-8", "backslashreplace")
    return str(key)


def iter_tensors(obj: Any, is_tensor: Callable[[Any], bool]) -> Iterator[Leaf]:
    """Yield every tensor under ``obj`` with its flat name and its path of keys.

    A pickle can refer to one object from many places: ``[x, x]`` nested 40 deep is a few
    hundred bytes and 2**40 paths.  A shared container without tensors is walked once; a
    tensor or a container holding tensors reached by more than MAX_PATHS paths is an error.
    """
    on_path: set[int] = set()
    no_tensors: set[int] = set()  # containers already walked that hold no tensor
    reached: dict[int, int] = {}  # object id -> paths that reached it (tensors, containers)

    def count(node: Any, prefix: str) -> None:
        n = reached[id(node)] = reached.get(id(node), 0) + 1
        if n > MAX_PATHS:
            raise PinitError(
                f"the pickle refers to '{prefix or '<root>'}' from more than {MAX_PATHS} places "
                "(shared references; a hostile or broken file)"
            )

    def walk(node: Any, path: tuple[PathKey, ...], prefix: str, attribute: bool) -> Iterator[Leaf]:
        if is_tensor(node):
            count(node, prefix)
            yield Leaf(prefix, path, node, attribute)
            return
        if isinstance(node, Mapping):
            items: Iterator[tuple[PathKey, Any, bool]] = ((k, v, attribute) for k, v in node.items())
        elif isinstance(node, (list, tuple)):
            items = ((i, v, attribute) for i, v in enumerate(node))
        elif isinstance(node, ModulePlaceholder) and node.module_items() is not None:
            # state_dict order (parameters, buffers, children), then the tensors the module keeps
            # as plain attributes (anchors, masks, TorchScript constants): read and checked too,
            # marked as outside the state dict
            state = ((k, v, attribute) for k, v in node.module_items() or ())
            extra = ((k, v, True) for k, v in node.module_extra())
            items = itertools.chain(state, extra)
        else:
            return
        if len(path) >= MAX_DEPTH:
            raise PinitError(f"containers nested deeper than {MAX_DEPTH} levels")
        node_id = id(node)
        if node_id in on_path:
            raise PinitError(f"container '{prefix or '<root>'}' contains itself")
        if node_id in no_tensors:
            return
        count(node, prefix)
        on_path.add(node_id)
        found = False
        for key, child, attr in items:
            text = _key_text(key)
            for leaf in walk(child, (*path, key), f"{prefix}.{text}" if prefix else text, attr):
                found = True
                yield leaf
        on_path.discard(node_id)
        if not found:
            no_tensors.add(node_id)

    if is_tensor(obj):
        # A bare tensor saved on its own: it has no key, so it is named "tensor".
        yield Leaf("tensor", (), obj)
        return
    yield from walk(obj, (), "", False)


def flatten(obj: Any, is_tensor: Callable[[Any], bool]) -> list[Leaf]:
    """All tensors under ``obj``; two paths flattening to one name are an error."""
    seen: dict[str, tuple[PathKey, ...]] = {}
    leaves = []
    for leaf in iter_tensors(obj, is_tensor):
        if leaf.name in seen:
            raise PinitError(
                f"two tensors flatten to the same name '{leaf.name}' "
                f"(keys {_show_path(seen[leaf.name])} and {_show_path(leaf.path)})"
            )
        seen[leaf.name] = leaf.path
        leaves.append(leaf)
    return leaves


def _show_path(path: tuple[PathKey, ...]) -> str:
    return "".join(f"[{k!r}]" for k in path) or "<root>"


def get_path(obj: Any, path: tuple[PathKey, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


@dataclass(frozen=True)
class Hidden:
    """Tensors that lie inside an object pinit does not interpret (a placeholder for an allowed
    global, a plain attribute of a module outside its state dict...): found in the file, but not
    listed or read."""

    name: str  # the flat name of the object ("" for the root)
    type_name: str  # "module.Class"
    tensors: int
    attribute_of: str | None = None  # a module's plain attribute: the module's class

    def describe(self) -> str:
        where = self.name or "<root>"
        if self.attribute_of is not None:
            return (
                f"{where}: a {self.type_name} kept as a plain attribute of a {self.attribute_of} module "
                f"(not in its state_dict), holding {self.tensors} tensor(s)"
            )
        return f"{where}: a {self.type_name} object holding {self.tensors} tensor(s)"


MAX_HIDDEN_NODES = 2_000_000


def _type_name(x: Any) -> str:
    full = getattr(type(x), "_pinit_global", None)  # a placeholder names the global it stands for
    return full if isinstance(full, str) else f"{type(x).__module__}.{type(x).__qualname__}"


def _children(x: Any) -> Iterator[Any]:
    if isinstance(x, Mapping):
        for k, v in x.items():
            yield k
            yield v
    elif isinstance(x, (list, tuple, set, frozenset)):
        yield from x
    else:
        d = getattr(x, "__dict__", None)
        if isinstance(d, dict):
            yield from d.values()


def hidden_tensors(obj: Any, is_tensor: Callable[[Any], bool]) -> list[Hidden]:
    """The objects under ``obj`` that are neither containers nor tensors but hold tensors,
    outermost first, each with the count of distinct tensors inside it.

    Containers are walked as :func:`iter_tensors` walks them; inside a foreign object every
    attribute, item and argument is searched, each object once.
    """
    out: list[Hidden] = []
    seen: set[int] = set()  # containers walked on the way
    budget = [MAX_HIDDEN_NODES]

    listed: set[int] | None = None  # the tensors iter_tensors lists (computed when first needed)

    def count_inside(root: Any, skip: set[int] | None = None) -> int:
        found: set[int] = set()
        visited: set[int] = set()
        stack = [root]
        while stack:
            node = stack.pop()
            if id(node) in visited:
                continue
            visited.add(id(node))
            budget[0] -= 1
            if budget[0] < 0:
                raise PinitError("the pickle's objects are too many to search for tensors")
            if is_tensor(node):
                if skip is None or id(node) not in skip:
                    found.add(id(node))
                continue
            if isinstance(node, (str, bytes, bytearray, int, float, complex, bool)) or node is None:
                continue
            stack.extend(_children(node))
        return len(found)

    def walk(node: Any, prefix: str, depth: int) -> None:
        if is_tensor(node) or id(node) in seen or depth > MAX_DEPTH:
            return
        if isinstance(node, (Mapping, list, tuple)):
            seen.add(id(node))
            items = node.items() if isinstance(node, Mapping) else enumerate(node)
            for key, child in items:
                text = _key_text(key)
                walk(child, f"{prefix}.{text}" if prefix else text, depth + 1)
            return
        if isinstance(node, (str, bytes, bytearray, int, float, complex, bool)) or node is None:
            return
        module_items = node.module_items() if isinstance(node, ModulePlaceholder) else None
        if module_items is not None:
            nonlocal listed
            seen.add(id(node))
            for key, child in module_items:
                walk(child, f"{prefix}.{key}" if prefix else key, depth + 1)
            for key, value in node.module_extra():  # hooks, hyper-parameters, tensors kept as plain attributes
                if listed is None:
                    listed = {id(leaf.value) for leaf in iter_tensors(obj, is_tensor)}
                n = count_inside(value, listed)
                if n:
                    where = f"{prefix}.{key}" if prefix else key
                    out.append(Hidden(where, _type_name(value), n, attribute_of=_type_name(node)))
            return
        n = count_inside(node)
        if n:
            out.append(Hidden(prefix, _type_name(node), n))

    walk(obj, "", 0)
    return out
