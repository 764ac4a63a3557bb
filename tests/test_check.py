"""``pinit check`` (SPEC section 5, 6, 7): the CI gate, through the real CLI.

JSON document of ``pinit check --format json`` (the structure these tests hold the product to)::

    {"files": [{"path": "...", "format": "safetensors|torch|sharded" | null (unreadable),
                "tensors": 0, "status": "pass|fail",
                "findings": [{"tensor": "..." | null, "code": "nan", "severity": "error|warning",
                              "message": "..."}]}],
     "summary": {"files": 0, "failed_files": 0, "errors": 0, "warnings": 0, "fail_on": "error|warning"},
     "exit_code": 0}
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import ROOT, SAMPLES, assert_one_error_line, run_cli, save_checkpoint

TOP_KEYS = {"files", "summary", "exit_code"}
FILE_KEYS = {"path", "format", "tensors", "status", "coverage", "findings"}
FINDING_KEYS = {"tensor", "code", "severity", "message"}
SUMMARY_KEYS = {"files", "failed_files", "errors", "warnings", "fail_on"}
GITHUB_LINE = re.compile(r"^::(error|warning) file=[^,]+,title=[^:]+::.+$")


# ---------------------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _outside_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from tmp_path, so that no pyproject.toml of the repository (or above) applies settings."""
    monkeypatch.chdir(tmp_path)


def healthy_tensors() -> dict[str, torch.Tensor]:
    """Nothing to flag: finite, small, no subnormals, no 2-D zeros/constants/duplicates."""
    return {
        "fc.weight": torch.linspace(-1.0, 1.0, 12).reshape(4, 3),
        "fc.bias": torch.zeros(4),  # 1-D zeros are normal
        "out.weight": torch.linspace(0.5, 2.0, 6).reshape(2, 3),
    }


def nan_tensors() -> dict[str, torch.Tensor]:
    t = healthy_tensors()
    w = t["fc.weight"].clone()
    w[1, 2] = math.nan
    t["fc.weight"] = w
    return t


def warning_only_tensors() -> dict[str, torch.Tensor]:
    t = healthy_tensors()
    t["dead.weight"] = torch.zeros(3, 3)  # all_zero, a warning
    return t


def check_json(*args: str | os.PathLike[str]) -> tuple[int, dict]:
    r = run_cli("check", *args, "--format", "json")
    assert r.exit_code in (0, 1), (r.exit_code, r.stdout, r.stderr)
    doc = r.json()  # stdout is one JSON document and nothing else
    assert doc["exit_code"] == r.exit_code
    return r.exit_code, doc


def findings(doc: dict) -> set[tuple[str, str | None, str, str]]:
    """(file name, tensor, code, severity) of every finding."""
    return {(Path(f["path"]).name, x["tensor"], x["code"], x["severity"]) for f in doc["files"] for x in f["findings"]}


def by_name(doc: dict) -> dict[str, dict]:
    return {Path(f["path"]).name: f for f in doc["files"]}


# ------------------------------------------------------------------------------------- exit codes


def test_healthy_files_exit_0(tmp_path: Path) -> None:
    st = shutil.copy(SAMPLES / "tiny_cnn.safetensors", tmp_path)
    pt = shutil.copy(SAMPLES / "tiny_cnn.pt", tmp_path)
    mine = save_checkpoint(tmp_path / "mine.safetensors", healthy_tensors())
    r = run_cli("check", st, pt, mine)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert lines[-1].startswith("ok:"), r.stdout
    assert "3 files" in lines[-1]


def test_error_finding_exit_1_and_text_output(tmp_path: Path) -> None:
    bad = save_checkpoint(tmp_path / "bad.safetensors", nan_tensors())
    good = save_checkpoint(tmp_path / "good.pt", healthy_tensors())
    r = run_cli("check", good, bad)
    assert r.exit_code == 1, (r.stdout, r.stderr)
    # the finding is shown: file, tensor, severity, code, message with evidence
    row = next(ln for ln in r.stdout.splitlines() if "fc.weight" in ln)
    assert "bad.safetensors" in row and "error" in row and "nan" in row and "1 NaN of 12" in row
    verdict = [ln for ln in r.stdout.splitlines() if ln.strip()][-1]
    assert verdict.startswith("FAIL:"), r.stdout
    assert "2 files checked, 1 failed" in verdict


