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


# --- Text from a file, made safe for a terminal ----------------------------------------------
#
# Tensor names, global names and metadata come from the file, so they may hold escape sequences
# (retitle or clear the terminal), newlines (forge an extra line or workflow command), bidi
# overrides (show text in another order than it is), or megabytes of text.  Every format meant
# for a terminal (tables, plain text, Markdown, GitHub workflow commands, error and warning
# lines) passes such text through safe_text() (one value) or safe_line() (a line or a message
# that may embed values); JSON, CSV and JUnit XML keep the exact value.

NAME_LIMIT = 200
"""Most characters one value from a file (a tensor name, a global) takes in a cell or a line."""
LINE_LIMIT = 2000
"""Most characters of one message, table cell, or error/warning line."""

# Escaped: every control (Cc: C0, DEL, C1), format (Cf: bidi embeddings, overrides and isolates
# U+202A-U+202E and U+2066-U+2069, LRM/RLM, zero-width characters, BOM, soft hyphen, tag
# characters), lone surrogate (Cs: cannot even be encoded to UTF-8) and line/paragraph separator
# (Zl, Zp) character, by the running Python's Unicode database.  Printable ASCII is the fast path.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SUSPECT = re.compile("[^\x20-\x7e]")
_NAMED_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
_escapes: dict[str, str] = {}
# a run without a space, longer than a name; matched only from its start (linear time)
_LONG_RUN = re.compile(f"(?<![^ ])[^ ]{{{NAME_LIMIT + 1},}}")


def _escape_char(c: str) -> str:
    e = _escapes.get(c)
    if e is None:
        if c in _NAMED_ESCAPES:
            e = _NAMED_ESCAPES[c]
        elif unicodedata.category(c) in _ESCAPED_CATEGORIES:
            o = ord(c)
            e = f"\\x{o:02x}" if o <= 0xFF else f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}"
        else:
            e = c
        if len(_escapes) < 65536:
            _escapes[c] = e
    return e


def printable(text: str) -> str:
    """``text`` with every control, format (bidi, zero-width), surrogate and line-separator
    character written as ``\\n``, ``\\t``, ``\\x1b``, ``\\u202e``...: a tensor name can neither
    break a line nor send escape sequences to the terminal.  Does not shorten: see
    :func:`safe_text` and :func:`safe_line`."""
    if not _SUSPECT.search(text):
        return text
    return _SUSPECT.sub(lambda m: _escape_char(m.group()), text)


def _clip(text: str, limit: int, marker: str) -> str:
    """The start and the end of ``text``, escaped, around ``marker``: at most ``limit``
    characters (for a ``limit`` longer than the marker); no escape sequence is cut."""
    budget = max(0, limit - len(marker)) // 2
    head: list[str] = []
    used = 0
    for c in text[:budget]:  # each character escapes to one or more: budget characters suffice
        e = _escape_char(c)
        used += len(e)
        if used > budget:
            break
        head.append(e)
    tail: list[str] = []
    used = 0
    for c in reversed(text[-budget:] if budget else ""):
        e = _escape_char(c)
        used += len(e)
        if used > budget:
            break
        tail.append(e)
    return "".join(head) + marker + "".join(reversed(tail))


def safe_text(text: object, limit: int = NAME_LIMIT) -> str:
    """One value from a file (a tensor name, a global name, a metadata value), ready for a
    terminal: escaped as :func:`printable` does, and at most ``limit`` characters.  A longer value
    keeps its start and end around ``…(N chars, #hash)…``, N its full length and hash a digest of
    the whole value, so that two long names that differ only in the middle still differ."""
    s = str(text)
    if len(s) <= limit:
        e = printable(s)
        if len(e) <= limit:
            return e
    import hashlib

    digest = hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=3).hexdigest()
    return _clip(s, limit, f"…({len(s):,} chars, #{digest})…")


def safe_line(text: object, limit: int = LINE_LIMIT) -> str:
    """A line or message that may embed values from a file (an error, a warning, a flag
    message, a table cell): escaped, each run of more than ``NAME_LIMIT`` characters without a
    space shortened as :func:`safe_text` does, and the whole at most ``limit`` characters (its
    start and end around ``…(N chars)…``).  Never more than one line."""
    s = str(text)
    n = len(s)
    if n > NAME_LIMIT:
        s = _LONG_RUN.sub(lambda m: safe_text(m.group()), s)
    if len(s) <= limit:
        e = printable(s)
        if len(e) <= limit:
            return e
    return _clip(s, limit, f"…({n:,} chars)…")


def display_width(text: str) -> int:
    """Terminal columns ``text`` takes: wide (CJK, emoji) characters two, combining marks none."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def render_table(columns: Sequence[Column], rows: Sequence[Sequence[Cell]], title: str | None = None) -> None:
    """A rich table on a terminal, aligned plain text otherwise.  Every cell and the title
    pass through :func:`safe_line`, and reach rich as ``Text`` (never parsed as markup)."""
    rows = [[(safe_line(text), style) for text, style in row] for row in rows]
    title = safe_line(title) if title is not None else None
    if stdout_is_terminal():
        from rich import box
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(
            title=Text(title, style="table.title") if title is not None else None,  # Text: no markup
            box=box.SIMPLE_HEAD,
            title_justify="left",
            pad_edge=False,
        )
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
    """A Markdown table; cells pass through :func:`safe_line` first."""

    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    out = sys.stdout
    out.write("| " + " | ".join(h for h, _ in columns) + " |\n")
    out.write("|" + "|".join("---:" if j == "right" else "---" for _, j in columns) + "|\n")
    for row in rows:
        out.write("| " + " | ".join(esc(safe_line(t)) for t, _ in row) + " |\n")


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
