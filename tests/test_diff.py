"""``pinit diff A B`` (SPEC section 5, 6, 7), through the real CLI.

JSON document of ``pinit diff --format json`` (the structure these tests hold the product to)::

    {"a": "...", "b": "...", "atol": 0.0, "rtol": 0.0,
     "tensors": [{"name": "...",
                  "status": "identical|within_tolerance|changed|shape_changed|dtype_changed|only_in_a|only_in_b",
                  "shape_a": [..] | null, "shape_b": [..] | null, "dtype_a": "float32" | null,
                  "dtype_b": "float32" | null, "max_abs_diff": 0.0 | null, "rel_l2_diff": 0.0 | null,
                  "mismatched": 0 | null,
                  "values": "identical|within_tolerance|changed" | null,
                  "nan_mismatch": 0 | null, "inf_mismatch": 0 | null}],
     "summary": {"identical": 0, "within_tolerance": 0, "changed": 0, "shape_changed": 0,
                 "dtype_changed": 0, "only_in_a": 0, "only_in_b": 0, "tensors": 0, "equal": true}}
"""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SAMPLES, assert_one_error_line, run_cli, save_checkpoint

TOP_KEYS = {"a", "b", "atol", "rtol", "tensors", "ties", "summary"}
TENSOR_KEYS = {
    "name",
    "status",
    "shape_a",
    "shape_b",
    "dtype_a",
    "dtype_b",
    "max_abs_diff",
    "rel_l2_diff",
    "mismatched",
    # added with issue 11: the value comparison (also across dtypes) and NaN/Inf position mismatches
    "values",
    "nan_mismatch",
    "inf_mismatch",
}
STATUSES = ["identical", "within_tolerance", "changed", "shape_changed", "dtype_changed", "only_in_a", "only_in_b"]
SUMMARY_KEYS = {*STATUSES, "tensors", "equal"}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def base() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    return {
        "enc.weight": torch.randn(8, 5, generator=g),
        "enc.bias": torch.randn(8, generator=g),
        "dec.weight": torch.randn(3, 8, generator=g).to(torch.float64),
        "steps": torch.tensor([1, 2, 3], dtype=torch.int64),
    }


def diff_json(a: Path | str, b: Path | str, *args: str) -> tuple[int, dict]:
    r = run_cli("diff", a, b, *args, "--format", "json")
    assert r.exit_code in (0, 1), (r.exit_code, r.stdout, r.stderr)
    doc = r.json()  # stdout is one JSON document and nothing else
    assert set(doc) == TOP_KEYS
    assert set(doc["summary"]) == SUMMARY_KEYS
    assert doc["summary"]["equal"] is (r.exit_code == 0)
    for t in doc["tensors"]:
        assert set(t) == TENSOR_KEYS
        assert t["status"] in STATUSES
    return r.exit_code, doc


def statuses(doc: dict) -> dict[str, str]:
    return {t["name"]: t["status"] for t in doc["tensors"]}


def entry(doc: dict, name: str) -> dict:
    return next(t for t in doc["tensors"] if t["name"] == name)


# ---------------------------------------------------------------------------------------- equality


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_identical_files(tmp_path: Path, suffix: str) -> None:
    a = save_checkpoint(tmp_path / f"a{suffix}", base())
    b = save_checkpoint(tmp_path / f"b{suffix}", base())
    code, doc = diff_json(a, b)
    assert code == 0
    assert statuses(doc) == dict.fromkeys(base(), "identical")
    for t in doc["tensors"]:
        assert t["max_abs_diff"] == 0 and t["rel_l2_diff"] == 0 and t["mismatched"] == 0
        assert t["shape_a"] == t["shape_b"] and t["dtype_a"] == t["dtype_b"]
    assert doc["summary"]["identical"] == 4 and doc["summary"]["tensors"] == 4
    r = run_cli("diff", a, b)  # the table format
    assert r.exit_code == 0
    assert r.stdout.strip().splitlines()[-1].startswith("equal:")


def test_same_file_twice(tmp_path: Path) -> None:
    f = shutil.copy(SAMPLES / "lightning.ckpt", tmp_path)
    code, doc = diff_json(f, f)
    assert code == 0
    assert doc["summary"]["identical"] == doc["summary"]["tensors"] > 0