@pytest.mark.parametrize(
    "args",
    [
        ["--no-such-option"],
        ["--rule", "nan=bogus"],
        ["--rule", "nosuchcode=error"],
        ["--rule", "nan"],
        ["--fail-on", "bogus"],
        ["--exclude", "("],
        ["--max-abs", "0"],
    ],
    ids=[
        "unknown-option",
        "rule-bad-severity",
        "rule-unknown-code",
        "rule-no-equals",
        "fail-on",
        "bad-regex",
        "max-abs-0",
    ],
)
def test_bad_usage_exit_2(tmp_path: Path, args: list[str]) -> None:
    f = save_checkpoint(tmp_path / "bad.safetensors", nan_tensors())  # would be exit 1 if it got that far
    r = run_cli("check", *args, f)
    assert_one_error_line(r)
    assert r.stdout == ""  # a failed command writes nothing


def test_bad_usage_names_the_problem(tmp_path: Path) -> None:
    f = save_checkpoint(tmp_path / "a.safetensors", healthy_tensors())
    r = run_cli("check", "--rule", "nosuchcode=error", f)
    assert "nosuchcode" in r.stderr
    r = run_cli("check", "--exclude", "(", f)
    assert "--exclude" in r.stderr


@pytest.mark.parametrize("kind", ["missing", "corrupt", "folder-without-checkpoint"])
def test_unreadable_reference_is_usage_error(tmp_path: Path, kind: str) -> None:
    f = save_checkpoint(tmp_path / "a.safetensors", healthy_tensors())
    ref = tmp_path / "ref.safetensors"
    if kind == "corrupt":
        ref.write_bytes(os.urandom(64) + b"garbage")
    elif kind == "folder-without-checkpoint":
        ref = tmp_path / "empty"
        ref.mkdir()
    r = run_cli("check", "--reference", ref, f)
    assert_one_error_line(r)
    assert r.stdout == ""


def test_no_checkpoint_matched_by_glob_is_usage_error(tmp_path: Path) -> None:
    r = run_cli("check", str(tmp_path / "*.safetensors"))
    assert_one_error_line(r)


# ---------------------------------------------------------------------------------------- formats


def test_json_structure(tmp_path: Path) -> None:
    good = save_checkpoint(tmp_path / "good.pt", healthy_tensors())
    bad = save_checkpoint(tmp_path / "bad.safetensors", {**nan_tensors(), "dead.weight": torch.zeros(2, 2)})
    code, doc = check_json(good, bad)
    assert code == 1
    assert set(doc) == TOP_KEYS
    assert doc["exit_code"] == 1
    assert [Path(f["path"]).name for f in doc["files"]] == ["good.pt", "bad.safetensors"]  # given order
    for f in doc["files"]:
        assert set(f) == FILE_KEYS
        for x in f["findings"]:
            assert set(x) == FINDING_KEYS
            assert isinstance(x["message"], str) and x["message"]
    g, b = doc["files"]
    assert (g["format"], g["tensors"], g["status"], g["findings"]) == ("torch", 3, "pass", [])
    assert (b["format"], b["tensors"], b["status"]) == ("safetensors", 4, "fail")
    assert {(x["tensor"], x["code"], x["severity"]) for x in b["findings"]} == {
        ("fc.weight", "nan", "error"),
        ("dead.weight", "all_zero", "warning"),
    }
    nan = next(x for x in b["findings"] if x["code"] == "nan")
    assert "1 NaN" in nan["message"] and "12" in nan["message"]
    assert doc["summary"] == {"files": 2, "failed_files": 1, "errors": 1, "warnings": 1, "fail_on": "error"}


def test_json_exit_0_document(tmp_path: Path) -> None:
    code, doc = check_json(save_checkpoint(tmp_path / "a.safetensors", healthy_tensors()))
    assert code == 0
    assert doc["exit_code"] == 0
    assert doc["summary"] == {"files": 1, "failed_files": 0, "errors": 0, "warnings": 0, "fail_on": "error"}


def uninit_like() -> dict[str, torch.Tensor]:
    """One error (nan) and one warning (all_zero) in one file."""
    return {**nan_tensors(), "dead.weight": torch.zeros(3, 3)}


