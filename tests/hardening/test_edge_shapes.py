"""Edge shapes and edge names through every command and output format.

- 100,000 tiny tensors in one safetensors file: ``inspect`` lists them all with bounded memory
  and time, and shows a progress bar on stderr only when stderr is a terminal (SPEC section 8);
- empty tensors, zero-length dimensions and 0-d scalars, in safetensors and torch files:
  ``inspect`` (every format), ``check``, ``diff`` and ``reinit`` all work;
- names with unicode, spaces, dots, quotes, backslashes, commas, pipes, control characters
  and regex metacharacters survive ``--match re.escape(name)`` and every output format.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
import time
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import Result, assert_one_error_line, run_cli

PINIT = [sys.executable, "-m", "pinit"]


def ok(r: Result, code: int = 0) -> Result:
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    return r


def save(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    if path.suffix == ".safetensors":
        save_file(tensors, str(path))
    else:
        torch.save(tensors, path)
    return path


def load(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        with safe_open(os.fspath(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return torch.load(path, weights_only=True)


# ---------------------------------------------------------------------------
# 100,000 tiny tensors

N_TINY = 100_000
# i % 10 in 0..7: a distinct 1-D [2] tensor; 8: one of 10,000 equal [1, 2] tensors (one duplicate
# group); 9: a [1, 2] tensor equal to exactly one other (5,000 duplicate pairs).
TINY_WARNINGS = 20_000


def write_tiny(path: Path) -> None:
    """The safetensors file written directly (header JSON + one float32 buffer): no 100k torch tensors."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    values = np.empty((N_TINY, 2), dtype=np.float32)
    i = np.arange(N_TINY)
    kind = i % 10
    values[:, 0] = i + 0.5
    values[:, 1] = -(i + 0.5)
    values[kind == 8] = (7.5, -7.5)
    pair = 100_000 + (i // 20)  # two consecutive kind-9 tensors share i // 20
    values[kind == 9, 0] = pair[kind == 9] + 0.25
    values[kind == 9, 1] = -(pair[kind == 9] + 0.25)
    for k in range(N_TINY):
        header[f"blk.{k}.w"] = {
            "dtype": "F32",
            "shape": [2] if kind[k] < 8 else [1, 2],
            "data_offsets": [8 * k, 8 * k + 8],
        }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + values.tobytes())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("tiny")
    path = folder / "many.safetensors"
    write_tiny(path)
    yield path
    shutil.rmtree(folder, ignore_errors=True)


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TTY_INTERACTIVE", "TTY_COMPATIBLE", "PINIT_DEBUG")}
    env["TERM"] = "xterm-256color"
    return env


def run_measured(args: list[str], stdout: Any, stderr_tty: bool) -> tuple[int, float, int, bytes]:
    """Run pinit with stdout to ``stdout`` and stderr to a pseudo-terminal or a pipe.

    Returns (exit code, seconds, peak RSS in MiB, everything written on stderr)."""
    master = slave = -1
    if stderr_tty:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    start = time.monotonic()
    p = subprocess.Popen(
        [*PINIT, *args],
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=slave if stderr_tty else subprocess.PIPE,
        env=child_env(),
    )
    err = b""
    if stderr_tty:
        os.close(slave)
        while True:
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            err += chunk
        os.close(master)
    else:
        assert p.stderr is not None
        err = p.stderr.read()
        p.stderr.close()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, time.monotonic() - start, usage.ru_maxrss // 1024, err


BAR_MARKS = (b"statistics", "━".encode())


# every tenth tensor: 10,000 of the 100,000, still far more than a bar needs (work over a second)
SUBSET = r"^blk\.\d*0\.w$"


@pytest.fixture(scope="module")
def tiny_runs(tiny: Path) -> dict[str, tuple[int, float, int, bytes]]:
    """Runs of ``inspect`` over the 100,000 tensors, side by side (each measured on its own):

    - ``json``: all of them, stdout to a file, stderr a pseudo-terminal;
    - over the 10,000-tensor ``SUBSET``: ``tty`` (stderr a pseudo-terminal), ``piped`` (stderr
      a pipe) and ``quiet`` (a pseudo-terminal, ``--quiet``)."""
    out = tiny.parent / "out.json"
    args = ["inspect", os.fspath(tiny)]
    subset = [*args, "--match", SUBSET, "--format", "csv"]
    with out.open("wb") as f, ThreadPoolExecutor(4) as pool:
        futures = {
            "json": pool.submit(run_measured, [*args, "--format", "json"], f, True),
            "tty": pool.submit(run_measured, subset, subprocess.DEVNULL, True),
            "piped": pool.submit(run_measured, subset, subprocess.DEVNULL, False),
            "quiet": pool.submit(run_measured, [*subset, "--quiet"], subprocess.DEVNULL, True),
        }
        return {k: v.result() for k, v in futures.items()}


