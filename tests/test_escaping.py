"""Text from a file in terminal output (SPEC section 7): control and format characters escaped,
long values shortened, rich markup printed literally, in every format meant for a terminal;
JSON keeps the exact value.  Everything goes through the real CLI except the last few tests of
the helper itself.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import Result, assert_one_error_line, run_cli, save_checkpoint
from pinit.cli import output

EVIL = "\x1b]0;pwned\x07\x1b[2J" + "w"  # retitles the terminal, then clears it
EVIL_SHOWN = "\\x1b]0;pwned\\x07\\x1b[2Jw"
BIDI = "admin\u202egnp.\u2066x\u2069\u200by"  # right-to-left override, isolate, zero-width space
C1 = "csi\x9b2J"  # the one-byte CSI of C1: clears some terminals too
MARKUP = "[bold red]x[/]"
LINK = "[link=https://example.com]y[/link]"
RAW = ("\x1b", "\x07", "\x9b", "\u202e", "\u2066", "\u2069", "\u200b")

BIG = 5_000_000  # characters of the long names
LINE_MAX = 10_000  # bytes of any output line when names are megabytes long
ERROR_MAX = 2000  # characters of an error line


@pytest.fixture(autouse=True)
def _outside_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``check`` reads [tool.pinit.check] from the nearest pyproject.toml: not the repository's."""
    monkeypatch.chdir(tmp_path)


def assert_no_raw(r: Result) -> None:
    for raw in RAW:
        assert raw not in r.stdout, (raw, r.stdout)
        assert raw not in r.stderr, (raw, r.stderr)