def test_reordered_keys_are_equal(tmp_path: Path) -> None:
    t = base()
    a = save_checkpoint(tmp_path / "a.safetensors", t)
    b = save_checkpoint(tmp_path / "b.pt", dict(reversed(list(t.items()))))
    c = save_checkpoint(tmp_path / "c.pt", t)
    code, doc = diff_json(a, b)
    assert code == 0
    assert set(statuses(doc).values()) == {"identical"}
    code, _ = diff_json(b, c)
    assert code == 0


@pytest.mark.parametrize(("sa", "sb"), [(".pt", ".safetensors"), (".safetensors", ".pt")])
def test_cross_format_pairs_are_equal(tmp_path: Path, sa: str, sb: str) -> None:
    a = save_checkpoint(tmp_path / f"a{sa}", base())
    b = save_checkpoint(tmp_path / f"b{sb}", base())
    code, doc = diff_json(a, b)
    assert code == 0
    assert set(statuses(doc).values()) == {"identical"}


def test_sample_pt_vs_safetensors_and_sharded(tmp_path: Path) -> None:
    pt = shutil.copy(SAMPLES / "tiny_cnn.pt", tmp_path)
    st = shutil.copy(SAMPLES / "tiny_cnn.safetensors", tmp_path)
    sharded = shutil.copytree(SAMPLES / "sharded", tmp_path / "sharded")
    code, doc = diff_json(pt, st)
    assert code == 0 and doc["summary"]["identical"] == 16
    code, doc = diff_json(st, sharded)
    assert code == 0 and doc["summary"]["identical"] == 16


def test_nan_at_same_positions_is_equal(tmp_path: Path) -> None:
    w = torch.tensor([[1.0, math.nan, 3.0], [math.inf, -math.inf, 6.0]])
    a = save_checkpoint(tmp_path / "a.safetensors", {"w": w})
    b = save_checkpoint(tmp_path / "b.pt", {"w": w.clone()})
    code, doc = diff_json(a, b)
    assert code == 0
    assert statuses(doc) == {"w": "identical"}


def test_nan_with_other_bit_pattern_is_still_equal(tmp_path: Path) -> None:
    w = torch.tensor([1.0, math.nan, 3.0])
    w2 = w.clone()
    w2.view(torch.int32)[1] = 0x7FC00001  # another NaN payload: the bytes differ, the value does not
    assert not torch.equal(w.view(torch.int32), w2.view(torch.int32))
    a = save_checkpoint(tmp_path / "a.safetensors", {"w": w})
    b = save_checkpoint(tmp_path / "b.safetensors", {"w": w2})
    code, doc = diff_json(a, b)
    assert code == 0
    assert statuses(doc)["w"] in ("identical", "within_tolerance")
    assert entry(doc, "w")["mismatched"] == 0


def test_nan_vs_number_is_changed(tmp_path: Path) -> None:
    a = save_checkpoint(tmp_path / "a.safetensors", {"w": torch.tensor([1.0, math.nan, 3.0])})
    b = save_checkpoint(tmp_path / "b.safetensors", {"w": torch.tensor([1.0, 2.0, 3.0])})
    code, doc = diff_json(a, b)
    assert code == 1
    e = entry(doc, "w")
    assert e["status"] == "changed"
    assert e["mismatched"] == 1
    # no tolerance makes a NaN equal to a number
    code, doc = diff_json(a, b, "--atol", "1e9", "--rtol", "1")
    assert code == 1 and statuses(doc)["w"] == "changed"
    # +inf vs -inf likewise
    a = save_checkpoint(tmp_path / "c.safetensors", {"w": torch.tensor([math.inf])})
    b = save_checkpoint(tmp_path / "d.safetensors", {"w": torch.tensor([-math.inf])})
    code, doc = diff_json(a, b, "--atol", "1e9")
    assert code == 1 and statuses(doc)["w"] == "changed"


# ------------------------------------------------------------------------------------ differences