@pytest.mark.parametrize(
    ("fail_on", "expected_bad"),
    [("error", {"nan"}), ("warning", {"nan", "all_zero"})],
)
def test_junit(tmp_path: Path, fail_on: str, expected_bad: set[str]) -> None:
    good = save_checkpoint(tmp_path / "good.safetensors", healthy_tensors())
    bad = save_checkpoint(tmp_path / "bad.pt", uninit_like())
    warn = save_checkpoint(tmp_path / "warn.pt", warning_only_tensors())
    r = run_cli("check", good, bad, warn, "--format", "junit", "--fail-on", fail_on)
    assert r.exit_code == 1
    root = ET.fromstring(r.stdout.encode("utf-8"))  # stdout is one XML document
    cases = root.findall(".//testcase")
    assert len(cases) == 3  # one testcase per file
    by_file = {Path(c.get("name", "")).name: c for c in cases}
    assert set(by_file) == {"good.safetensors", "bad.pt", "warn.pt"}
    assert by_file["good.safetensors"].findall("failure") == []
    assert sorted(f.get("type") for f in by_file["bad.pt"].findall("failure")) == sorted(expected_bad)
    warn_failures = [f.get("type") for f in by_file["warn.pt"].findall("failure")]
    assert warn_failures == (["all_zero"] if fail_on == "warning" else [])
    for f in root.iter("failure"):
        assert f.get("message")
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None
    assert suite.get("tests") == "3"
    assert suite.get("failures") == ("2" if fail_on == "warning" else "1")


def test_junit_is_valid_xml_whatever_the_tensor_names(tmp_path: Path) -> None:
    t = healthy_tensors()
    t['ctl\x1bname<&>"x'] = torch.full((2, 2), math.nan)
    bad = save_checkpoint(tmp_path / "bad.safetensors", t)
    r = run_cli("check", bad, "--format", "junit")
    assert r.exit_code == 1
    root = ET.fromstring(r.stdout.encode("utf-8"))
    (failure,) = root.iter("failure")
    assert failure.get("type") == "nan"
    assert "ctl" in failure.get("message", "") and 'name<&>"x' in failure.get("message", "")


def test_junit_unreadable_file_is_a_failure(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(os.urandom(256))
    r = run_cli("check", corrupt, "--format", "junit")
    assert r.exit_code == 1
    root = ET.fromstring(r.stdout.encode("utf-8"))
    (case,) = root.findall(".//testcase")
    assert [f.get("type") for f in case.findall("failure")] == ["unreadable"]


def test_github_workflow_commands(tmp_path: Path) -> None:
    bad = save_checkpoint(tmp_path / "bad.safetensors", uninit_like())
    r = run_cli("check", bad, "--format", "github")
    assert r.exit_code == 1
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("::")]
    assert len(lines) == 2
    for ln in lines:
        assert GITHUB_LINE.match(ln), ln
    levels = sorted(GITHUB_LINE.match(ln).group(1) for ln in lines)  # type: ignore[union-attr]
    assert levels == ["error", "warning"]
    nan_line = next(ln for ln in lines if ln.startswith("::error"))
    assert "fc.weight" in nan_line and "nan" in nan_line
    # the file property names the checkpoint
    assert re.search(r"file=[^,]*bad\.safetensors,", nan_line)


def test_github_escapes_properties_and_message(tmp_path: Path) -> None:
    t = healthy_tensors()
    t["enc,layer:0.weight"] = torch.full((2, 2), math.nan)
    t["line1\nline2"] = torch.full((2, 2), math.inf)
    bad = save_checkpoint(tmp_path / "a,b:c.safetensors", t)
    r = run_cli("check", bad, "--format", "github")
    assert r.exit_code == 1
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("::")]
    assert len(lines) == 2, r.stdout  # the newline in the name did not split a command
    for ln in lines:
        assert GITHUB_LINE.match(ln), ln
        props, _, message = ln[2:].partition("::")
        file_prop = props.split(" ", 1)[1].split(",title=")[0]
        assert file_prop.endswith("a%2Cb%3Ac.safetensors"), file_prop
        assert "\n" not in message and "%2C" not in message and "%3A" not in message  # , and : stay plain
    nan_line = next(ln for ln in lines if "enc" in ln)
    title = nan_line.split(",title=", 1)[1].split("::", 1)[0]
    assert "enc%2Clayer%3A0.weight" in title
    assert "enc,layer:0.weight" in nan_line.split("::")[-1]  # in the message, plain
    inf_line = next(ln for ln in lines if "line1" in ln)
    assert "line1\\nline2" in inf_line.split("::")[-1]  # escaped as in every terminal format (SPEC 7)


