"""The non-tensor content of a checkpoint (``inspect --meta``) as an indented tree of text."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pinit.cli import output as out

if TYPE_CHECKING:
    from pinit.meta import Meta

SOURCE_TITLE = {
    "pickle": "non-tensor content",
    "safetensors": "safetensors __metadata__",
    "sharded": "metadata of the index and the shards",
    "none": "non-tensor content",
}


def meta_lines(meta: Meta) -> list[str]:
    """A title line, then one line per node, every value from the file escaped and shortened."""
    from pinit.meta import tree_lines

    title = SOURCE_TITLE.get(meta.source, "non-tensor content")
    if meta.empty:
        if meta.source == "safetensors" or meta.data is None:
            return [f"{title}: none"]
        return [f"{title}: none (the file holds tensors only)"]
    lines = [f"{title}:"]
    for depth, key, text in tree_lines(meta.data):
        head = "  " * (depth + 1) + (f"{out.safe_text(key)}:" if key is not None else "")
        if text is None:
            lines.append(head)
        else:
            lines.append(f"{head} {out.safe_line(text)}" if key is not None else head + out.safe_line(text))
    if meta.cut:
        lines.append(f"shortened: {len(meta.cut)} place{'s' if len(meta.cut) != 1 else ''} (see --format json)")
        lines += [f"  {out.safe_line(c)}" for c in meta.cut[:20]]
    return lines