def test_changed_tensor_numbers(tmp_path: Path) -> None:
    ta, tb = base(), base()
    tb["enc.weight"] = tb["enc.weight"].clone()
    tb["enc.weight"][0, :3] += torch.tensor([0.5, -0.25, 2.0])
    tb["enc.weight"][5, 4] = 0.0
    a = save_checkpoint(tmp_path / "a.safetensors", ta)
    b = save_checkpoint(tmp_path / "b.safetensors", tb)
    code, doc = diff_json(a, b)
    assert code == 1
    assert statuses(doc) == {
        "enc.weight": "changed",
        "enc.bias": "identical",
        "dec.weight": "identical",
        "steps": "identical",
    }
    e = entry(doc, "enc.weight")
    xa = ta["enc.weight"].numpy().astype(np.float64)
    xb = tb["enc.weight"].numpy().astype(np.float64)
    assert e["max_abs_diff"] == float(np.max(np.abs(xa - xb)))
    assert e["rel_l2_diff"] == pytest.approx(np.linalg.norm(xa - xb) / np.linalg.norm(xa), rel=1e-12, abs=0)
    assert e["mismatched"] == 4
    assert (e["shape_a"], e["shape_b"], e["dtype_a"], e["dtype_b"]) == ([8, 5], [8, 5], "float32", "float32")
    assert doc["summary"]["changed"] == 1 and doc["summary"]["identical"] == 3
    assert doc["summary"]["equal"] is False
    # rel_l2_diff is relative to A: swapping A and B changes it
    _, rev = diff_json(b, a)
    assert entry(rev, "enc.weight")["rel_l2_diff"] == pytest.approx(
        np.linalg.norm(xa - xb) / np.linalg.norm(xb), rel=1e-12, abs=0
    )
    r = run_cli("diff", a, b)
    assert r.exit_code == 1
    assert "enc.weight" in r.stdout and "changed" in r.stdout
    assert r.stdout.strip().splitlines()[-1].startswith("different:")


def test_changed_float64_and_bfloat16(tmp_path: Path) -> None:
    x = torch.linspace(-3, 3, 64, dtype=torch.float64).reshape(8, 8)
    y = x.clone()
    y[2, 2] += 1e-9
    code, doc = diff_json(save_checkpoint(tmp_path / "a.pt", {"x": x}), save_checkpoint(tmp_path / "b.pt", {"x": y}))
    assert code == 1
    e = entry(doc, "x")
    expected = abs(float(x[2, 2]) - float(y[2, 2]))
    assert e["max_abs_diff"] == expected and e["mismatched"] == 1
    assert e["rel_l2_diff"] == pytest.approx(expected / float(np.linalg.norm(x.numpy())), rel=1e-12)
    xb = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.bfloat16)
    yb = torch.tensor([[1.0, 2.0], [3.0, 4.5]], dtype=torch.bfloat16)
    code, doc = diff_json(
        save_checkpoint(tmp_path / "c.safetensors", {"b": xb}), save_checkpoint(tmp_path / "d.safetensors", {"b": yb})
    )
    assert code == 1
    e = entry(doc, "b")
    assert e["status"] == "changed" and e["max_abs_diff"] == 0.5
    assert e["rel_l2_diff"] == pytest.approx(0.5 / math.sqrt(1 + 4 + 9 + 16), rel=1e-12)


def test_changed_integer_tensor(tmp_path: Path) -> None:
    a = save_checkpoint(tmp_path / "a.pt", {"steps": torch.tensor([1, 2, 3, 4])})
    b = save_checkpoint(tmp_path / "b.pt", {"steps": torch.tensor([1, 2, 7, 4])})
    code, doc = diff_json(a, b)
    assert code == 1
    e = entry(doc, "steps")
    assert e["status"] == "changed" and e["mismatched"] == 1 and e["max_abs_diff"] == 4


def test_shape_changed(tmp_path: Path) -> None:
    ta, tb = base(), base()
    tb["enc.weight"] = ta["enc.weight"].reshape(5, 8)
    code, doc = diff_json(
        save_checkpoint(tmp_path / "a.safetensors", ta), save_checkpoint(tmp_path / "b.safetensors", tb)
    )
    assert code == 1
    e = entry(doc, "enc.weight")
    assert e["status"] == "shape_changed"
    assert (e["shape_a"], e["shape_b"]) == ([8, 5], [5, 8])
    assert (e["dtype_a"], e["dtype_b"]) == ("float32", "float32")
    assert doc["summary"]["shape_changed"] == 1