@pytest.mark.slow
def test_100k_tiny_tensors_inspect_json_bounded_and_a_bar_on_a_terminal(
    tiny: Path, tiny_runs: dict[str, tuple[int, float, int, bytes]]
) -> None:
    code, seconds, rss_mib, err = tiny_runs["json"]
    assert code == 0, err[-2000:]
    assert seconds < 60, seconds
    assert rss_mib < 600, rss_mib
    # a progress bar on the terminal (stderr), none of it in the JSON (stdout)
    assert all(m in err for m in BAR_MARKS), err[:500]
    doc = json.loads((tiny.parent / "out.json").read_bytes())
    tensors = doc["tensors"]
    assert len(tensors) == N_TINY
    assert [t["name"] for t in tensors[:3]] == ["blk.0.w", "blk.1.w", "blk.2.w"]
    assert doc["summary"] == {
        "tensors": N_TINY,
        "parameters": 2 * N_TINY,
        "bytes": 8 * N_TINY,
        "by_dtype": {"float32": 2 * N_TINY},
        "errors": 0,
        "warnings": TINY_WARNINGS,
        "tied": [],
        "coverage": {"tensors_found": N_TINY, "tensors_read": N_TINY, "uninterpreted": []},
    }
    t5 = tensors[5]
    assert t5["stats"]["mean"] == 0.0 and t5["stats"]["max"] == 5.5 and t5["flags"] == []
    # duplicates: one group of 10,000 and 5,000 pairs; each message stays short
    big = tensors[8]["flags"]
    assert [f["code"] for f in big] == ["duplicate"]
    assert big[0]["message"].endswith("and 9,994 more (separate storage)"), big[0]["message"]
    assert tensors[9]["flags"][0]["message"] == "same bytes as blk.19.w (separate storage)"
    assert max(len(f["message"]) for t in tensors for f in t["flags"]) < 200


@pytest.mark.slow
def test_100k_tiny_tensors_progress_only_on_a_terminal_and_not_with_quiet(
    tiny_runs: dict[str, tuple[int, float, int, bytes]],
) -> None:
    """The same work (10,000 tensors): a bar on a terminal; nothing on stderr when it is a
    pipe, or a terminal with --quiet."""
    for how in ("tty", "piped", "quiet"):
        code, seconds, _, err = tiny_runs[how]
        assert code == 0, (how, err[-2000:])
        assert seconds < 60, (how, seconds)
        if how == "tty":
            assert all(m in err for m in BAR_MARKS), err[:500]
        else:
            assert err == b"", (how, err[:500])


# ---------------------------------------------------------------------------
# empty tensors, zero-length dimensions, 0-d scalars


def empties() -> dict[str, torch.Tensor]:
    return {
        "empty.weight": torch.empty(0),
        "rows.weight": torch.empty(0, 4),
        "mid.weight": torch.empty(3, 0, 2),
        "mid.bias": torch.tensor([0.5, -1.0, 2.0]),
        "scale": torch.tensor(2.5),
        "count": torch.tensor(7),
        "half": torch.empty(0, 3, dtype=torch.float16),
        "ok.weight": torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.25, -4.0]]),
    }


EMPTY_NAMES = [n for n, t in empties().items() if t.numel() == 0]
SCHEME_ARGS = {
    "zeros": [],
    "normal": ["--std", "0.5"],
    "uniform": ["--a", "-1", "--b", "1"],
    "trunc_normal": [],
    "constant": ["--value", "3"],
    "ones": [],
}
SHAPED_SCHEMES = {  # scheme: (args, the empty tensors it takes)
    "eye": ([], ["rows.weight", "half"]),
    "dirac": ([], ["mid.weight"]),
    "sparse": (["--sparsity", "0.5"], ["rows.weight", "half"]),
    "orthogonal": ([], ["rows.weight", "mid.weight", "half"]),
    "xavier_uniform": ([], ["rows.weight", "mid.weight", "half"]),
    "xavier_normal": ([], ["rows.weight", "mid.weight", "half"]),
    "kaiming_uniform": ([], ["rows.weight", "mid.weight", "half"]),
    "kaiming_normal": (["--mode", "fan_out"], ["rows.weight", "mid.weight", "half"]),
}


