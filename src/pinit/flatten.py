"""Flatten nested checkpoint containers into dotted tensor names.

A plain state dict keeps its keys; dicts, lists and tuples nested inside are
joined with ``.``, list and tuple items by their index.  Anything else that is
not a tensor is a leaf that is kept on write-back but not listed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pinit.errors import PinitError

MAX_DEPTH = 200
MAX_PATHS = 64  # paths that may reach one object (tied references are 2 or 3)

PathKey = Any  # a dict key or a list index


@dataclass(frozen=True)
class Leaf:
    name: str
    path: tuple[PathKey, ...]
    value: Any


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

    def walk(node: Any, path: tuple[PathKey, ...], prefix: str) -> Iterator[Leaf]:
        if is_tensor(node):
            count(node, prefix)
            yield Leaf(prefix, path, node)
            return
        if isinstance(node, Mapping):
            items: Iterator[tuple[PathKey, Any]] = iter(node.items())
        elif isinstance(node, (list, tuple)):
            items = iter(enumerate(node))
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
        for key, child in items:
            text = _key_text(key)
            for leaf in walk(child, (*path, key), f"{prefix}.{text}" if prefix else text):
                found = True
                yield leaf
        on_path.discard(node_id)
        if not found:
            no_tensors.add(node_id)

    if is_tensor(obj):
        # A bare tensor saved on its own: it has no key, so it is named "tensor".
        yield Leaf("tensor", (), obj)
        return
    yield from walk(obj, (), "")


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


def set_path(obj: Any, path: tuple[PathKey, ...], value: Any) -> Any:
    """Return ``obj`` with the item at ``path`` replaced (tuples are rebuilt)."""
    if not path:
        return value
    key, rest = path[0], path[1:]
    child = set_path(obj[key], rest, value)
    if isinstance(obj, tuple):
        items = list(obj)
        items[key] = child
        return type(obj)(items) if type(obj) is tuple else type(obj)(*items)
    obj[key] = child
    return obj
