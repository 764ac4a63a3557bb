"""Output modes: rich tables on a terminal, plain text when piped, JSON, CSV, Markdown.

Everything for stdout goes through here; progress and warnings go to stderr.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

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


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 tensor``, ``2 tensors``, ``1,000 files`` (``many``: an irregular plural)."""
    return f"{fmt_int(n)} {word if n == 1 else (many or word + 's')}"


def fmt_bytes(n: int) -> str:
    from pinit.dtypes import human_bytes

    return human_bytes(n)


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


ColumnKind = Literal["name", "number", "text", "prose"]


@dataclass(frozen=True)
class Col:
    """One table column, as :func:`render_table` fits it to a terminal.

    ``kind`` says how a cell may be made to fit:

    - ``"number"``: never wrapped or shortened, right-aligned (format it with :func:`fmt_num`);
    - ``"text"``: a short token (shape, dtype, a flag code): never wrapped or shortened;
    - ``"name"``: a tensor name or a path: shortened in the middle with "…" when the table
      would not fit (down to :data:`NAME_MIN` columns), never wrapped;
    - ``"prose"``: a sentence (a message, options): wrapped between words, never inside one.

    ``priority`` 0 is always shown; when even the shortest names do not fit, the column with the
    largest priority goes first (the rightmost of equals), and a dim line under the table says
    which columns were hidden.
    """

    header: str
    kind: ColumnKind = "text"
    priority: int = 0
    justify: str | None = None  # default: "right" for numbers, "left" otherwise
    min_width: int | None = None  # a name's or prose's own minimum, for NAME_MIN or PROSE_MIN

    @property
    def align(self) -> str:
        return self.justify or ("right" if self.kind == "number" else "left")


Column = Col | tuple[str, str]  # a Col, or the older (header, justify: "left" | "right")
Cell = tuple[str, str | None]  # (text, rich style or None)


def as_col(c: Column) -> Col:
    """A (header, justify) pair as a never-hidden column that wraps between words, as before."""
    if isinstance(c, Col):
        return c
    header, justify = c
    return Col(header, "prose", 0, justify)


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


NAME_MIN = 20
"""Fewest columns a shortened name keeps (or its full width, when shorter)."""
NAME_WANT = 48
"""Columns a name keeps (or its full width) before an extra column is shown: one of priority
:data:`EXTRA_PRIORITY` or more.  48 keeps ``model.encoder.layers.11`` of a transformer's names."""
EXTRA_PRIORITY = 6
"""Columns of this priority or more (inspect's min, max, params...) are shown only while every
name keeps :data:`NAME_WANT` columns: long names are worth more than extra numbers."""
PROSE_MIN = 24
"""Fewest columns a wrapped ``prose`` column keeps (or its full width, when shorter)."""
WORD_MAX = 40
"""A ``prose`` column is kept at least as wide as its longest word, up to this many columns."""


def _cell_width(text: str) -> int:
    from rich.cells import cell_len

    return cell_len(text)