@pytest.mark.parametrize("ext", [".safetensors", ".pt"])
def test_empty_and_scalar_tensors_inspect_every_format(tmp_path: Path, ext: str) -> None:
    src = save(tmp_path / f"e{ext}", empties())
    doc = ok(run_cli("inspect", src, "--format", "json", "--values", "3", "--hist")).json()
    by = {t["name"]: t for t in doc["tensors"]}
    assert set(by) == set(empties())
    for name in EMPTY_NAMES:
        t = by[name]
        assert t["numel"] == 0 and t["nbytes"] == 0 and t["values"] == []
        # 4 of 7 floating tensors empty: under two thirds and fewer than 8, so each is an `empty`
        # warning, not the ZeRO-3 error (SPEC 4)
        shape = t["shape"]
        assert t["flags"] == [{"code": "empty", "severity": "warning", "message": f"shape {shape}: 0 elements"}]
        st = t["stats"]
        assert (st["mean"], st["std"], st["min"], st["max"], st["abs_max"]) == (None,) * 5, (name, st)
        assert (st["zeros"], st["nan"], st["inf"], st["subnormal"]) == (0, 0, 0, 0), (name, st)
    assert by["rows.weight"]["shape"] == [0, 4] and by["mid.weight"]["shape"] == [3, 0, 2]
    scale = by["scale"]
    assert scale["shape"] == [] and scale["numel"] == 1 and scale["values"] == [2.5]
    assert (scale["stats"]["mean"], scale["stats"]["min"], scale["stats"]["max"]) == (2.5, 2.5, 2.5)
    assert scale["stats"]["std"] is None
    count = by["count"]
    assert count["values"] == [7] and (count["stats"]["min"], count["stats"]["max"]) == (7, 7)
    assert doc["summary"]["tensors"] == 8 and doc["summary"]["parameters"] == 11
    assert doc["summary"]["errors"] == 0 and doc["summary"]["warnings"] == len(EMPTY_NAMES)
    assert all(by[n]["flags"] == [] for n in by if n not in EMPTY_NAMES)
    # --no-stats: stats null everywhere
    nostats = ok(run_cli("inspect", src, "--no-stats", "--format", "json")).json()
    assert all(t["stats"] is None for t in nostats["tensors"])
    # csv, parsed back
    rows = list(csv.DictReader(io.StringIO(ok(run_cli("inspect", src, "--format", "csv")).stdout)))
    assert {r["name"]: r["shape"] for r in rows} == {
        "empty.weight": "0",
        "rows.weight": "0x4",
        "mid.weight": "3x0x2",
        "mid.bias": "3",
        "scale": "",
        "count": "",
        "half": "0x3",
        "ok.weight": "2x3",
    }
    assert all(r["mean"] == "" and r["numel"] == "0" for r in rows if r["name"] in EMPTY_NAMES)
    # markdown: every row has the header's column count
    md = ok(run_cli("inspect", src, "--format", "markdown", "--hist", "--values", "2")).stdout
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(table) == 2 + 8
    assert len({len(markdown_cells(ln)) for ln in table}) == 1
    # the plain table, sorted every way
    for sort in ("order", "name", "size"):
        text = ok(run_cli("inspect", src, "--sort", sort, "--hist", "--values", "2")).stdout
        assert all(name in text for name in empties())
        assert "8 tensors, 11 parameters" in text