# ------------------------------------------------------------------------------------- severities


def test_warning_only_passes_by_default_and_fails_with_fail_on_warning(tmp_path: Path) -> None:
    f = save_checkpoint(tmp_path / "w.safetensors", warning_only_tensors())
    code, doc = check_json(f)
    assert code == 0
    assert findings(doc) == {("w.safetensors", "dead.weight", "all_zero", "warning")}
    assert doc["files"][0]["status"] == "pass"
    code, doc = check_json(f, "--fail-on", "warning")
    assert code == 1
    assert doc["files"][0]["status"] == "fail"
    assert doc["summary"]["fail_on"] == "warning"
    assert doc["summary"]["failed_files"] == 1


def test_rule_raises_warning_to_error(tmp_path: Path) -> None:
    f = save_checkpoint(tmp_path / "w.safetensors", warning_only_tensors())
    code, doc = check_json(f, "--rule", "all_zero=error")
    assert code == 1
    assert findings(doc) == {("w.safetensors", "dead.weight", "all_zero", "error")}
    assert doc["summary"]["errors"] == 1 and doc["summary"]["warnings"] == 0


def test_rule_lowers_error_to_warning(tmp_path: Path) -> None:
    f = save_checkpoint(tmp_path / "n.pt", nan_tensors())
    code, doc = check_json(f, "--rule", "nan=warning")
    assert code == 0
    assert findings(doc) == {("n.pt", "fc.weight", "nan", "warning")}
    # and with --fail-on warning the lowered finding still fails
    code, _ = check_json(f, "--rule", "nan=warning", "--fail-on", "warning")
    assert code == 1


def test_rule_off_silences(tmp_path: Path) -> None:
    f = save_checkpoint(tmp_path / "n.pt", nan_tensors())
    code, doc = check_json(f, "--rule", "nan=off")
    assert code == 0
    assert findings(doc) == set()
    r = run_cli("check", f, "--rule", "nan=off")
    assert r.exit_code == 0
    assert "nan" not in r.stdout.lower()


def test_max_abs_option(tmp_path: Path) -> None:
    f = save_checkpoint(tmp_path / "h.safetensors", {"w": torch.tensor([[1.0, 50.0], [2.0, 3.0]])})
    assert check_json(f)[0] == 0  # default 1e6
    code, doc = check_json(f, "--max-abs", "10")
    assert code == 1
    assert findings(doc) == {("h.safetensors", "w", "huge", "error")}


# ----------------------------------------------------------------------------- pyproject settings


PYPROJECT = """\
[project]
name = "demo"

[tool.pinit.check]
fail-on = "warning"
rules = { nan = "off" }
max-abs = 10.0
exclude = ["^skip\\\\."]
"""


def pyproject_case(tmp_path: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT, encoding="utf-8")
    return save_checkpoint(
        tmp_path / "m.safetensors",
        {
            "dead.weight": torch.zeros(3, 3),  # all_zero warning -> fails under fail-on = warning
            "nan.weight": torch.tensor([[1.0, math.nan], [2.0, 3.0]]),  # nan = off
            "big.weight": torch.tensor([[1.0, 100.0], [2.0, 3.0]]),  # huge under max-abs = 10
            "skip.weight": torch.tensor([[1.0, math.inf], [2.0, 3.0]]),  # excluded
        },
    )


