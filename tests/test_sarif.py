"""``pinit check --format sarif`` (SPEC section 5): SARIF 2.1.0 for GitHub code scanning.

Every document is validated against the official SARIF 2.1.0 JSON schema, vendored in
``tests/data/sarif-schema-2.1.0.json`` (source and licence next to it), and held to what GitHub code
scanning needs: a rule per check code with the texts it shows, a location per result, a fingerprint
per finding.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jsonschema
import pytest
import torch

import pinit
from conftest import SAMPLES, run_cli, save_checkpoint
from pinit.check import CHECK_CODES, FILE_CODES, REFERENCE_CODES, CheckSettings, run_check
from pinit.flags import FLAG_CODES

SCHEMA_PATH = Path(__file__).parent / "data" / "sarif-schema-2.1.0.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft4Validator(SCHEMA, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)
# RFC 3986 URI reference: only unreserved, reserved and percent-encoded octets
URI_CHARS = re.compile(r"^(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-F]{2})*$")


@pytest.fixture(autouse=True)
def _outside_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from tmp_path: no pyproject.toml of the repository applies settings, relative paths are short."""
    monkeypatch.chdir(tmp_path)


def healthy() -> dict[str, torch.Tensor]:
    return {"fc.weight": torch.linspace(-1.0, 1.0, 12).reshape(4, 3), "fc.bias": torch.zeros(4)}