def test_dtype_changed(tmp_path: Path) -> None:
    ta, tb = base(), base()
    tb["enc.bias"] = ta["enc.bias"].to(torch.float16)
    code, doc = diff_json(save_checkpoint(tmp_path / "a.pt", ta), save_checkpoint(tmp_path / "b.pt", tb))
    assert code == 1
    e = entry(doc, "enc.bias")
    assert e["status"] == "dtype_changed"
    assert (e["dtype_a"], e["dtype_b"]) == ("float32", "float16")
    assert e["shape_a"] == e["shape_b"] == [8]
    assert doc["summary"]["dtype_changed"] == 1
    # no tolerance hides a dtype change
    code, _ = diff_json(
        save_checkpoint(tmp_path / "a.pt", ta), save_checkpoint(tmp_path / "b.pt", tb), "--atol", "1", "--rtol", "1"
    )
    assert code == 1


def test_only_in_a_and_only_in_b(tmp_path: Path) -> None:
    ta, tb = base(), base()
    ta["old.weight"] = torch.ones(2, 2)
    tb["new.weight"] = torch.ones(3)
    code, doc = diff_json(save_checkpoint(tmp_path / "a.safetensors", ta), save_checkpoint(tmp_path / "b.pt", tb))
    assert code == 1
    old, new = entry(doc, "old.weight"), entry(doc, "new.weight")
    assert old["status"] == "only_in_a"
    assert (old["shape_a"], old["dtype_a"], old["shape_b"], old["dtype_b"]) == ([2, 2], "float32", None, None)
    assert new["status"] == "only_in_b"
    assert (new["shape_a"], new["dtype_a"], new["shape_b"], new["dtype_b"]) == (None, None, [3], "float32")
    s = doc["summary"]
    assert (s["only_in_a"], s["only_in_b"], s["identical"], s["tensors"]) == (1, 1, 4, 6)
    for e in (old, new):
        assert e["max_abs_diff"] is None and e["rel_l2_diff"] is None and e["mismatched"] is None
    r = run_cli("diff", tmp_path / "a.safetensors", tmp_path / "b.pt")
    assert r.exit_code == 1
    old_row = next(ln for ln in r.stdout.splitlines() if "old.weight" in ln)
    new_row = next(ln for ln in r.stdout.splitlines() if "new.weight" in ln)
    assert "only_in_a" in old_row and re.search(r"\sfloat32\[2, 2\] → —\s", old_row), old_row
    assert "only_in_b" in new_row and re.search(r"\s— → float32\[3\]\s", new_row), new_row
    assert r.stdout.strip().splitlines()[-1] == "different: 4 identical, 1 only in a, 1 only in b"


# -------------------------------------------------------------------------------------- tolerances