@pytest.fixture(scope="module")
def evil(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("evil")
    nan = torch.full((2, 2), float("nan"))  # every tensor has a finding (nan, inf, constant) for check
    tensors = {
        EVIL: nan,
        BIDI: nan.clone(),
        C1: torch.full((3,), float("inf")),
        MARKUP: torch.full((5,), float("nan")),
        LINK: torch.ones(2, 2),
    }
    a = save_checkpoint(d / "a.safetensors", tensors)
    b = save_checkpoint(d / "b.safetensors", {k: torch.nan_to_num(v) + 1 for k, v in tensors.items()})
    pt = save_checkpoint(d / "a.pt", tensors)
    one_d = save_checkpoint(d / "one_d.safetensors", {EVIL: torch.ones(3)})
    return {"a": a, "b": b, "pt": pt, "one_d": one_d}


def terminal_commands(files: dict[str, Path]) -> dict[str, tuple[str, ...]]:
    a, b = str(files["a"]), str(files["b"])
    return {
        "inspect": ("inspect", a),
        "inspect-markdown": ("inspect", a, "--format", "markdown"),
        "inspect-no-stats": ("inspect", a, "--no-stats"),
        "check": ("check", a, "--fail-on", "warning"),
        "check-github": ("check", a, "--fail-on", "warning", "--format", "github"),
        "diff": ("diff", a, b),
        "reinit-dry-run": ("reinit", a, "--match", ".", "--scheme", "zeros", "--dry-run", "--seed", "1"),
    }


COMMANDS = list(terminal_commands({"a": Path("a"), "b": Path("b")}))


# ------------------------------------------------------------------------------- control characters


@pytest.mark.parametrize("command", COMMANDS)
def test_escape_sequences_in_names_are_escaped(evil: dict[str, Path], command: str) -> None:
    r = run_cli(*terminal_commands(evil)[command])
    assert r.exit_code in (0, 1), r.stderr
    assert_no_raw(r)
    shown = EVIL_SHOWN.replace("\\", "\\\\") if command == "inspect-markdown" else EVIL_SHOWN
    assert shown in r.stdout, r.stdout


@pytest.mark.parametrize("command", ["inspect", "inspect-markdown", "check", "check-github", "diff"])
def test_bidi_and_c1_characters_are_escaped(evil: dict[str, Path], command: str) -> None:
    r = run_cli(*terminal_commands(evil)[command])
    assert_no_raw(r)
    text = r.stdout.replace("\\\\", "\\")  # Markdown doubles backslashes
    assert "admin\\u202egnp.\\u2066x\\u2069\\u200by" in text, r.stdout
    assert "csi\\x9b2J" in text, r.stdout


def test_torch_pickle_names_are_escaped(evil: dict[str, Path]) -> None:
    r = run_cli("inspect", evil["pt"])
    assert r.exit_code == 0, r.stderr
    assert_no_raw(r)
    assert EVIL_SHOWN in r.stdout


def test_error_line_naming_a_tensor_is_escaped(evil: dict[str, Path]) -> None:
    r = run_cli("reinit", evil["one_d"], "--match", "pwned", "--scheme", "eye")
    assert_one_error_line(r)
    assert_no_raw(r)
    assert EVIL_SHOWN in r.stderr


def test_error_line_for_a_path_with_a_newline_stays_one_line(tmp_path: Path) -> None:
    r = run_cli("inspect", tmp_path / "no\nsuch\x1b[2J.pt")
    assert_one_error_line(r)
    assert_no_raw(r)
    assert "no\\nsuch\\x1b[2J.pt" in r.stderr


def test_json_keeps_the_exact_names(evil: dict[str, Path]) -> None:
    names = {t["name"] for t in run_cli("inspect", evil["a"], "--format", "json").json()["tensors"]}
    assert names == {EVIL, BIDI, C1, MARKUP, LINK}
    doc = run_cli("check", evil["a"], "--format", "json").json()
    assert {f["tensor"] for f in doc["files"][0]["findings"]} >= {EVIL, BIDI}


# ------------------------------------------------------------------------ GitHub workflow commands


def parse_workflow_command(line: str) -> tuple[str, dict[str, str], str]:
    """What the Actions runner reads from a line (its ActionCommand.TryParseV2): the command,
    its properties and its data; unescaped as the runner does."""
    assert line.startswith("::"), line
    end = line.index("::", 2)
    info, data = line[2:end], line[end + 2 :]
    command, _, props = info.partition(" ")
    properties = {}
    for prop in filter(None, props.split(",")):
        key, _, value = prop.partition("=")
        properties[key] = value.replace("%3A", ":").replace("%2C", ",").replace("%0D", "\r").replace("%0A", "\n")
        properties[key] = properties[key].replace("%25", "%")
    return command, properties, data.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")


def test_github_format_cannot_be_injected(tmp_path: Path) -> None:
    names = [
        "a\n::error file=x.py::injected",
        "b\r::warning::injected",
        "c\x1b[2J::error::x",
        "d::error title=t,file=y::z",
        "e%0A::error::percent",
        "f,title=forged",
        "g\u2028::error::ls",
    ]
    path = save_checkpoint(tmp_path / "m.safetensors", {n: torch.full((2,), float("nan")) for n in names})
    r = run_cli("check", path, "--format", "github")
    assert r.exit_code == 1, r.stderr
    assert_no_raw(r)
    lines = r.stdout.splitlines()
    assert len(lines) == len(names) + 1, r.stdout  # one command per finding, and the summary
    assert lines[-1].startswith("pinit check:")
    seen = set()
    for line in lines[:-1]:
        command, props, data = parse_workflow_command(line)
        assert command == "error", line
        assert set(props) == {"file", "title"}, line
        assert props["file"] == str(path), line
        assert "\n" not in data and "\r" not in data and "\x1b" not in data, line
        seen.add(data.split(": nan", 1)[0][0])
    assert seen == {n[0] for n in names}


# ------------------------------------------------------------------------------------- rich markup


@pytest.mark.parametrize("command", ["inspect", "check", "diff", "reinit-dry-run"])
def test_rich_markup_is_printed_literally_on_a_terminal(
    evil: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.setattr(output, "stdout_is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "1000")  # no folding of the name column
    folder = tmp_path / "[red]d[blink]"  # the title (a path) is not markup either
    folder.mkdir()
    files = {k: folder / v.name for k, v in evil.items()}
    for k, v in evil.items():
        files[k].write_bytes(v.read_bytes())
    r = run_cli(*terminal_commands(files)[command])
    assert r.exit_code in (0, 1), r.stderr
    assert "Traceback" not in r.stderr
    for raw in ("\x07", "\x1b]", "\x1b[2J", "\u202e"):  # rich may colour; nothing else
        assert raw not in r.stdout
    assert MARKUP in r.stdout and LINK in r.stdout, r.stdout
    assert str(folder) in r.stdout  # the title, or check's file column
    assert EVIL_SHOWN in r.stdout


def test_rich_markup_is_printed_literally_in_plain_text(evil: dict[str, Path]) -> None:
    r = run_cli("inspect", evil["a"])
    assert MARKUP in r.stdout and LINK in r.stdout


# --------------------------------------------------------------------------------- long names


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    """Two names of 5,000,000 characters that differ only in the middle, and a short one."""
    d = tmp_path_factory.mktemp("big")
    half = "n" * (BIG // 2)
    first, second = half + "A" + half, half + "B" + half
    a = d / "a.safetensors"
    b = d / "b.safetensors"
    save_file({first: torch.full((4,), float("nan")), second: torch.ones(4), "short": torch.ones(2, 2)}, str(a))
    save_file({first: torch.zeros(4), second: torch.ones(4) * 2, "short": torch.ones(2, 2)}, str(b))
    return {"a": a, "b": b, "first": first, "second": second}


def lines_of(r: Result) -> Iterator[str]:
    yield from r.stdout.splitlines()
    yield from r.stderr.splitlines()


@pytest.mark.parametrize("command", COMMANDS)
def test_long_names_give_bounded_lines(big: dict[str, Path | str], command: str) -> None:
    r = run_cli(*terminal_commands(big)[command])  # type: ignore[arg-type]
    assert r.exit_code in (0, 1), r.stderr[:2000]
    assert len(r.stdout) < 20 * LINE_MAX
    for line in lines_of(r):
        assert len(line.encode()) < LINE_MAX, line[:300]
    assert f"…({BIG + 1:,} chars" in r.stdout, r.stdout[:2000]
    assert "n" * 50 in r.stdout  # the start of the name is shown


def test_two_long_names_stay_distinguishable(big: dict[str, Path | str]) -> None:
    r = run_cli("inspect", big["a"], "--no-stats")
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("nnn")]
    assert len(rows) == 2 and rows[0] != rows[1], rows


def test_long_name_error_line_is_bounded(big: dict[str, Path | str]) -> None:
    r = run_cli("reinit", big["a"], "--match", "^n", "--scheme", "eye")  # eye takes 2-D tensors only
    assert_one_error_line(r)
    line = r.stderr.strip()
    assert len(line) < ERROR_MAX, len(line)
    assert f"…({BIG + 1:,} chars" in line
    assert "eye" in line and "nothing was written" in line  # the end of the message survives


def test_json_keeps_the_full_long_names(big: dict[str, Path | str]) -> None:
    doc = run_cli("inspect", big["a"], "--format", "json", "--no-stats").json()
    assert [t["name"] for t in doc["tensors"]] == [big["first"], big["second"], "short"]
    doc = run_cli("check", big["a"], "--format", "json").json()
    assert doc["files"][0]["findings"][0]["tensor"] == big["first"]


def test_junit_keeps_the_full_long_name(big: dict[str, Path | str]) -> None:
    r = run_cli("check", big["a"], "--format", "junit")
    assert r.exit_code == 1
    assert str(big["first"]) in r.stdout


# ------------------------------------------------------------------------------------ the helper


def test_every_control_format_surrogate_and_separator_character_is_escaped() -> None:
    escaped = {"Cc", "Cf", "Cs", "Zl", "Zp"}  # C0, DEL, C1, bidi and zero-width, surrogates, U+2028/9
    named = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
    everything = "".join(map(chr, range(0x110000)))
    expected = "".join(
        named.get(c) or (f"\\x{o:02x}" if o <= 0xFF else f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}")
        if unicodedata.category(c) in escaped
        else c
        for o, c in enumerate(everything)
    )
    assert output.printable(everything) == expected
    for c in ("\x1b", "\x7f", "\x85", "\x9b", "\u061c", "\u200e", "\u202a", "\u202e", "\u2066", "\u2069", "\ufeff"):
        assert c not in expected
    for c in ("é", "中", "😀", "\u0301", "\u00a0", "Ω"):  # letters, wide, emoji, combining, spaces stay
        assert c in expected


def test_safe_text_shortens_to_the_limit_and_is_idempotent() -> None:
    for text in ("x" * 201, "\x1b" * 300, "中" * 1000, "a" * 10**6, "ab\u202e" * 100):
        shown = output.safe_text(text)
        assert len(shown) <= output.NAME_LIMIT, shown
        assert f"({len(text):,} chars, #" in shown
        assert output.safe_text(shown) == shown
        assert output.safe_line(shown) == shown
    assert output.safe_text("x" * 200) == "x" * 200
    assert output.safe_text("\\x1b") == "\\x1b"  # already-escaped text is left alone


def test_safe_line_shortens_each_long_run_and_the_whole_line() -> None:
    line = output.safe_line("cannot: " + "n" * 10**6 + " (shape [4]); nothing was written")
    assert line.startswith("cannot: nnn") and line.endswith(" (shape [4]); nothing was written")
    assert len(line) <= output.NAME_LIMIT + 50
    many = output.safe_line("a b " * 10**6)
    assert len(many) <= output.LINE_LIMIT and "(4,000,000 chars)" in many
    assert "\n" not in output.safe_line("a\nb\rc\u2028d\x85e")


def test_error_and_warning_lines_are_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    from pinit.cli.errors import error_line, warn

    assert len(error_line(("x" * 150 + " ") * 100_000)) <= 2000
    warn("\x1b[2J" + "y" * 10**6)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and len(err) <= 2001
    assert json.dumps(error_line("a\x00b")) == '"error: a\\\\x00b"'