def test_pyproject_settings_apply(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = pyproject_case(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, doc = check_json(f.name)
    assert code == 1
    assert doc["summary"]["fail_on"] == "warning"
    assert findings(doc) == {
        ("m.safetensors", "dead.weight", "all_zero", "warning"),
        ("m.safetensors", "big.weight", "huge", "error"),
    }
    # run from elsewhere (no pyproject.toml above): the defaults, so nan and inf are found, 100 is not huge
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    _, doc = check_json(f)
    assert {(t, c) for _, t, c, _ in findings(doc)} == {
        ("dead.weight", "all_zero"),
        ("nan.weight", "nan"),
        ("skip.weight", "inf"),
    }


def test_pyproject_found_from_subfolder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = pyproject_case(tmp_path)
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    _, doc = check_json(f)
    assert doc["summary"]["fail_on"] == "warning"
    assert ("m.safetensors", "nan.weight", "nan", "error") not in findings(doc)


def test_options_override_pyproject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = pyproject_case(tmp_path)
    monkeypatch.chdir(tmp_path)
    # --max-abs beats max-abs: 100 is no longer huge; the all_zero warning still fails (fail-on = warning)
    code, doc = check_json(f.name, "--max-abs", "1000")
    assert code == 1
    assert findings(doc) == {("m.safetensors", "dead.weight", "all_zero", "warning")}
    # --fail-on error beats fail-on = "warning": only the warning is left, so it passes
    code, doc = check_json(f.name, "--max-abs", "1000", "--fail-on", "error")
    assert code == 0
    assert doc["summary"]["fail_on"] == "error"
    # --rule beats the file's rules
    code, doc = check_json(f.name, "--max-abs", "1000", "--fail-on", "error", "--rule", "nan=error")
    assert code == 1
    assert ("m.safetensors", "nan.weight", "nan", "error") in findings(doc)


@pytest.mark.parametrize(
    "table",
    [
        'fail-on = "sometimes"',
        'rules = { nan = "bogus" }',
        'rules = { nosuchcode = "error" }',
        'exclude = ["("]',
        "max-abs = -1",
        'no-such-key = "x"',
        "fail-on = ",  # not TOML
        'max-abs = "big"',
        "fail-on = 3",
        "exclude = [1]",
    ],
)
def test_bad_pyproject_setting_is_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str) -> None:
    (tmp_path / "pyproject.toml").write_text(f"[tool.pinit.check]\n{table}\n", encoding="utf-8")
    f = save_checkpoint(tmp_path / "a.safetensors", nan_tensors())
    monkeypatch.chdir(tmp_path)
    r = run_cli("check", f.name)
    assert_one_error_line(r)
    assert "internal error" not in r.stderr
    assert r.stdout == ""


# -------------------------------------------------------------------------------------- reference


def reference_case(tmp_path: Path) -> tuple[Path, Path]:
    ref = save_checkpoint(
        tmp_path / "ref.safetensors",
        {
            "w": torch.linspace(-1, 1, 12).reshape(4, 3),
            "b": torch.linspace(-1, 1, 4),
            "gone": torch.linspace(1, 2, 2),
            "same": torch.linspace(1, 2, 6).reshape(2, 3),
        },
    )
    f = save_checkpoint(
        tmp_path / "model.pt",
        {
            "w": torch.linspace(-1, 1, 12).reshape(3, 4),  # shape_mismatch
            "b": torch.linspace(-1, 1, 4).half(),  # dtype_mismatch
            "new": torch.linspace(1, 2, 2),  # unexpected
            "same": torch.linspace(1, 2, 6).reshape(2, 3),
        },
    )
    return f, ref


EXPECTED_REFERENCE = {
    ("model.pt", "w", "shape_mismatch", "error"),
    ("model.pt", "b", "dtype_mismatch", "error"),
    ("model.pt", "gone", "missing", "error"),
    ("model.pt", "new", "unexpected", "error"),
}


def test_reference_mismatches(tmp_path: Path) -> None:
    f, ref = reference_case(tmp_path)
    assert check_json(f)[0] == 0  # healthy values on their own
    code, doc = check_json(f, "--reference", ref)
    assert code == 1
    assert findings(doc) == EXPECTED_REFERENCE
    msgs = {x["code"]: x["message"] for x in doc["files"][0]["findings"]}
    assert "[3, 4]" in msgs["shape_mismatch"] and "[4, 3]" in msgs["shape_mismatch"]
    assert "float16" in msgs["dtype_mismatch"] and "float32" in msgs["dtype_mismatch"]


@pytest.mark.parametrize("code", ["missing", "unexpected", "shape_mismatch", "dtype_mismatch"])
def test_reference_codes_follow_rules(tmp_path: Path, code: str) -> None:
    f, ref = reference_case(tmp_path)
    _, doc = check_json(f, "--reference", ref, "--rule", f"{code}=off")
    assert findings(doc) == {x for x in EXPECTED_REFERENCE if x[2] != code}


def test_reference_against_itself_passes(tmp_path: Path) -> None:
    f, _ = reference_case(tmp_path)
    code, doc = check_json(f, "--reference", f)
    assert code == 0
    assert findings(doc) == set()
    # across formats too: the sample .pt against its .safetensors twin
    pt = shutil.copy(SAMPLES / "tiny_cnn.pt", tmp_path)
    st = shutil.copy(SAMPLES / "tiny_cnn.safetensors", tmp_path)
    assert check_json(pt, "--reference", st)[0] == 0


def test_reference_from_pyproject_is_relative_to_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f, _ = reference_case(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[tool.pinit.check]\nreference = "ref.safetensors"\n', encoding="utf-8")
    sub = tmp_path / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)  # ref.safetensors is not in the working directory, only beside pyproject.toml
    code, doc = check_json(f)
    assert code == 1
    assert findings(doc) == EXPECTED_REFERENCE
    # --reference beats the file's reference
    code, doc = check_json(f, "--reference", f)
    assert code == 0


# ------------------------------------------------------------------------------- unreadable inputs


def test_corrupt_file_is_unreadable_finding(tmp_path: Path) -> None:
    a = save_checkpoint(tmp_path / "a.safetensors", healthy_tensors())
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(bytes(range(256)) * 4 + os.urandom(100))
    b = save_checkpoint(tmp_path / "b.pt", healthy_tensors())
    code, doc = check_json(a, corrupt, b)
    assert code == 1
    files = by_name(doc)
    assert list(files) == ["a.safetensors", "corrupt.pt", "b.pt"]
    assert files["a.safetensors"]["status"] == "pass" and files["a.safetensors"]["tensors"] == 3
    assert files["b.pt"]["status"] == "pass" and files["b.pt"]["tensors"] == 3
    bad = files["corrupt.pt"]
    assert bad["status"] == "fail"
    assert bad["format"] is None
    assert [(x["tensor"], x["code"], x["severity"]) for x in bad["findings"]] == [(None, "unreadable", "error")]
    assert doc["summary"]["failed_files"] == 1


def test_truncated_safetensors_is_unreadable(tmp_path: Path) -> None:
    good = save_checkpoint(tmp_path / "good.safetensors", healthy_tensors())
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-10])
    code, doc = check_json(good, cut)
    assert code == 1
    assert findings(doc) == {("cut.safetensors", None, "unreadable", "error")}
    assert by_name(doc)["good.safetensors"]["status"] == "pass"