def small_change(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    x = torch.linspace(1.0, 2.0, 20).reshape(4, 5)
    y = x + 1e-4
    a = save_checkpoint(tmp_path / "a.safetensors", {"w": x, "same": torch.ones(3)})
    b = save_checkpoint(tmp_path / "b.safetensors", {"w": y, "same": torch.ones(3)})
    return a, b, x.numpy().astype(np.float64), y.numpy().astype(np.float64)


def test_atol(tmp_path: Path) -> None:
    a, b, xa, xb = small_change(tmp_path)
    code, doc = diff_json(a, b)
    assert code == 1 and statuses(doc)["w"] == "changed" and entry(doc, "w")["mismatched"] == 20
    code, doc = diff_json(a, b, "--atol", "1e-3")
    assert code == 0
    assert doc["atol"] == 1e-3 and doc["rtol"] == 0
    e = entry(doc, "w")
    assert e["status"] == "within_tolerance"
    assert e["mismatched"] == 0
    assert e["max_abs_diff"] == float(np.max(np.abs(xa - xb)))  # still reported
    assert doc["summary"]["within_tolerance"] == 1 and doc["summary"]["identical"] == 1
    assert doc["summary"]["equal"] is True
    code, _ = diff_json(a, b, "--atol", "1e-6")  # too tight
    assert code == 1


def test_rtol(tmp_path: Path) -> None:
    a, b, _, _ = small_change(tmp_path)
    code, doc = diff_json(a, b, "--rtol", "1e-3")  # |a-b| = 1e-4 <= 1e-3 * |b| (|b| >= 1)
    assert code == 0
    assert statuses(doc)["w"] == "within_tolerance"
    assert doc["rtol"] == 1e-3
    code, doc = diff_json(a, b, "--rtol", "1e-5")
    assert code == 1 and statuses(doc)["w"] == "changed"


def test_tolerance_is_allclose_rule(tmp_path: Path) -> None:
    """|a - b| <= atol + rtol * |b| element-wise, the rule of torch.allclose."""
    x = torch.tensor([0.0, 1.0, 10.0, 100.0], dtype=torch.float64)
    y = torch.tensor([0.05, 1.05, 10.3, 103.0], dtype=torch.float64)
    a = save_checkpoint(tmp_path / "a.pt", {"t": x})
    b = save_checkpoint(tmp_path / "b.pt", {"t": y})
    for atol, rtol in [(0.1, 0.0), (0.06, 0.02), (0.0, 0.05), (0.05, 0.03), (0.04, 0.01)]:
        expected_close = torch.isclose(x, y, rtol=rtol, atol=atol)
        code, doc = diff_json(a, b, "--atol", str(atol), "--rtol", str(rtol))
        assert entry(doc, "t")["mismatched"] == int((~expected_close).sum()), (atol, rtol)
        assert code == (0 if bool(expected_close.all()) else 1), (atol, rtol)


def test_negative_tolerance_is_usage_error(tmp_path: Path) -> None:
    a = save_checkpoint(tmp_path / "a.pt", base())
    assert_one_error_line(run_cli("diff", a, a, "--atol", "-1"))
    assert_one_error_line(run_cli("diff", a, a, "--rtol", "-0.5"))


# ----------------------------------------------------------------------------------------- --match


def test_match(tmp_path: Path) -> None:
    ta, tb = base(), base()
    tb["enc.weight"] = ta["enc.weight"] + 1
    tb["extra"] = torch.ones(2)
    a = save_checkpoint(tmp_path / "a.safetensors", ta)
    b = save_checkpoint(tmp_path / "b.safetensors", tb)
    assert diff_json(a, b)[0] == 1
    code, doc = diff_json(a, b, "--match", r"^dec\.", "--match", "bias$")  # a union
    assert code == 0
    assert statuses(doc) == {"enc.bias": "identical", "dec.weight": "identical"}
    code, doc = diff_json(a, b, "-m", "weight")
    assert code == 1
    assert statuses(doc) == {"enc.weight": "changed", "dec.weight": "identical"}
    assert_one_error_line(run_cli("diff", a, b, "--match", "("))


# ------------------------------------------------------------------------------------------ errors


def test_missing_file_is_one_error_line(tmp_path: Path) -> None:
    a = save_checkpoint(tmp_path / "a.pt", base())
    for args in [(a, tmp_path / "nope.pt"), (tmp_path / "nope.pt", a)]:
        r = run_cli("diff", *args, "--format", "json")
        assert_one_error_line(r)
        assert "nope.pt" in r.stderr
        assert r.stdout == ""


def test_corrupt_file_is_one_error_line(tmp_path: Path) -> None:
    a = save_checkpoint(tmp_path / "a.pt", base())
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(os.urandom(300))
    r = run_cli("diff", a, bad)
    assert_one_error_line(r)
    assert "bad.safetensors" in r.stderr


def test_bad_usage(tmp_path: Path) -> None:
    a = save_checkpoint(tmp_path / "a.pt", base())
    assert_one_error_line(run_cli("diff", a))  # B missing
    assert_one_error_line(run_cli("diff", a, a, "--format", "xml"))
    assert_one_error_line(run_cli("diff", a, a, "--no-such-option"))