def shorten_middle(text: str, width: int) -> str:
    """``text`` in at most ``width`` terminal columns: its start and its end around "…", e.g.
    ``model.laye…running_mean`` (the end gets the odd column)."""
    from rich.cells import get_character_cell_size

    if _cell_width(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    budget = width - 1
    head_budget = budget // 2
    tail_budget = budget - head_budget
    head: list[str] = []
    used = 0
    for c in text:
        w = get_character_cell_size(c)
        if used + w > head_budget:
            break
        head.append(c)
        used += w
    tail_budget += head_budget - used  # a wide character that did not fit leaves room at the end
    tail: list[str] = []
    used = 0
    for c in reversed(text):
        w = get_character_cell_size(c)
        if used + w > tail_budget:
            break
        tail.append(c)
        used += w
    return "".join(head) + "…" + "".join(reversed(tail))


def _table_overhead(n: int) -> int:
    """Columns that the rich table itself takes around ``n`` columns of cells: an edge each side
    (box.SIMPLE_HEAD), one padding each side of a cell but the outer ones (pad_edge=False), and
    one divider between cells."""
    return 3 * n - 1 if n else 0


@dataclass
class _Fit:
    shown: list[int]  # indices of the columns shown, in their order
    widths: dict[int, int]  # index -> width in terminal columns
    hidden: list[int]  # indices of the columns hidden, in their order


def fit_columns(columns: Sequence[Col], texts: Sequence[Sequence[str]], width: int) -> _Fit:
    """Widths for ``columns`` (rows of cell ``texts``) in a table ``width`` terminal columns wide.

    Numbers and text keep their full width; names and prose shrink toward their minimum
    (:data:`NAME_MIN`, :data:`PROSE_MIN`, the longest word of a prose column); when even that does
    not fit, columns are hidden, the largest priority first, never one of priority 0, and one of
    :data:`EXTRA_PRIORITY` or more as soon as a name would get fewer than :data:`NAME_WANT`
    columns.  What is left over goes to the names and prose columns, an equal share each, up to
    their full width."""
    n = len(columns)
    full: list[int] = []
    least: list[int] = []
    word: list[int] = []  # a prose column's longest word, up to WORD_MAX
    for i, col in enumerate(columns):
        head = _cell_width(col.header)
        cells = [_cell_width(r[i]) for r in texts]
        natural = max([head, *cells])
        longest = min(WORD_MAX, max((_cell_width(w) for r in texts for w in r[i].split()), default=0))
        word.append(longest)
        if col.kind == "name":
            low = min(natural, max(head, NAME_MIN if col.min_width is None else col.min_width))
        elif col.kind == "prose":
            low = min(natural, max(head, PROSE_MIN if col.min_width is None else col.min_width, longest))
        else:
            low = natural
        full.append(natural)
        least.append(low)
    wanted = [max(low, min(full[i], NAME_WANT)) if columns[i].kind == "name" else low for i, low in enumerate(least)]

    def room(shown: list[int]) -> int:
        extra = any(columns[i].priority >= EXTRA_PRIORITY for i in shown)
        need = wanted if extra else least
        return width - _table_overhead(len(shown)) - sum(need[i] for i in shown)

    # columns join in priority order (the leftmost of equals first) while they fit; priority 0 always
    shown = [i for i in range(n) if columns[i].priority <= 0]
    for i in sorted((i for i in range(n) if columns[i].priority > 0), key=lambda i: (columns[i].priority, i)):
        if room(sorted([*shown, i])) < 0:
            break
        shown = sorted([*shown, i])
    need = wanted if any(columns[i].priority >= EXTRA_PRIORITY for i in shown) else least
    widths = {i: need[i] for i in shown}
    spare = width - _table_overhead(len(shown)) - sum(widths.values())
    if spare < 0:  # only essential columns left, and still too wide: names and prose give up
        # their minimum, the widest first, down to their header (and a prose column's longest word)
        floor = {i: max(_cell_width(columns[i].header), 8 if columns[i].kind == "name" else word[i]) for i in shown}
        while spare < 0:
            slack = [i for i in shown if columns[i].kind in ("name", "prose") and widths[i] > floor[i]]
            if not slack:
                break
            widest = max(slack, key=lambda i: widths[i] - floor[i])
            widths[widest] -= 1
            spare += 1
    # what is left: names up to NAME_WANT first (a wrapped sentence reads better than a cut name),
    # then names and prose alike, an equal share each, up to their full width
    for cap in (wanted, full):
        growing = [i for i in shown if widths[i] < cap[i]]
        while spare > 0 and growing:
            share = max(1, spare // len(growing))
            for i in list(growing):
                if spare <= 0:
                    break
                add = min(share, cap[i] - widths[i], spare)
                widths[i] += add
                spare -= add
                if widths[i] >= cap[i]:
                    growing.remove(i)
    return _Fit(shown, widths, [i for i in range(n) if i not in shown])


def render_table(
    columns: Sequence[Column],
    rows: Sequence[Sequence[Cell]],
    title: str | None = None,
    hint: str = "widen the terminal or use --format json",
) -> None:
    """A rich table on a terminal, aligned plain text otherwise.  Every cell and the title
    pass through :func:`safe_line`, and reach rich as ``Text`` (never parsed as markup).

    On a terminal the table fits the console width (the terminal's, or ``COLUMNS`` when set):
    see :class:`Col` and :func:`fit_columns`.  Nothing is ever wrapped inside a word or a number:
    names are shortened in the middle, low-priority columns hidden (said in one dim line under
    the table, with ``hint``).  Piped output (not a terminal) is never fitted, whatever
    ``COLUMNS`` says: every column and full values, aligned, for grep, awk and logs."""
    cols = [as_col(c) for c in columns]
    rows = [[(safe_line(text), style) for text, style in row] for row in rows]
    title = safe_line(title) if title is not None else None
    if stdout_is_terminal():
        _render_rich(cols, rows, title, hint)
        return
    out = sys.stdout
    if title:
        out.write(title + "\n")
    texts = [[c.header for c in cols]] + [[t for t, _ in row] for row in rows]
    widths = [max(display_width(r[i]) for r in texts) for i in range(len(cols))]
    for r in texts:
        cells = []
        for i, col in enumerate(cols):
            pad = " " * (widths[i] - display_width(r[i]))
            cells.append(pad + r[i] if col.align == "right" else r[i] + pad)
        out.write("  ".join(cells).rstrip() + "\n")


def _render_rich(cols: list[Col], rows: list[list[Cell]], title: str | None, hint: str) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(soft_wrap=False)
    width = console.width
    if title is not None:  # its own line, shortened rather than wrapped at the table's width
        console.print(Text(shorten_middle(title, width), style="table.title", no_wrap=True))
    fit = fit_columns(cols, [[t for t, _ in row] for row in rows], width)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for i in fit.shown:
        col, w = cols[i], fit.widths[i]
        if col.kind == "prose":
            table.add_column(col.header, justify=col.align, width=w, overflow="fold")  # type: ignore[arg-type]
        else:
            table.add_column(col.header, justify=col.align, width=w, no_wrap=True, overflow="ellipsis")  # type: ignore[arg-type]
    for row in rows:
        cells = []
        for i in fit.shown:
            text, style = row[i]
            if cols[i].kind == "name":
                text = shorten_middle(text, fit.widths[i])
            cells.append(Text(text, style=style or ""))
        table.add_row(*cells)
    console.print(table)
    if fit.hidden:
        hidden = ", ".join(cols[i].header for i in fit.hidden)
        console.print(Text(f"({hidden} hidden at {width} columns; {hint})", style="dim"))


def render_markdown(columns: Sequence[Column], rows: Sequence[Sequence[Cell]]) -> None:
    """A Markdown table; cells pass through :func:`safe_line` first."""

    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    cols = [as_col(c) for c in columns]
    out = sys.stdout
    out.write("| " + " | ".join(c.header for c in cols) + " |\n")
    out.write("|" + "|".join("---:" if c.align == "right" else "---" for c in cols) + "|\n")
    for row in rows:
        out.write("| " + " | ".join(esc(safe_line(t)) for t, _ in row) + " |\n")


def render_csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow(["" if v is None else v for v in row])
    sys.stdout.write(buf.getvalue())


PROGRESS_MIN_BYTES = 256 << 20
"""Work (bytes) from which a progress bar is shown: about a second.  ``PINIT_PROGRESS_MIN_BYTES``
overrides it (tests lower it to see a bar on small files)."""
PROGRESS_MIN_COUNT = 5000
"""Tensors from which a progress bar is shown, whatever their size."""


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def _progress_min_bytes() -> int:
    try:
        return int(os.environ.get("PINIT_PROGRESS_MIN_BYTES", PROGRESS_MIN_BYTES))
    except ValueError:
        return PROGRESS_MIN_BYTES


@contextmanager
def progress_bar(
    total_bytes: int, description: str, quiet: bool, count: int = 0
) -> Iterator[Callable[[int], None] | None]:
    """A byte-counting progress bar on stderr, only for a terminal, not with ``--quiet``, and
    for long work (over 256 MB, or over 5,000 tensors: about a second or more); gone when done."""
    if (
        quiet
        or not stderr_is_terminal()
        or (total_bytes < max(1, _progress_min_bytes()) and count < PROGRESS_MIN_COUNT)
    ):
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
        console=Console(stderr=True, force_terminal=True),  # a terminal: checked above
        transient=True,
    ) as prog:
        task = prog.add_task(description, total=total_bytes)

        def advance(n: int) -> None:
            with lock:
                prog.advance(task, n)

        yield advance