def test_nonexistent_path_is_unreadable_finding(tmp_path: Path) -> None:
    a = save_checkpoint(tmp_path / "a.safetensors", healthy_tensors())
    code, doc = check_json(tmp_path / "nope.safetensors", a)
    assert code == 1
    assert findings(doc) == {("nope.safetensors", None, "unreadable", "error")}
    assert by_name(doc)["a.safetensors"]["status"] == "pass"


def test_unreadable_rule_off(tmp_path: Path) -> None:
    a = save_checkpoint(tmp_path / "a.safetensors", healthy_tensors())
    code, doc = check_json(tmp_path / "nope.pt", a, "--rule", "unreadable=warning")
    assert code == 0
    assert findings(doc) == {("nope.pt", None, "unreadable", "warning")}


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_unsafe_pickle_is_unreadable_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.linspace(0, 1, 4), "payload": _RunsCode(marker)}, evil)
    legacy = tmp_path / "evil_legacy.pt"
    torch.save({"payload": _RunsCode(marker)}, legacy, _use_new_zipfile_serialization=False)
    assert not marker.exists()
    good = save_checkpoint(tmp_path / "good.safetensors", healthy_tensors())
    code, doc = check_json(evil, legacy, good)
    assert code == 1
    assert not marker.exists()  # the pickle's code never ran
    assert findings(doc) == {
        ("evil.pt", None, "unreadable", "error"),
        ("evil_legacy.pt", None, "unreadable", "error"),
    }
    assert by_name(doc)["good.safetensors"]["status"] == "pass"
    msg = by_name(doc)["evil.pt"]["findings"][0]["message"]
    assert "system" in msg  # names the refused global


# ------------------------------------------------------------------------------------------ paths


def test_folder_is_searched_recursively(tmp_path: Path) -> None:
    root = tmp_path / "models"
    save_checkpoint(root / "a.safetensors", healthy_tensors())
    save_checkpoint(root / "sub" / "deeper" / "b.pt", healthy_tensors())
    save_checkpoint(root / "sub" / "c.ckpt", nan_tensors())
    (root / "notes.txt").write_text("not a checkpoint")
    (root / "sub" / "train.py").write_text("print('hi')\n")
    code, doc = check_json(root)
    assert code == 1
    assert sorted(Path(f["path"]).relative_to(root).as_posix() for f in doc["files"]) == [
        "a.safetensors",
        "sub/c.ckpt",
        "sub/deeper/b.pt",
    ]
    assert findings(doc) == {("c.ckpt", "fc.weight", "nan", "error")}