def validate(doc: dict[str, Any]) -> None:
    """Valid against the SARIF 2.1.0 schema, and what GitHub code scanning needs of it."""
    errors = sorted(VALIDATOR.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])
    assert doc["version"] == "2.1.0" and doc["$schema"]
    (run,) = doc["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "pinit" and driver["version"] == pinit.__version__
    for rule in driver["rules"]:
        for key in ("shortDescription", "fullDescription", "help"):
            assert 0 < len(rule[key]["text"]) <= 1024, (rule["id"], key)  # GitHub's limit
    uris = [a["location"]["uri"] for a in run["artifacts"]]
    for result in run["results"]:
        assert result["message"]["text"]
        loc = result["locations"][0]["physicalLocation"]["artifactLocation"]
        assert loc["uri"] == uris[loc["index"]]
        assert "region" not in result["locations"][0]["physicalLocation"]  # a binary file has no lines
        assert result["partialFingerprints"]["primaryLocationLineHash"]
    for uri in uris:
        assert URI_CHARS.match(uri), uri


def sarif(*args: str | os.PathLike[str], exit_code: int | None = None) -> dict[str, Any]:
    r = run_cli("check", *args, "--format", "sarif")
    assert r.exit_code in (0, 1), (r.exit_code, r.stdout, r.stderr)
    if exit_code is not None:
        assert r.exit_code == exit_code, (r.stdout, r.stderr)
    doc = json.loads(r.stdout)  # stdout is one JSON document and nothing else
    validate(doc)
    assert doc["runs"][0]["invocations"][0]["exitCode"] == r.exit_code
    return doc


def results(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["runs"][0]["results"]


def rules(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["runs"][0]["tool"]["driver"]["rules"]


def triples(doc: dict[str, Any]) -> set[tuple[str | None, str, str]]:
    """(tensor, rule id, level) of every result."""
    return {(x["properties"]["tensor"], x["ruleId"], x["level"]) for x in results(doc)}


def json_triples(*args: str | os.PathLike[str]) -> set[tuple[str | None, str, str]]:
    doc = run_cli("check", *args, "--format", "json").json()
    return {(x["tensor"], x["code"], x["severity"]) for f in doc["files"] for x in f["findings"]}


# -------------------------------------------------------------------------------------- the schema


def test_vendored_schema_is_the_official_one() -> None:
    jsonschema.Draft4Validator.check_schema(SCHEMA)
    assert SCHEMA["id"] == "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
    assert (SCHEMA_PATH.parent / "sarif-schema-2.1.0.json.SOURCE.md").is_file()
    # the validator rejects what is not SARIF, so a pass means something
    assert list(VALIDATOR.iter_errors({"version": "2.1.0", "runs": [{"tool": {}}]}))
    assert list(VALIDATOR.iter_errors({"version": "2.0.0", "runs": []}))


# ------------------------------------------------------------------------------------------- rules


def test_one_rule_per_check_code_with_descriptions_and_levels(tmp_path: Path) -> None:
    good = save_checkpoint(tmp_path / "good.safetensors", healthy())
    doc = sarif(good, exit_code=0)
    assert [r["id"] for r in rules(doc)] == list(CHECK_CODES)
    for rule in rules(doc):
        code = rule["id"]
        want = FLAG_CODES[code][1] if code in FLAG_CODES else {**REFERENCE_CODES, **FILE_CODES}[code]
        assert rule["shortDescription"]["text"] == want
        assert want in rule["fullDescription"]["text"]
        assert rule["defaultConfiguration"]["level"] == {"error": "error", "warning": "warning"}[CHECK_CODES[code]]
        assert f"--rule {code}=" in rule["help"]["text"]
    assert set(FILE_CODES) == {"unreadable", "no_tensors"}


# ---------------------------------------------------------------------------------------- results


def test_clean_file_has_no_results_and_exits_0(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "good.safetensors", healthy())
    doc = sarif("good.safetensors", exit_code=0)
    assert results(doc) == []
    (artifact,) = doc["runs"][0]["artifacts"]
    assert artifact["location"]["uri"] == "good.safetensors"
    assert artifact["properties"] == {"format": "safetensors", "tensors": 2, "status": "pass"}


def test_sample_uninit_cnn(tmp_path: Path) -> None:
    (tmp_path / "ckpts").mkdir()
    shutil.copy(SAMPLES / "uninit_cnn.pt", tmp_path / "ckpts")
    rel = os.path.join("ckpts", "uninit_cnn.pt")
    doc = sarif(rel, exit_code=1)
    res = results(doc)
    assert {x["level"] for x in res} == {"error", "warning"}
    assert triples(doc) == json_triples(rel)  # one result per finding, nothing lost or added
    assert len(res) == len(triples(doc))
    ids = [r["id"] for r in rules(doc)]
    json_doc = run_cli("check", rel, "--format", "json").json()
    messages = [x["message"] for x in json_doc["files"][0]["findings"]]
    for x, message in zip(res, messages, strict=True):
        assert x["ruleId"] in FLAG_CODES
        assert ids[x["ruleIndex"]] == x["ruleId"]
        tensor = x["properties"]["tensor"]
        assert x["message"]["text"] == f"{tensor}: {message}"
        loc = x["locations"][0]
        assert loc["physicalLocation"]["artifactLocation"]["uri"] == "ckpts/uninit_cnn.pt"  # relative stays relative
        assert loc["logicalLocations"] == [{"fullyQualifiedName": tensor, "kind": "variable"}]
    fingerprints = [x["partialFingerprints"]["primaryLocationLineHash"] for x in res]
    assert len(set(fingerprints)) == len(fingerprints)  # one alert per finding on GitHub, not one per file
    assert doc["runs"][0]["invocations"][0]["properties"]["summary"]["errors"] >= 1


def test_fingerprints_are_stable_across_runs_and_files(tmp_path: Path) -> None:
    shutil.copy(SAMPLES / "uninit_cnn.pt", tmp_path / "a.pt")
    first = [x["partialFingerprints"] for x in results(sarif("a.pt"))]
    assert first == [x["partialFingerprints"] for x in results(sarif("a.pt"))]
    shutil.copy(SAMPLES / "uninit_cnn.pt", tmp_path / "b.pt")
    both = results(sarif("a.pt", "b.pt"))
    locs = [x["locations"][0]["physicalLocation"]["artifactLocation"] for x in both]
    assert [loc["uri"] for loc in locs] == ["a.pt"] * len(first) + ["b.pt"] * len(first)
    assert [loc["index"] for loc in locs] == [0] * len(first) + [1] * len(first)
    # the same finding in another file: same fingerprint (GitHub tells them apart by the location)
    assert [x["partialFingerprints"] for x in both] == first + first


def test_unreadable_file_is_a_result_without_tensor(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(os.urandom(256))
    good = save_checkpoint(tmp_path / "good.safetensors", healthy())
    doc = sarif(good, corrupt, tmp_path / "missing.safetensors", exit_code=1)
    res = results(doc)
    assert [(x["ruleId"], x["level"], x["properties"]["tensor"]) for x in res] == [
        ("unreadable", "error", None),
        ("unreadable", "error", None),
    ]
    ids = [r["id"] for r in rules(doc)]
    for x in res:
        assert ids[x["ruleIndex"]] == "unreadable"
        assert "logicalLocations" not in x["locations"][0]
        assert not x["message"]["text"].startswith("None")
    uris = [a["location"]["uri"] for a in doc["runs"][0]["artifacts"]]
    assert [Path(u).name for u in uris] == ["good.safetensors", "corrupt.pt", "missing.safetensors"]
    assert doc["runs"][0]["artifacts"][1]["properties"]["format"] is None


class _RunsCode:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("true",))


def test_unsafe_pickle_lists_the_refused_globals(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.linspace(0, 1, 4), "payload": _RunsCode()}, evil)
    (x,) = results(sarif(evil, exit_code=1))
    assert x["ruleId"] == "unreadable"
    assert any("system" in g for g in x["properties"]["globals"])


def test_no_tensors_is_a_result_of_the_file(tmp_path: Path) -> None:
    f = save_checkpoint(tmp_path / "f.safetensors", healthy())
    (x,) = results(sarif(f, "--exclude", ".", exit_code=1))
    assert (x["ruleId"], x["level"], x["properties"]["tensor"]) == ("no_tensors", "error", None)


# ---------------------------------------------------------------------------------------- --rule


def test_rule_changes_the_level_not_the_default(tmp_path: Path) -> None:
    t = healthy()
    t["dead.weight"] = torch.zeros(3, 3)  # all_zero: a warning by default
    t["bad.weight"] = torch.full((2, 2), math.nan)  # nan: an error
    f = save_checkpoint(tmp_path / "f.safetensors", t)
    assert triples(sarif(f, exit_code=1)) == {("dead.weight", "all_zero", "warning"), ("bad.weight", "nan", "error")}
    doc = sarif(f, "--rule", "all_zero=error", "--rule", "nan=warning", exit_code=1)
    assert triples(doc) == {("dead.weight", "all_zero", "error"), ("bad.weight", "nan", "warning")}
    by_id = {r["id"]: r for r in rules(doc)}
    assert by_id["all_zero"]["defaultConfiguration"]["level"] == "warning"  # the rule's default is unchanged
    overrides = {o["descriptor"]["id"]: o for o in doc["runs"][0]["invocations"][0]["ruleConfigurationOverrides"]}
    assert overrides["all_zero"]["configuration"] == {"level": "error"}
    assert overrides["nan"]["configuration"] == {"level": "warning"}
    ids = [r["id"] for r in rules(doc)]
    assert all(ids[o["descriptor"]["index"]] == code for code, o in overrides.items())
    # off: no result, and the override says the rule was disabled
    doc = sarif(f, "--rule", "nan=off", exit_code=0)
    assert triples(doc) == {("dead.weight", "all_zero", "warning")}
    (override,) = doc["runs"][0]["invocations"][0]["ruleConfigurationOverrides"]
    assert override["configuration"] == {"enabled": False}
    # the level after --rule decides the exit code, as in every format
    assert sarif(f, "--rule", "nan=warning", "--fail-on", "warning", exit_code=1)


# ------------------------------------------------------------------------------------ --reference


def test_reference_mismatch_codes(tmp_path: Path) -> None:
    ref = save_checkpoint(
        tmp_path / "ref.safetensors",
        {
            "w": torch.linspace(-1, 1, 12).reshape(4, 3),
            "b": torch.linspace(-1, 1, 4),
            "gone": torch.linspace(1, 2, 2),
        },
    )
    f = save_checkpoint(
        tmp_path / "model.pt",
        {
            "w": torch.linspace(-1, 1, 12).reshape(3, 4),
            "b": torch.linspace(-1, 1, 4).half(),
            "new": torch.linspace(1, 2, 2),
        },
    )
    doc = sarif(f, "--reference", ref, exit_code=1)
    assert triples(doc) == {
        ("w", "shape_mismatch", "error"),
        ("b", "dtype_mismatch", "error"),
        ("gone", "missing", "error"),
        ("new", "unexpected", "error"),
    }
    ids = [r["id"] for r in rules(doc)]
    for x in results(doc):
        assert x["ruleId"] in REFERENCE_CODES and ids[x["ruleIndex"]] == x["ruleId"]
        assert x["message"]["text"].startswith(f"{x['properties']['tensor']}: ")


# ------------------------------------------------------------------------------ names and paths


def test_names_are_kept_exactly(tmp_path: Path) -> None:
    names = [
        'say "hi".weight',
        "line1\nline2\r\n.weight",
        "tab\there\\back\\slash",
        "ünïcødé.重み.веса.🙂",
        "\x1b[31mred\x1b[0m\x00nul",
        "x" * 5000,  # long: a machine format never shortens
    ]
    t = healthy()
    for name in names:
        t[name] = torch.full((2, 2), math.nan)
    f = save_checkpoint(tmp_path / "names.safetensors", t)
    r = run_cli("check", f, "--format", "sarif")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    validate(doc)
    res = {x["properties"]["tensor"]: x for x in results(doc)}
    assert set(res) == set(names)
    for name, x in res.items():
        assert x["locations"][0]["logicalLocations"][0]["fullyQualifiedName"] == name
        assert x["message"]["text"].startswith(name + ": ")
    assert "\x1b" not in r.stdout and "\x00" not in r.stdout  # JSON escaped them; the text holds no raw control


@pytest.mark.parametrize(
    ("rel", "uri"),
    [
        ("plain/model.safetensors", "plain/model.safetensors"),
        ("with space/a b.safetensors", "with%20space/a%20b.safetensors"),
        ("odd/100%#1?.safetensors", "odd/100%25%231%3F.safetensors"),
        ("c:d/x.safetensors", "c%3Ad/x.safetensors"),  # a ':' in the first segment would read as a scheme
        ("модель/ü.safetensors", "%D0%BC%D0%BE%D0%B4%D0%B5%D0%BB%D1%8C/%C3%BC.safetensors"),
    ],
)
def test_paths_are_percent_encoded_relative_uris(tmp_path: Path, rel: str, uri: str) -> None:
    save_checkpoint(tmp_path / rel, healthy())
    doc = sarif(rel, exit_code=0)
    (artifact,) = doc["runs"][0]["artifacts"]
    assert artifact["location"]["uri"] == uri
    assert unquote(uri) == rel


def test_absolute_path_is_a_file_uri(tmp_path: Path) -> None:
    f = save_checkpoint(tmp_path / "a b" / "abs.safetensors", {"w": torch.full((2, 2), math.nan)})
    doc = sarif(f.resolve(), exit_code=1)
    uri = results(doc)[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri == f.resolve().as_uri() and uri.startswith("file:///") and "%20" in uri


# ------------------------------------------------------------------------------------------ misc


def test_bad_usage_exits_2_with_nothing_on_stdout(tmp_path: Path) -> None:
    f = save_checkpoint(tmp_path / "f.safetensors", healthy())
    r = run_cli("check", f, "--format", "sarif", "--rule", "bogus=error")
    assert r.exit_code == 2
    assert r.stdout == ""


def test_python_api_gives_the_same_document(tmp_path: Path) -> None:
    shutil.copy(SAMPLES / "uninit_cnn.pt", tmp_path)
    report = run_check(["uninit_cnn.pt"], CheckSettings())
    doc = report.as_sarif()
    validate(doc)
    assert json.loads(json.dumps(doc)) == sarif("uninit_cnn.pt")


def test_readme_documents_sarif_and_the_upload() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert "--format sarif > pinit.sarif" in readme
    assert "github/codeql-action/upload-sarif@v3" in readme and "sarif_file: pinit.sarif" in readme
    assert "security-events: write" in readme
