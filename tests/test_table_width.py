"""Tables that fit a terminal (issue 11, item 4): at 80, 100 and 120 columns no line of a table is
wider than the console, no number or name is wrapped (a name is whole or shortened in the middle
with "…"), and hidden columns are said in one note under the table.  Piped output is never fitted.

Every table goes through the real CLI; ``render_table`` is wrapped to record the columns and cells
each command passed and the exact text it wrote, so that the table is checked apart from the
summary lines printed after it.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from rich.cells import cell_len

from conftest import SAMPLES, run_cli, save_checkpoint
from pinit.cli import output

WIDTHS = (80, 100, 120)

LONG_NAMES = [
    "model.embed_tokens.weight",
    *(
        f"model.encoder.layers.{i}.{leaf}"
        for i in (0, 11)
        for leaf in (
            "self_attention.linear_qkv.weight",
            "self_attention.linear_proj.weight",
            "mlp.linear_fc1.weight",
            "input_layernorm.weight",
        )
    ),
    "features.16.conv.1.running_mean",
    "features.16.conv.1.num_batches_tracked",
    "features.0.0.weight",
]


@pytest.fixture(autouse=True)
def _outside_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``check`` reads [tool.pinit.check] from the nearest pyproject.toml: not the repository's."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("wide")
    g = torch.Generator().manual_seed(0)
    a: dict[str, torch.Tensor] = {}
    for n in LONG_NAMES:
        a[n] = torch.randn(64, 32, generator=g) * 0.02 if n.endswith("weight") else torch.zeros(32)
    a["features.16.conv.1.num_batches_tracked"] = torch.tensor(0)
    a["model.encoder.layers.11.mlp.linear_fc1.weight"][0, 0] = float("nan")  # findings for check
    a["model.encoder.layers.0.input_layernorm.weight"] = torch.zeros(64, 32)
    a["model.encoder.layers.11.input_layernorm.weight"] = torch.full((64, 32), 1e-42)  # subnormal
    b = {k: v.clone() for k, v in a.items()}
    b["model.encoder.layers.0.self_attention.linear_qkv.weight"] += 1e-3
    b["model.encoder.layers.11.self_attention.linear_proj.weight"] *= -2.5e-7
    b["model.encoder.layers.0.mlp.linear_fc1.weight"] = torch.randn(64, 33, generator=g)
    b["model.embed_tokens.weight"] = b["model.embed_tokens.weight"].to(torch.bfloat16)
    b["features.16.conv.1.running_mean"] += -8.198e-05
    del b["features.0.0.weight"]
    b["model.decoder.final_layernorm.weight"] = torch.ones(64)
    return {
        "long": save_checkpoint(d / "long.pt", a),
        "long_b": save_checkpoint(d / "long_b.pt", b),
        "cnn": SAMPLES / "uninit_cnn.pt",
    }


def commands(f: dict[str, Path]) -> dict[str, tuple[str, ...]]:
    long, long_b, cnn = (str(f[k]) for k in ("long", "long_b", "cnn"))
    return {
        "inspect-cnn": ("inspect", cnn),
        "inspect-long": ("inspect", long),
        "inspect-hist": ("inspect", long, "--hist"),
        "check": ("check", cnn, long, "--fail-on", "warning"),
        "diff": ("diff", long, long_b),
        "reinit-dry-run": (
            "reinit", long, "--match", "linear", "--scheme", "kaiming_normal", "--dry-run", "--seed", "1",
        ),
    }  # fmt: skip


COMMANDS = list(commands({"long": Path("a"), "long_b": Path("b"), "cnn": Path("c")}))


@dataclass
class Rendered:
    columns: list[output.Col]
    rows: list[list[str]]  # cell texts as passed (before fitting)
    text: str  # what render_table wrote


def render(
    monkeypatch: pytest.MonkeyPatch, width: int | None, args: Sequence[str], terminal: bool = True
) -> list[Rendered]:
    """Run ``pinit ARGS`` with stdout taken for a terminal ``width`` columns wide (``COLUMNS``);
    return each table rendered."""
    tables: list[Rendered] = []
    real = output.render_table

    def recording(columns, rows, title=None, **kw):  # type: ignore[no-untyped-def]
        saved, sys.stdout = sys.stdout, io.StringIO()
        try:
            real(columns, rows, title, **kw)
            text = sys.stdout.getvalue()
        finally:
            sys.stdout = saved
        sys.stdout.write(text)
        cols = [output.as_col(c) for c in columns]
        tables.append(Rendered(cols, [[output.safe_line(t) for t, _ in row] for row in rows], text))

    monkeypatch.setattr(output, "render_table", recording)
    monkeypatch.setattr(output, "stdout_is_terminal", lambda: terminal)
    if width is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", str(width))
    r = run_cli(*args)
    assert r.exit_code in (0, 1), r.stderr
    assert "Traceback" not in r.stderr
    assert tables, r.stdout
    return tables


def header_line(t: Rendered) -> str:
    """The table's header: the line above the rule."""
    lines = t.text.splitlines()
    rule = next(i for i, line in enumerate(lines) if "───" in line)
    return lines[rule - 1]


def shown_headers(t: Rendered) -> list[str]:
    return [h for h in re.split(r" {3,}", header_line(t).strip()) if h]


def tokens(text: str) -> set[str]:
    return set(text.split())