def test_sharded_folder_counts_once(tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(SAMPLES / "sharded", root / "sharded")
    save_checkpoint(root / "single.safetensors", healthy_tensors())
    code, doc = check_json(root)
    assert code == 0
    names = sorted(Path(f["path"]).name for f in doc["files"])
    assert names == ["model.safetensors.index.json", "single.safetensors"]  # no shard listed on its own
    sharded = by_name(doc)["model.safetensors.index.json"]
    assert sharded["format"] == "sharded"
    assert sharded["tensors"] == 16
    # the sharded folder itself, given directly
    code, doc = check_json(root / "sharded")
    assert code == 0 and doc["summary"]["files"] == 1


def test_broken_shard_is_found_through_index(tmp_path: Path) -> None:
    shards = shutil.copytree(SAMPLES / "sharded", tmp_path / "sharded")
    from safetensors.torch import load_file

    shard = shards / "model-00002-of-00002.safetensors"
    t = load_file(str(shard))
    t["fc.weight"] = t["fc.weight"].clone()
    t["fc.weight"].view(-1)[0] = math.nan
    save_file(t, str(shard))
    code, doc = check_json(shards)
    assert code == 1
    assert findings(doc) == {("model.safetensors.index.json", "fc.weight", "nan", "error")}


def test_glob_expands(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "a.safetensors", healthy_tensors())
    save_checkpoint(tmp_path / "b.safetensors", nan_tensors())
    save_checkpoint(tmp_path / "c.pt", nan_tensors())  # not matched by the glob
    code, doc = check_json(str(tmp_path / "*.safetensors"))
    assert code == 1
    assert sorted(Path(f["path"]).name for f in doc["files"]) == ["a.safetensors", "b.safetensors"]
    code, doc = check_json(str(tmp_path / "a.*"))
    assert code == 0 and [Path(f["path"]).name for f in doc["files"]] == ["a.safetensors"]


def test_exclude_drops_tensors(tmp_path: Path) -> None:
    t = healthy_tensors()
    t["enc.nan"] = torch.tensor([[math.nan, 1.0], [2.0, 3.0]])
    t["dec.inf"] = torch.tensor([[math.inf, 1.0], [2.0, 3.0]])
    f = save_checkpoint(tmp_path / "x.safetensors", t)
    _, doc = check_json(f)
    assert {x[1] for x in findings(doc)} == {"enc.nan", "dec.inf"}
    code, doc = check_json(f, "--exclude", r"^enc\.")
    assert code == 1
    assert {x[1] for x in findings(doc)} == {"dec.inf"}
    code, doc = check_json(f, "--exclude", r"^enc\.", "-x", "inf$")  # repeatable
    assert code == 0
    assert findings(doc) == set()


# -------------------------------------------------------------------------------- pre-commit hook


def test_pre_commit_hook(tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    hook = next(h for h in hooks if h["id"] == "pinit-check")
    files_re = re.compile(hook["files"])
    for name in ["m.safetensors", "m.pt", "m.pth", "m.bin", "sub/m.ckpt"]:
        assert files_re.search(name), name
    for name in ["train.py", "m.safetensors.index.json", "README.md", "m.pt.py"]:
        assert not files_re.search(name), name
    assert hook.get("language") == "python"

    words = shlex.split(hook["entry"])
    assert words[0] == "pinit"
    good = save_checkpoint(tmp_path / "good.safetensors", healthy_tensors())
    good2 = save_checkpoint(tmp_path / "good2.pt", healthy_tensors())
    bad = save_checkpoint(tmp_path / "bad.pt", nan_tensors())

    def run(*files: Path) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "pinit", *words[1:], *hook.get("args", []), *map(str, files)]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)

    ok = run(good, good2)
    assert ok.returncode == 0, (ok.stdout, ok.stderr)
    failed = run(good, bad)
    assert failed.returncode == 1, (failed.stdout, failed.stderr)
    assert "bad.pt" in failed.stdout and "nan" in failed.stdout
