"""Output modes: rich tables on a terminal, plain text when piped, JSON, CSV, Markdown.

Everything for stdout goes through here; progress and warnings go to stderr.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

SPARK = "▁▂▃▄▅▆▇█"


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def print_json(doc: Any) -> None:
    # Streamed in batches of chunks: json.dumps(indent=...) builds the whole text from
    # millions of small strings first, which doubled the peak memory of a 100,000-tensor report.
    encoder = json.JSONEncoder(indent=2, allow_nan=False, default=_json_default)
    parts: list[str] = []
    for chunk in encoder.iterencode(doc):
        parts.append(chunk)
        if len(parts) >= 65536:
            sys.stdout.write("".join(parts))
            parts.clear()
    parts.append("\n")
    sys.stdout.write("".join(parts))


def _json_default(o: Any) -> Any:
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def fmt_num(v: float | int | None, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}g}"


def fmt_int(n: int) -> str:
    return f"{n:,}"


def fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def fmt_shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def fmt_bool3(v: bool | None) -> str:
    return "—" if v is None else str(v).lower()


def sparkline(counts: Sequence[int] | None) -> str:
    if not counts:
        return ""
    top = max(counts)
    if top == 0:
        return SPARK[0] * len(counts)
    return "".join(" " if c == 0 else SPARK[min(len(SPARK) - 1, (c * len(SPARK) - 1) // top)] for c in counts)


def fmt_value(v: Any) -> str:
    if isinstance(v, list):
        return f"{fmt_num(v[0])}{'+' if not str(v[1]).startswith('-') else ''}{fmt_num(v[1])}j"
    if isinstance(v, str):
        return v
    return fmt_num(v)


Column = tuple[str, str]  # (header, justify: "left" | "right")
Cell = tuple[str, str | None]  # (text, rich style or None)


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_NAMES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def printable(text: str) -> str:
    """``text`` for a human-readable line: control characters written as ``\\n``, ``\\t``,
    ``\\x1b``..., so that a tensor name can neither break a table row nor send escape
    sequences to the terminal."""
    return _CONTROL.sub(lambda m: _CONTROL_NAMES.get(m.group(), f"\\x{ord(m.group()):02x}"), text)


def display_width(text: str) -> int:
    """Terminal columns ``text`` takes: wide (CJK, emoji) characters two, combining marks none."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def render_table(columns: Sequence[Column], rows: Sequence[Sequence[Cell]], title: str | None = None) -> None:
    """A rich table on a terminal, aligned plain text otherwise."""
    rows = [[(printable(text), style) for text, style in row] for row in rows]
    title = printable(title) if title is not None else None
    if stdout_is_terminal():
        from rich import box
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
        for header, justify in columns:
            table.add_column(header, justify=justify, overflow="fold")  # type: ignore[arg-type]
        for row in rows:
            table.add_row(*(Text(text, style=style or "") for text, style in row))
        Console(soft_wrap=False).print(table)
        return
    out = sys.stdout
    if title:
        out.write(title + "\n")
    texts = [[h for h, _ in columns]] + [[t for t, _ in row] for row in rows]
    widths = [max(display_width(r[i]) for r in texts) for i in range(len(columns))]
    for r in texts:
        cells = []
        for i, (_, justify) in enumerate(columns):
            pad = " " * (widths[i] - display_width(r[i]))
            cells.append(pad + r[i] if justify == "right" else r[i] + pad)
        out.write("  ".join(cells).rstrip() + "\n")


def render_markdown(columns: Sequence[Column], rows: Sequence[Sequence[Cell]]) -> None:
    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    out = sys.stdout
    out.write("| " + " | ".join(h for h, _ in columns) + " |\n")
    out.write("|" + "|".join("---:" if j == "right" else "---" for _, j in columns) + "|\n")
    for row in rows:
        out.write("| " + " | ".join(esc(t) for t, _ in row) + " |\n")


def render_csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow(["" if v is None else v for v in row])
    sys.stdout.write(buf.getvalue())


@contextmanager
def progress_bar(
    total_bytes: int, description: str, quiet: bool, count: int = 0
) -> Iterator[Callable[[int], None] | None]:
    """A byte-counting progress bar on stderr, only for a terminal and for long work
    (over 256 MB, or over 5,000 tensors: about a second or more)."""
    if quiet or not sys.stderr.isatty() or (total_bytes < (256 << 20) and count < 5000):
        yield None
        return
    import threading

    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    lock = threading.Lock()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as prog:
        task = prog.add_task(description, total=total_bytes)

        def advance(n: int) -> None:
            with lock:
                prog.advance(task, n)

        yield advance