@pytest.mark.parametrize("ext", [".safetensors", ".pt"])
def test_empty_and_scalar_tensors_check_and_diff(tmp_path: Path, ext: str) -> None:
    src = save(tmp_path / f"e{ext}", empties())
    other = save(tmp_path / f"o{'.pt' if ext == '.safetensors' else '.safetensors'}", empties())
    # each empty tensor is an `empty` warning (SPEC 4): a pass by default, a failure with --fail-on warning
    for fmt in ("text", "json", "github", "junit"):
        r = ok(run_cli("check", src, "--format", fmt, "--fail-on", "warning"), 1)
        if fmt == "json":
            f = r.json()["files"][0]
            assert f["tensors"] == 8 and f["status"] == "fail"
            got = sorted((x["tensor"], x["code"], x["severity"]) for x in f["findings"])
            assert got == sorted((n, "empty", "warning") for n in EMPTY_NAMES)
            assert f["coverage"] == {"tensors_found": 8, "tensors_read": 8, "uninterpreted": []}
        if fmt == "junit":
            ET.fromstring(r.stdout)
    f = ok(run_cli("check", src, "--format", "json")).json()["files"][0]
    assert f["status"] == "pass" and len(f["findings"]) == len(EMPTY_NAMES)
    ok(run_cli("check", src, "--reference", other))
    d = ok(run_cli("diff", src, other, "--format", "json")).json()
    assert d["summary"]["identical"] == 8 and d["summary"]["equal"] is True
    ok(run_cli("diff", src, other))


@pytest.mark.parametrize("ext", [".safetensors", ".pt"])
def test_empty_and_scalar_tensors_reinit_every_scheme(tmp_path: Path, ext: str) -> None:
    original = empties()
    src = save(tmp_path / f"e{ext}", original)
    floats = [n for n, t in original.items() if t.is_floating_point()]
    for scheme, args in SCHEME_ARGS.items():
        work = tmp_path / f"{scheme}{ext}"
        shutil.copyfile(src, work)
        r = ok(run_cli("reinit", work, "--match", ".", "--exclude", "^count$", "--scheme", scheme, *args, "--seed=1"))
        assert "no-op" not in r.stderr and "Warning" not in r.stderr, r.stderr
        got = load(work)
        assert set(got) == set(original)
        for name, t in original.items():
            assert got[name].shape == t.shape and got[name].dtype == t.dtype, name
        assert torch.equal(got["count"], original["count"])
        if scheme == "zeros":
            assert all(not got[n].any() for n in floats)
        if scheme == "constant":
            assert float(got["scale"]) == 3.0
        assert {e["name"] for e in ok(run_cli("inspect", work, "--format", "json")).json()["tensors"]} == set(original)
    # schemes that take only some shapes, on the empty tensors they take
    for scheme, (args, names) in SHAPED_SCHEMES.items():
        work = tmp_path / f"{scheme}{ext}"
        shutil.copyfile(src, work)
        match = [a for n in names for a in ("--match", f"^{re.escape(n)}$")]
        r = ok(run_cli("reinit", work, *match, "--scheme", scheme, *args, "--seed", "1", "--format", "json"))
        assert sorted(t["name"] for t in r.json()["tensors"]) == sorted(names)
        assert "no-op" not in r.stderr and "Warning" not in r.stderr, r.stderr
        got = load(work)
        for name, t in original.items():
            assert got[name].shape == t.shape and got[name].dtype == t.dtype, (scheme, name)
    # default: every rule on the empties (a bias whose weight has fan_in 0 gets U(0, 0), i.e. zeros)
    work = tmp_path / f"default{ext}"
    shutil.copyfile(src, work)
    r = ok(run_cli("reinit", work, "--match", ".", "--exclude", "^(scale|count)$", "--scheme", "default"))
    assert "no-op" not in r.stderr and "Warning" not in r.stderr, r.stderr
    got = load(work)
    assert torch.equal(got["mid.bias"], torch.zeros(3)) and torch.equal(got["scale"], original["scale"])
    assert got["ok.weight"].abs().max() <= 1 / 3**0.5 + 1e-6  # kaiming_uniform(a=√5), fan_in 3
    # a 0-d tensor no default rule covers is one error line, and nothing is written
    before = work.read_bytes()
    assert_one_error_line(run_cli("reinit", work, "--match", "^scale$", "--scheme", "default"))
    assert work.read_bytes() == before
    # --dry-run on empties: before/after statistics exist and nothing is written
    r = ok(run_cli("reinit", work, "--match", "^rows", "--scheme", "normal", "--dry-run", "--format", "json"))
    assert r.json()["tensors"][0]["after"]["mean"] is None
    assert work.read_bytes() == before


# ---------------------------------------------------------------------------
# names: unicode, spaces, punctuation, control characters, regex metacharacters