def assert_fits(t: Rendered, width: int) -> None:
    lines = t.text.splitlines()
    for line in lines:
        assert cell_len(line) <= width, (width, line)
    shown = shown_headers(t)
    headers = [c.header for c in t.columns]
    assert set(shown) <= set(headers), shown
    assert [h for h in headers if h in shown] == shown  # in their order
    assert shown[0] == headers[0] or t.columns[0].priority > 0  # the first column kept, when essential
    hidden = [h for h in headers if h not in shown]
    note = " ".join(line.strip() for line in lines)
    if hidden:
        assert f"({', '.join(hidden)} hidden at {width} columns;" in note, t.text
    else:
        assert "hidden at" not in note
    for c in t.columns:
        assert c.priority > 0 or c.header in shown, (c.header, t.text)  # never an essential one
    body = t.text.split("───", 1)[1]
    words = tokens(body)
    for i, c in enumerate(t.columns):
        if c.header not in shown:
            continue
        cells = {row[i] for row in t.rows if row[i]}
        if c.kind == "number":  # every number whole on one line
            for cell in cells:
                assert cell in words, (c.header, cell, t.text)
        elif c.kind == "name":  # whole, or shortened in the middle: never wrapped
            short = [w for w in words if "…" in w]
            for cell in cells:
                assert cell in words or any(
                    len(w) < len(cell) and cell.startswith(w.split("…")[0]) and cell.endswith(w.split("…")[1])
                    for w in short
                ), (c.header, cell, t.text)
        elif c.kind in ("text", "prose"):  # no word split: every word of a cell is a word on a line
            for cell in cells:
                for w in cell.split():
                    assert w in words, (c.header, w, t.text)
    for w in words:  # no fragment of a number such as "-8.198e" or "e-05"
        assert not re.fullmatch(r"[-+]?(\d+\.?\d*e[-+]?|e[-+]?\d+)", w), (w, t.text)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("command", COMMANDS)
def test_tables_fit_the_terminal(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, command: str, width: int
) -> None:
    for t in render(monkeypatch, width, commands(files)[command]):
        assert_fits(t, width)


def test_narrow_inspect_keeps_the_important_columns(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    (t,) = render(monkeypatch, 80, commands(files)["inspect-cnn"])
    shown = shown_headers(t)
    assert shown[:4] == ["name", "shape", "dtype", "std"] and "flags" in shown
    assert "requires_grad" not in shown and "params" not in shown
    (t,) = render(monkeypatch, 120, commands(files)["inspect-cnn"])
    assert {"name", "shape", "dtype", "mean", "std", "min", "max", "flags"} <= set(shown_headers(t))


def test_long_names_keep_their_layer_at_120_columns(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Extra columns (min, max...) give way before a name is cut to fewer than NAME_WANT columns."""
    (t,) = render(monkeypatch, 120, commands(files)["inspect-long"])
    assert "min" not in shown_headers(t)
    body = t.text.split("───", 1)[1]
    assert "model.encoder.layers.11." in body and "model.encoder.layers.0." in body
    assert "features.16.conv.1.running_mean" in body


def test_wide_terminal_shows_everything_whole(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    for command in COMMANDS:
        for t in render(monkeypatch, 1000, commands(files)[command]):
            assert shown_headers(t) == [c.header for c in t.columns]
            assert "…" not in t.text and "hidden at" not in t.text
            assert_fits(t, 1000)


@pytest.mark.parametrize("command", COMMANDS)
def test_piped_output_is_never_fitted(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    """Read by tools: every column and full values, whatever COLUMNS says."""
    for t in render(monkeypatch, 80, commands(files)[command], terminal=False):
        lines = t.text.splitlines()
        head = next(line for line in lines if line.startswith(t.columns[0].header))
        for c in t.columns:
            assert c.header in head
        for row in t.rows:
            for cell in row:
                assert cell.rstrip() in t.text  # a line's trailing spaces are not written
        assert "hidden at" not in t.text


# ------------------------------------------------------------------------------------- helpers


def test_shorten_middle() -> None:
    name = "model.encoder.layers.11.self_attention.linear_qkv.weight"
    assert output.shorten_middle(name, 100) == name
    for w in range(2, len(name)):
        s = output.shorten_middle(name, w)
        assert cell_len(s) <= w and s.count("…") == 1
        head, tail = s.split("…")
        assert name.startswith(head) and name.endswith(tail) and len(tail) >= len(head)
    assert output.shorten_middle("層" * 30, 11).count("…") == 1
    assert cell_len(output.shorten_middle("層" * 30, 11)) <= 11


def test_fit_columns_drops_the_largest_priority_first() -> None:
    Col = output.Col
    cols = [Col("name", "name", 0), Col("a", "number", 1), Col("b", "number", 3), Col("c", "number", 2)]
    rows = [["x" * 60, "1.234e-05", "2.345e-05", "3.456e-05"]]
    assert output.fit_columns(cols, rows, 60).hidden == []  # the name shortened to NAME_MIN
    fit = output.fit_columns(cols, rows, 55)
    assert fit.hidden == [2]  # b: priority 3
    assert output._table_overhead(len(fit.shown)) + sum(fit.widths.values()) == 55
    assert output.fit_columns(cols, rows, 200).hidden == []
    assert output.fit_columns(cols, rows, 20).shown == [0]  # never the essential name
