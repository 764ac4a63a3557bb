"""``pinit inspect``: the JSON document of SPEC section 6, every option, and selection (SPEC section 2)."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SAMPLES, assert_one_error_line, run_cli, run_subprocess, save_checkpoint
from pinit.selection import Selector

TOP_KEYS = {"path", "format", "tensors", "summary"}
TENSOR_KEYS = {"name", "shape", "dtype", "numel", "nbytes", "requires_grad", "tied_with", "stats", "flags"}
STATS_KEYS = {"mean", "std", "min", "max", "abs_max", "zeros", "nan", "inf", "subnormal"}
FLAG_KEYS = {"code", "severity", "message"}
SUMMARY_KEYS = {"tensors", "parameters", "bytes", "by_dtype", "errors", "warnings", "tied", "coverage"}


def mixed_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    nan = torch.randn(4, 3, generator=g)
    nan[0, 1] = math.nan
    nan[2, 2] = -math.inf
    return {
        "enc.layer.0.weight": torch.randn(8, 4, generator=g),
        "enc.layer.0.bias": torch.zeros(8),
        "enc.layer.1.weight": torch.randn(16, 8, generator=g).to(torch.bfloat16),
        "enc.nan": nan,
        "dec.zero": torch.zeros(3, 3, dtype=torch.float16),
        "dec.fp8": torch.tensor([[0.5, -1.0], [2.0, 0.25]]).to(torch.float8_e4m3fn),
        "dec.f64": torch.arange(6, dtype=torch.float64).reshape(2, 3),
        "steps": torch.tensor([3, -1, 0, 7], dtype=torch.int64),
        "mask": torch.tensor([[True, False], [False, True]]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 5),
    }


def inspect_json(*args) -> dict:
    r = run_cli("inspect", *args, "--format", "json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)  # stdout is nothing but the JSON document


def listed(doc: dict) -> list[str]:
    return [t["name"] for t in doc["tensors"]]


def safetensors_file_order(path: Path) -> list[str]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    return sorted(header, key=lambda k: header[k]["data_offsets"][0])


@pytest.fixture(params=["safetensors", "pt"])
def mixed(request, tmp_path) -> tuple[Path, dict[str, torch.Tensor]]:
    tensors = mixed_tensors()
    return save_checkpoint(tmp_path / f"mixed.{request.param}", tensors), tensors


# ---------------------------------------------------------------- the JSON document


def test_json_document_field_for_field(mixed):
    path, tensors = mixed
    doc = inspect_json(path)
    assert set(doc) == TOP_KEYS
    assert doc["path"] == str(path)
    assert doc["format"] == ("safetensors" if path.suffix == ".safetensors" else "torch")
    assert sorted(listed(doc)) == sorted(tensors)
    for t in doc["tensors"]:
        src = tensors[t["name"]]
        assert set(t) >= TENSOR_KEYS, t.keys()
        assert t["shape"] == list(src.shape) and all(type(d) is int for d in t["shape"])
        assert t["dtype"] == str(src.dtype).removeprefix("torch.")
        assert t["numel"] == src.numel()
        assert t["nbytes"] == src.numel() * src.element_size()
        assert t["requires_grad"] is None  # neither format records it for plain state-dict tensors
        assert t["tied_with"] == []
        assert set(t["stats"]) == STATS_KEYS
        for f in t["flags"]:
            assert set(f) == FLAG_KEYS
            assert f["severity"] in ("error", "warning")
            assert isinstance(f["message"], str) and f["message"]
        assert "values" not in t and "hist" not in t
    summary = doc["summary"]
    assert set(summary) >= SUMMARY_KEYS
    assert summary["tensors"] == len(tensors)
    assert summary["parameters"] == sum(t.numel() for t in tensors.values())
    assert summary["bytes"] == sum(t.numel() * t.element_size() for t in tensors.values())
    by_dtype: dict[str, int] = {}
    for t in tensors.values():
        key = str(t.dtype).removeprefix("torch.")
        by_dtype[key] = by_dtype.get(key, 0) + t.numel()
    assert summary["by_dtype"] == by_dtype
    all_flags = [f for t in doc["tensors"] for f in t["flags"]]
    assert summary["errors"] == sum(f["severity"] == "error" for f in all_flags) == 2  # enc.nan: nan, inf
    # dec.zero: all_zero; empty: a lone 0-element tensor is an `empty` warning (SPEC 4)
    assert summary["warnings"] == sum(f["severity"] == "warning" for f in all_flags) == 2
    assert summary["coverage"] == {"tensors_found": len(tensors), "tensors_read": len(tensors), "uninterpreted": []}
    assert summary["tied"] == []
    by = {t["name"]: t for t in doc["tensors"]}
    assert by["enc.nan"]["stats"]["nan"] == 1 and by["enc.nan"]["stats"]["inf"] == 1
    assert by["steps"]["stats"]["min"] == -1 and by["steps"]["stats"]["max"] == 7
    assert by["empty"]["stats"]["mean"] is None


def test_json_format_field_for_every_input():
    assert inspect_json(SAMPLES / "tiny_cnn.safetensors")["format"] == "safetensors"
    assert inspect_json(SAMPLES / "tiny_cnn.pt")["format"] == "torch"
    assert inspect_json(SAMPLES / "legacy.pt")["format"] == "torch"
    assert inspect_json(SAMPLES / "lightning.ckpt")["format"] == "torch"
    for p in (SAMPLES / "sharded", SAMPLES / "sharded" / "model.safetensors.index.json"):
        doc = inspect_json(p)
        assert doc["format"] == "sharded"
        assert len(doc["tensors"]) == 16
        assert all(set(t) >= TENSOR_KEYS for t in doc["tensors"])


def test_json_dtype_names_have_no_torch_prefix(tmp_path):
    dts = [
        torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2,
        torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
    ]  # fmt: skip
    tensors = {f"t{i}": torch.ones(2, 2).to(dt) for i, dt in enumerate(dts)}
    for suffix in (".safetensors", ".pt"):
        doc = inspect_json(save_checkpoint(tmp_path / f"d{suffix}", tensors))
        got = {t["name"]: t["dtype"] for t in doc["tensors"]}
        assert got == {n: str(t.dtype).removeprefix("torch.") for n, t in tensors.items()}
        assert set(doc["summary"]["by_dtype"]) == set(got.values())


def test_json_requires_grad_only_where_recorded(tmp_path):
    path = save_checkpoint(
        tmp_path / "rg.pt",
        {
            "param": torch.nn.Parameter(torch.ones(2, 2)),
            "frozen": torch.nn.Parameter(torch.ones(2, 2), requires_grad=False),
            "grad": torch.ones(2, requires_grad=True),
            "plain": torch.ones(2),
        },
    )
    got = {t["name"]: t["requires_grad"] for t in inspect_json(path)["tensors"]}
    assert got == {"param": True, "frozen": False, "grad": True, "plain": None}


def test_no_stats_gives_null_stats(mixed):
    path, tensors = mixed
    doc = inspect_json(path, "--no-stats")
    assert set(doc) == TOP_KEYS
    assert len(doc["tensors"]) == len(tensors)
    for t in doc["tensors"]:
        assert set(t) >= TENSOR_KEYS
        assert t["stats"] is None
        assert t["flags"] == []
    assert doc["summary"]["parameters"] == sum(t.numel() for t in tensors.values())
    assert doc["summary"]["errors"] == 0


def test_no_stats_with_flagged_is_a_usage_error(mixed):
    path, _ = mixed
    r = run_cli("inspect", path, "--no-stats", "--flagged", "--format", "json")
    assert_one_error_line(r)
    assert r.stdout == ""


def test_values(tmp_path):
    tensors = {
        "f": torch.tensor([[1.5, math.nan, math.inf], [-math.inf, -0.25, 3.0]]),
        "bf": torch.tensor([0.1, 1e-39, -2.0]).to(torch.bfloat16),
        "i": torch.tensor([5, -3, 0, 9]),
        "b": torch.tensor([True, False, True]),
        "s": torch.tensor(7.0),
        "e": torch.zeros(0, 2),
    }
    for suffix in (".safetensors", ".pt"):
        path = save_checkpoint(tmp_path / f"v{suffix}", tensors)
        by = {t["name"]: t for t in inspect_json(path, "--values", "4")["tensors"]}
        assert by["f"]["values"] == [1.5, "nan", "inf", "-inf"]
        assert by["bf"]["values"] == [float(v) for v in tensors["bf"].double()]
        assert by["i"]["values"] == [5, -3, 0, 9]
        assert by["b"]["values"] == [True, False, True]
        assert by["s"]["values"] == [7.0]
        assert by["e"]["values"] == []
        by = {t["name"]: t for t in inspect_json(path, "--values", "1")["tensors"]}
        assert by["f"]["values"] == [1.5] and by["i"]["values"] == [5]
    # a row-major view into a larger storage (.pt keeps the offset)
    base = torch.arange(10.0)
    path = save_checkpoint(tmp_path / "view.pt", {"tail": base[6:]})
    assert inspect_json(path, "--values", "3")["tensors"][0]["values"] == [6.0, 7.0, 8.0]


def test_values_in_table_output(tmp_path):
    path = save_checkpoint(tmp_path / "v.safetensors", {"w": torch.tensor([[0.5, math.nan], [2.0, 3.0]])})
    r = run_cli("inspect", path, "--values", "3")
    assert r.exit_code == 0
    assert "values" in r.stdout.splitlines()[1]
    assert "[0.5, nan, 2]" in r.stdout


def test_stdout_is_only_json_in_a_real_process(tmp_path):
    """A real interpreter: a warning (--unsafe-pickle) goes to stderr, stdout stays one JSON document."""
    path = save_checkpoint(tmp_path / "m.safetensors", mixed_tensors())  # safetensors: no torch import, fast
    r = run_subprocess("inspect", path, "--format", "json", "--unsafe-pickle")
    assert r.exit_code == 0, r.stderr
    assert r.stderr.strip()  # the warning is there, on stderr ...
    assert r.stderr.strip() not in r.stdout  # ... and not on stdout
    doc = json.loads(r.stdout)
    assert set(doc) == TOP_KEYS and len(doc["tensors"]) == 11


# ---------------------------------------------------------------- selection through the CLI

WEIRD = {
    "layer.0.weight": torch.ones(2, 2),
    "layer.10.weight": torch.ones(3, 2),
    "a b.c": torch.ones(1),
    "ünï.çødé": torch.ones(2),
    "x[0]+(y)*": torch.ones(3),
    "head|tail": torch.ones(4),
    "$dollar^": torch.ones(5),
    "layer.0.bias": torch.zeros(2),
}


@pytest.fixture
def weird(tmp_path) -> Path:
    return save_checkpoint(tmp_path / "weird.safetensors", WEIRD)


def expected(names, match, exclude) -> set[str]:
    return {
        n
        for n in names
        if (not match or any(re.search(p, n) for p in match)) and not any(re.search(p, n) for p in exclude)
    }


@pytest.mark.parametrize(
    "match,exclude",
    [
        ([], []),
        (["layer"], []),
        ([r"layer\.0\."], []),
        (["layer.0"], []),  # an unescaped dot is a regex dot: still a search
        (["weight$"], []),
        (["weight", "bias"], []),  # a union
        (["layer"], ["bias"]),
        (["layer"], ["bias", r"\.10\."]),  # exclusions add up
        ([re.escape("x[0]+(y)*")], []),
        ([re.escape("head|tail")], []),
        (["head|tail"], []),  # an alternation, found as a search
        ([re.escape("$dollar^")], []),
        ([re.escape("a b")], []),
        (["ünï"], []),
        ([], ["."]),  # everything excluded
        (["nothing-matches-this"], []),
    ],
)
def test_match_exclude(weird, match, exclude):
    args = [a for p in match for a in ("--match", p)] + [a for p in exclude for a in ("--exclude", p)]
    doc = inspect_json(weird, *args)
    assert set(listed(doc)) == expected(WEIRD, match, exclude)
    assert doc["summary"]["tensors"] == len(doc["tensors"])


def test_short_options_and_union(weird):
    doc = inspect_json(weird, "-m", "^layer", "-m", "ünï", "-x", "bias")
    assert set(listed(doc)) == {"layer.0.weight", "layer.10.weight", "ünï.çødé"}


def test_empty_selection(weird):
    r = run_cli("inspect", weird, "--match", "zzz", "--format", "json")
    assert r.exit_code == 0
    doc = r.json()
    assert doc["tensors"] == []
    assert doc["summary"]["tensors"] == 0 and doc["summary"]["parameters"] == 0
    assert doc["summary"]["bytes"] == 0 and doc["summary"]["by_dtype"] == {}
    r = run_cli("inspect", weird, "--match", "zzz")
    assert r.exit_code == 0
    assert "0 tensors" in r.stdout
    r = run_cli("inspect", weird, "--match", "zzz", "--format", "csv")
    assert r.exit_code == 0
    assert len(list(csv.reader(io.StringIO(r.stdout)))) == 1  # the header only


def test_invalid_regex_is_a_usage_error(weird):
    for opt in ("--match", "--exclude"):
        r = run_cli("inspect", weird, opt, "(unclosed", "--format", "json")
        assert_one_error_line(r)
        assert "(unclosed" in r.stderr
        assert r.stdout == ""


names_st = st.lists(
    st.text(
        alphabet=st.one_of(
            st.characters(whitelist_categories=("L", "N", "P", "S", "Zs")),
            st.sampled_from(list(".[]()*+?|^$\\{} -_0123456789")),
        ),
        min_size=1,
        max_size=12,
    ),
    min_size=1,
    max_size=8,
    unique=True,
)


@st.composite
def selection_case(draw):
    names = draw(names_st)

    def pattern():
        source = draw(st.sampled_from(names))
        i = draw(st.integers(0, len(source) - 1))
        j = draw(st.integers(i + 1, len(source)))
        p = re.escape(source[i:j])
        if i == 0 and draw(st.booleans()):
            p = "^" + p
        if j == len(source) and draw(st.booleans()):
            p = p + "$"
        return source, p

    matches = [pattern() for _ in range(draw(st.integers(0, 3)))]
    excludes = [pattern() for _ in range(draw(st.integers(0, 2)))]
    return names, matches, excludes


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(selection_case())
def test_selector_property(case):
    names, matches, excludes = case
    match = [p for _, p in matches]
    exclude = [p for _, p in excludes]
    sel = Selector(match, exclude)
    chosen = {n for n in names if sel(n)}
    assert chosen == expected(names, match, exclude)
    # independent of the formula: an escaped substring selects the name it was cut from,
    # and excluding by such a pattern always removes its source
    only_match = Selector(match)
    for source, _ in matches:
        assert only_match(source)
    for source, _ in excludes:
        assert source not in chosen


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(selection_case())
def test_cli_selection_property(tmp_path, case):
    names, matches, excludes = case
    path = save_checkpoint(tmp_path / "sel.safetensors", {n: torch.ones(1) for n in names})
    match = [p for _, p in matches]
    exclude = [p for _, p in excludes]
    args = [a for p in match for a in ("--match", p)] + [a for p in exclude for a in ("--exclude", p)]
    doc = inspect_json(path, *args, "--no-stats")
    assert set(listed(doc)) == expected(names, match, exclude)


# ---------------------------------------------------------------- --sort


def test_sort(mixed):
    path, tensors = mixed
    order = safetensors_file_order(path) if path.suffix == ".safetensors" else list(tensors)
    assert listed(inspect_json(path)) == order
    assert listed(inspect_json(path, "--sort", "order")) == order
    assert listed(inspect_json(path, "--sort", "name")) == sorted(tensors)
    nbytes = {n: t.numel() * t.element_size() for n, t in tensors.items()}
    by_size = listed(inspect_json(path, "--sort", "size"))
    assert by_size == sorted(order, key=lambda n: -nbytes[n])  # largest first, ties in file order
    r = run_cli("inspect", path, "--sort", "bogus")
    assert_one_error_line(r)


def test_sort_keeps_selection(mixed):
    path, _ = mixed
    got = listed(inspect_json(path, "--sort", "name", "--match", "^enc", "--exclude", "bias"))
    assert got == ["enc.layer.0.weight", "enc.layer.1.weight", "enc.nan"]


# ---------------------------------------------------------------- csv, markdown, table


def test_csv(mixed):
    path, _ = mixed
    doc = inspect_json(path)
    r = run_cli("inspect", path, "--format", "csv")
    assert r.exit_code == 0
    rows = list(csv.reader(io.StringIO(r.stdout)))
    header, body = rows[0], rows[1:]
    assert header[:3] == ["name", "shape", "dtype"]
    assert {"numel", "nbytes", "requires_grad", "flags"} <= set(header) and set(header) >= STATS_KEYS
    assert all(len(row) == len(header) for row in body)
    assert [row[0] for row in body] == listed(doc)
    for row, t in zip(body, doc["tensors"]):
        rec = dict(zip(header, row))
        assert rec["dtype"] == t["dtype"]
        assert int(rec["numel"]) == t["numel"] and int(rec["nbytes"]) == t["nbytes"]
        assert int(rec["zeros"]) == t["stats"]["zeros"]
        if t["stats"]["mean"] is None:
            assert rec["mean"] == ""
        else:
            assert float(rec["mean"]) == pytest.approx(t["stats"]["mean"], rel=1e-12)
        assert set(filter(None, re.split("[;,]", rec["flags"]))) == {f["code"] for f in t["flags"]}


def test_csv_quotes_awkward_names(weird):
    r = run_cli("inspect", weird, "--format", "csv")
    body = list(csv.reader(io.StringIO(r.stdout)))[1:]
    assert [row[0] for row in body] == safetensors_file_order(weird)


def split_md(line: str) -> list[str]:
    assert line.startswith("|") and line.endswith("|"), line
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line[1:-1])]


def test_markdown(weird):
    r = run_cli("inspect", weird, "--format", "markdown")
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    table = [ln for ln in lines if ln.startswith("|")]
    header = split_md(table[0])
    assert header[0] == "name" and "dtype" in header and "shape" in header
    assert all(set(c) <= set("-:") and c for c in split_md(table[1]))
    rows = [split_md(ln) for ln in table[2:]]
    assert all(len(row) == len(header) for row in rows)
    assert [row[0] for row in rows] == safetensors_file_order(weird)  # "head|tail" escaped, still one cell
    rest = "\n".join(ln for ln in lines if not ln.startswith("|"))
    assert "8 tensors" in rest and "0 errors" in rest


def test_table_when_piped(mixed):
    path, tensors = mixed
    r = run_cli("inspect", path)
    assert r.exit_code == 0
    out = r.stdout
    assert "\x1b[" not in out  # no colour
    assert not set(out) & set("│┃─━┏┓┗┛╭╮╰╯")  # no box drawing
    lines = out.splitlines()
    assert lines[0].startswith(str(path))
    assert lines[1].split()[:3] == ["name", "shape", "dtype"]
    names_in_rows = [ln.split()[0] for ln in lines[2 : 2 + len(tensors)]]
    assert names_in_rows == listed(inspect_json(path))
    assert any(ln.startswith(f"{len(tensors)} tensors, ") for ln in lines)
    assert "flags: 2 errors, 2 warnings" in lines  # dec.zero all_zero, empty: empty
    assert any(ln.startswith("error: enc.nan: nan") for ln in lines)
    assert "warning: empty: empty: shape [0, 5]: 0 elements" in lines


def test_table_shows_tied_groups():
    r = run_cli("inspect", SAMPLES / "tied_lm.pt")
    assert "tied: embed.weight = lm_head.weight" in r.stdout.splitlines()


# ---------------------------------------------------------------- --hist and --max-abs


def test_hist(tmp_path):
    tensors = {
        "w": torch.tensor([[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, math.nan]]),
        "const_big": torch.full((3, 3), 1e20),  # no room for 16 bin edges at this magnitude
        "near_max64": torch.tensor([[1.7e308, -1.7e308], [1.0, 2.0]], dtype=torch.float64),
        "ulps64": torch.tensor([1.0, math.nextafter(1.0, 2.0)], dtype=torch.float64),
        "i": torch.arange(4),
    }
    path = save_checkpoint(tmp_path / "h.safetensors", tensors)
    doc = inspect_json(path, "--hist")
    by = {t["name"]: t for t in doc["tensors"]}
    for name in ("w", "const_big", "near_max64", "ulps64"):
        hist = by[name]["hist"]
        assert len(hist) == 16 and all(type(c) is int and c >= 0 for c in hist)
        st_ = by[name]["stats"]
        assert sum(hist) == by[name]["numel"] - st_["nan"] - st_["inf"], name
    assert by["w"]["hist"][0] == 1 and by["w"]["hist"][-1] == 1
    assert by["near_max64"]["hist"] == [1] + [0] * 7 + [2] + [0] * 6 + [1]
    r = run_cli("inspect", path, "--hist")
    assert r.exit_code == 0
    assert "hist" in r.stdout.splitlines()[1]
    assert any(c in r.stdout for c in "▁▂▃▄▅▆▇█")


def test_max_abs_option(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", {"w": torch.tensor([[1.0, 50.0], [-2.0, 3.0]])})
    assert inspect_json(path)["tensors"][0]["flags"] == []
    (f,) = inspect_json(path, "--max-abs", "10")["tensors"][0]["flags"]
    assert f["code"] == "huge" and "1 of 4 values" in f["message"]
    assert inspect_json(path, "--max-abs", "50")["tensors"][0]["flags"] == []
    r = run_cli("inspect", path, "--max-abs", "-1")
    assert_one_error_line(r)