ODD_NAMES = [
    "層.重み",
    "emoji🙂.weight",
    "with space.weight",
    "dots..a...b.",
    "quote\"double'single",
    "back\\slash\\\\x",
    "comma,separated,name",
    "pipe|name|x",
    "new\nline.weight",
    "tab\tname",
    "a[0].b(c)*+?|^$",
    "colons::and%percent",
]
DISPLAY = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def shown(name: str) -> str:
    """How a human-readable table shows a name: control characters escaped, one line per row."""
    return "".join(DISPLAY.get(c, c) for c in name)


def columns(text: str) -> int:
    """Terminal cells ``text`` takes (East Asian wide and fullwidth characters take two)."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def odd_tensors(bump: float = 0.0) -> dict[str, torch.Tensor]:
    """One 2x2 tensor per name, each with a NaN (so every name has a finding) and distinct values."""
    out = {}
    for i, name in enumerate(ODD_NAMES):
        t = torch.tensor([[float("nan"), 1.0 + i], [2.0 + i + bump, -3.0 - i]])
        out[name] = t
    return out


def markdown_cells(line: str) -> list[str]:
    """The cells of one markdown table row, unescaped (``\\|`` and ``\\\\``)."""
    assert line.startswith("|") and line.endswith("|"), line
    cells, cur, i = [], "", 1
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line):
            cur += line[i + 1]
            i += 2
            continue
        if c == "|":
            cells.append(cur.strip())
            cur = ""
        else:
            cur += c
        i += 1
    return cells


def gh_unescape(s: str) -> str:
    return s.replace("%0A", "\n").replace("%0D", "\r").replace("%3A", ":").replace("%2C", ",").replace("%25", "%")


def parse_github(line: str) -> tuple[str, dict[str, str], str]:
    assert line.startswith("::"), line
    head, message = line[2:].split("::", 1)
    level, props = head.split(" ", 1)
    fields = dict(p.split("=", 1) for p in props.split(","))
    return level, {k: gh_unescape(v) for k, v in fields.items()}, gh_unescape(message)


@pytest.fixture(params=[".safetensors", ".pt"])
def odd(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return save(tmp_path / f"odd{request.param}", odd_tensors())


def test_odd_names_match_and_inspect_every_format(odd: Path) -> None:
    names = set(ODD_NAMES)
    # --match with re.escape selects exactly that tensor
    for name in ODD_NAMES:
        doc = ok(run_cli("inspect", odd, "--match", f"^{re.escape(name)}$", "--format", "json")).json()
        assert [t["name"] for t in doc["tensors"]] == [name]
        doc = ok(run_cli("inspect", odd, "--exclude", f"^{re.escape(name)}$", "--format", "json")).json()
        assert {t["name"] for t in doc["tensors"]} == names - {name}
    # json
    doc = ok(run_cli("inspect", odd, "--format", "json")).json()
    assert {t["name"] for t in doc["tensors"]} == names
    assert all([f["code"] for f in t["flags"]] == ["nan"] for t in doc["tensors"])
    # csv, parsed back exactly
    rows = list(csv.reader(io.StringIO(ok(run_cli("inspect", odd, "--format", "csv")).stdout)))
    assert len(rows) == 1 + len(ODD_NAMES)
    assert {len(r) for r in rows} == {len(rows[0])}
    assert {r[0] for r in rows[1:]} == names
    # markdown: one line per row, the header's column count, the name cell escaped
    md = ok(run_cli("inspect", odd, "--format", "markdown")).stdout
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(table) == 2 + len(ODD_NAMES), md
    widths = {len(markdown_cells(ln)) for ln in table}
    assert widths == {len(markdown_cells(table[0]))}, md
    assert {markdown_cells(ln)[0] for ln in table[2:]} == {shown(n) for n in ODD_NAMES}  # escaped (SPEC 7)
    # the plain table: one line per tensor, every name shown (control characters escaped)
    text = ok(run_cli("inspect", odd)).stdout
    lines = text.splitlines()
    for name in ODD_NAMES:
        assert sum(ln.startswith(shown(name) + " ") for ln in lines) == 1, (name, text)
    # columns line up on a terminal, wide (CJK, emoji) characters taking two cells
    assert len({columns(ln[: ln.index("[2, 2]")]) for ln in lines[2 : 2 + len(ODD_NAMES)]}) == 1, text
    rows_and_title = 2 + len(ODD_NAMES)  # title, header, rows
    summary = lines[rows_and_title:]
    assert summary[0].startswith(f"{len(ODD_NAMES)} tensors"), text
    assert len(summary) == 2 + len(ODD_NAMES), text  # totals, flag counts, one line per finding
    assert sorted(summary[2:]) == sorted(f"error: {shown(n)}: nan: 1 NaN of 4 values" for n in ODD_NAMES), text


def test_odd_names_check_every_format(odd: Path) -> None:
    names = set(ODD_NAMES)
    # json
    doc = ok(run_cli("check", odd, "--format", "json"), 1).json()
    assert {f["tensor"] for f in doc["files"][0]["findings"]} == names
    # github: one workflow command per finding, escaped as GitHub requires, parsed back exactly
    out = ok(run_cli("check", odd, "--format", "github"), 1).stdout
    lines = out.splitlines()
    assert len(lines) == len(ODD_NAMES) + 1, out
    seen = set()
    for line in lines[:-1]:
        level, props, message = parse_github(line)
        assert level == "error" and props["file"] == os.fspath(odd)
        name = props["title"].removeprefix("pinit nan in ")
        assert message == f"{name}: 1 NaN of 4 values"
        seen.add(name)
    assert seen == {shown(n) for n in names}  # control characters escaped as everywhere (SPEC 7)
    # junit: well-formed XML, one failure per finding, names intact
    root = ET.fromstring(ok(run_cli("check", odd, "--format", "junit"), 1).stdout)
    failures = root.findall(".//failure")
    assert {f.get("message", "").removesuffix(": 1 NaN of 4 values") for f in failures} == names
    # text: one row per finding, every name shown on its row
    text = ok(run_cli("check", odd), 1).stdout
    lines = text.splitlines()
    assert len(lines) == 1 + len(ODD_NAMES) + 1, text  # header, findings, verdict
    for name in ODD_NAMES:
        assert sum(f"  {shown(name)}  " in ln for ln in lines) == 1, (name, text)
    # --exclude with re.escape drops exactly that tensor's finding
    doc = ok(run_cli("check", odd, "--exclude", f"^{re.escape(ODD_NAMES[-1])}$", "--format", "json"), 1).json()
    assert {f["tensor"] for f in doc["files"][0]["findings"]} == names - {ODD_NAMES[-1]}


def test_odd_names_diff_and_reinit(odd: Path, tmp_path: Path) -> None:
    names = set(ODD_NAMES)
    other = save(tmp_path / f"other{odd.suffix}", odd_tensors(bump=1.0))  # every tensor differs
    doc = ok(run_cli("diff", odd, other, "--format", "json"), 1).json()
    assert {t["name"]: t["status"] for t in doc["tensors"]} == dict.fromkeys(ODD_NAMES, "changed")
    for name in ODD_NAMES:
        doc = ok(run_cli("diff", odd, other, "--match", f"^{re.escape(name)}$", "--format", "json"), 1).json()
        assert [t["name"] for t in doc["tensors"]] == [name]
    text = ok(run_cli("diff", odd, other), 1).stdout
    lines = text.splitlines()
    for name in ODD_NAMES:
        assert sum(ln.startswith(shown(name) + " ") for ln in lines) == 1, (name, text)
    # the same file in the other format is equal, name for name
    twin = save(tmp_path / f"twin{'.pt' if odd.suffix == '.safetensors' else '.safetensors'}", odd_tensors())
    doc = ok(run_cli("diff", odd, twin, "--format", "json")).json()
    assert doc["summary"]["identical"] == len(ODD_NAMES)
    # reinit selects by escaped name and writes every name back exactly, in both formats
    for out_ext in (".safetensors", ".pt"):
        out = tmp_path / f"re{out_ext}"
        picked = ODD_NAMES[::2]
        match = [a for n in picked for a in ("--match", f"^{re.escape(n)}$")]
        r = ok(run_cli("reinit", odd, *match, "--scheme", "zeros", "--out", out, "--format", "json"))
        assert sorted(t["name"] for t in r.json()["tensors"]) == sorted(picked)
        got = load(out)
        assert set(got) == names
        for n in ODD_NAMES:
            if n in picked:
                assert not got[n].any(), n
            else:
                assert torch.equal(got[n].isnan(), odd_tensors()[n].isnan()), n
        doc = ok(run_cli("inspect", out, "--format", "json")).json()
        assert {t["name"] for t in doc["tensors"]} == names
