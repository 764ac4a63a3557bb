"""Issue 15: ``diff`` compares bytes first (the C kernel reading both files, on worker threads)
and decodes only tensors whose bytes differ, in one fused pass (``diff_float``).

Through the real CLI, against torch's own loading and arithmetic, with the kernel and without it
(``PINIT_NO_KERNEL=1`` in a subprocess, and ``pinit.stats._kernel`` set to None in process).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import pinit.stats
from conftest import assert_one_error_line, diff_json, run_cli, run_subprocess, save_checkpoint
from pinit.checkpoint import open_checkpoint
from pinit.diff import diff_checkpoints

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


@pytest.fixture(params=["kernel", "numpy"])
def path_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "numpy":
        monkeypatch.setattr(pinit.stats, "_kernel", None)
    elif not pinit.stats.kernel_available():
        pytest.skip("pinit._kernel is not built")
    return str(request.param)


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in doc["tensors"]}


def expected(xa: torch.Tensor, xb: torch.Tensor, atol: float = 0.0, rtol: float = 0.0) -> dict[str, Any]:
    """The difference fields computed with torch in float64 (SPEC: over positions finite on both sides)."""
    a, b = xa.double().flatten(), xb.double().flatten()
    both = torch.isfinite(a) & torch.isfinite(b)
    d = (a[both] - b[both]).abs()
    na, nb = torch.isnan(a), torch.isnan(b)
    close = torch.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
    return {
        "max_abs_diff": float(d.max()) if d.numel() else 0.0,
        "rel_l2": float(d.norm()) / float(a[both].norm()),
        "mismatched": int((~close).sum()),
        "nan_mismatch": int((na ^ nb).sum()),
        "inf_mismatch": int((~(na | nb) & (torch.isinf(a) | torch.isinf(b)) & (a != b)).sum()),
    }


def model(g: torch.Generator) -> dict[str, torch.Tensor]:
    out = {f"w.{str(dt).removeprefix('torch.')}": torch.randn(700, 500, generator=g).to(dt) for dt in DTYPES}
    out["steps"] = torch.arange(10)
    out["small"] = torch.randn(3, generator=g)
    out["empty"] = torch.zeros(0)
    return out


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_one_changed_tensor_per_dtype_against_torch(tmp_path: Path, path_kind: str, suffix: str) -> None:
    """Each float dtype in turn: one tensor changed in its last chunk only (the bytes before are
    equal: the kernel's first pass finds them equal, the second pass still counts them in ||a||)."""
    g = torch.Generator().manual_seed(3)
    sd = model(g)
    a = save_checkpoint(tmp_path / f"a{suffix}", sd)
    for dt in DTYPES:
        name = f"w.{str(dt).removeprefix('torch.')}"
        other = {k: v.clone() for k, v in sd.items()}
        w = other[name].flatten()
        w[-1000:] += torch.randn(1000, generator=g).to(dt) * 0.1
        w[-5] = float("nan")
        w[-7] = float("inf")
        other[name] = w.reshape(700, 500)
        b = save_checkpoint(tmp_path / f"b_{name}{suffix}", other)
        code, doc = diff_json(a, b)
        assert code == 1
        got = by_name(doc)
        for k in sd:
            if k != name:
                assert got[k]["status"] == "identical", k
                assert (got[k]["max_abs_diff"], got[k]["rel_l2_diff"], got[k]["mismatched"]) == (0.0, 0.0, 0), k
        e, want = got[name], expected(sd[name], other[name])
        assert e["status"] == "changed" and e["values"] == "changed"
        assert e["max_abs_diff"] == pytest.approx(want["max_abs_diff"], rel=1e-12)
        assert e["rel_l2_diff"] == pytest.approx(want["rel_l2"], rel=1e-9)
        for key in ("mismatched", "nan_mismatch", "inf_mismatch"):
            assert e[key] == want[key], (name, key)
        assert doc["summary"]["changed"] == 1 and doc["summary"]["identical"] == len(sd) - 1


def test_tolerances_zero_signs_and_nan_at_the_same_place(tmp_path: Path, path_kind: str) -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(400_000, generator=g)
    x[::1000] = float("nan")
    y = x.clone()
    y[1::7] *= 1 + 1e-4  # within rtol 1e-3, outside rtol 0
    z = torch.zeros(300_000)
    nz = z.clone()
    nz[123_456] = -0.0  # other bytes, equal values
    a = save_checkpoint(tmp_path / "a.safetensors", {"x": x, "z": z, "same_nan": x.clone()})
    b = save_checkpoint(tmp_path / "b.safetensors", {"x": y, "z": nz, "same_nan": x.clone()})
    code, doc = diff_json(a, b)
    assert code == 1
    got = by_name(doc)
    assert got["same_nan"]["status"] == "identical"  # NaN at the same position, same bytes
    assert got["z"]["status"] == "within_tolerance" and got["z"]["mismatched"] == 0
    assert got["z"]["max_abs_diff"] == 0.0
    assert got["x"]["status"] == "changed"
    assert got["x"]["mismatched"] == expected(x, y)["mismatched"] > 0
    code, doc = diff_json(a, b, "--rtol", "1e-3")
    assert code == 0
    got = by_name(doc)
    assert got["x"]["status"] == "within_tolerance"
    assert got["x"]["mismatched"] == expected(x, y, rtol=1e-3)["mismatched"] == 0


def test_many_small_tensors_in_several_batches(tmp_path: Path, path_kind: str) -> None:
    """More tensors than one batch of the byte comparison holds; the changed ones anywhere."""
    g = torch.Generator().manual_seed(5)
    sd = {f"t{i:04d}": torch.randn(2, 3, generator=g) for i in range(2600)}
    sd["big"] = torch.randn(3000, 3000, generator=g)  # 36 MB: a batch of its own
    other = dict(sd)
    changed = ["t0000", "t1023", "t1024", "t2599", "big"]
    for k in changed:
        other[k] = sd[k] + 1
    a = save_checkpoint(tmp_path / "a.safetensors", sd)
    b = save_checkpoint(tmp_path / "b.safetensors", other)
    code, doc = diff_json(a, b)
    assert code == 1
    got = by_name(doc)
    assert sorted(k for k, t in got.items() if t["status"] != "identical") == sorted(changed)
    for k in changed:
        assert got[k]["max_abs_diff"] == pytest.approx(1.0, abs=1e-5)
        assert got[k]["mismatched"] == sd[k].numel()


def test_same_report_with_and_without_the_kernel(tmp_path: Path) -> None:
    if not pinit.stats.kernel_available():
        pytest.skip("pinit._kernel is not built")
    g = torch.Generator().manual_seed(6)
    sd = model(g)
    other = {k: v.clone() for k, v in sd.items()}
    for k in ("w.float32", "w.bfloat16", "w.float16"):
        other[k].view(-1)[::3] += 0.01
    other["w.float64"].view(-1)[7] = float("-inf")
    a = save_checkpoint(tmp_path / "a.safetensors", sd)
    b = save_checkpoint(tmp_path / "b.safetensors", other)
    fast = run_subprocess("diff", a, b, "--format", "json", "--atol", "1e-3")
    slow = run_subprocess("diff", a, b, "--format", "json", "--atol", "1e-3", env={"PINIT_NO_KERNEL": "1"})
    assert fast.exit_code == slow.exit_code == 1, (fast.stderr, slow.stderr)
    da, db = fast.json(), slow.json()
    assert da["summary"] == db["summary"]
    for ta, tb in zip(da["tensors"], db["tensors"], strict=True):
        for key in ta:
            if key == "rel_l2_diff" and isinstance(ta[key], float):
                assert ta[key] == pytest.approx(tb[key], rel=1e-12), ta["name"]
            else:
                assert ta[key] == tb[key], (ta["name"], key)


def test_threads_do_not_change_the_report(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(7)
    sd = {f"l{i}": torch.randn(1000, 1100, generator=g) for i in range(12)}  # 4.4 MB each: several batches
    other = dict(sd)
    other["l5"] = sd["l5"] * 2
    a = save_checkpoint(tmp_path / "a.safetensors", sd)
    b = save_checkpoint(tmp_path / "b.safetensors", other)
    reports = []
    for threads in (1, 2):
        done: list[int] = []
        with open_checkpoint(str(a)) as ca, open_checkpoint(str(b)) as cb:
            reports.append(diff_checkpoints(ca, cb, threads=threads, progress=done.append).as_json())
        assert sum(done) == sum(t.numel() * 4 for t in sd.values())
    assert reports[0] == reports[1]
    assert [t["name"] for t in reports[0]["tensors"] if t["status"] != "identical"] == ["l5"]


def test_a_truncated_file_is_one_error_line(tmp_path: Path, path_kind: str) -> None:
    sd = {"a": torch.ones(100_000), "b": torch.ones(100_000)}
    a = save_checkpoint(tmp_path / "a.safetensors", sd)
    b = save_checkpoint(tmp_path / "b.safetensors", sd)
    with open(b, "r+b") as f:
        f.truncate(os.path.getsize(b) - 1000)
    r = run_cli("diff", a, b, "--format", "json")
    assert_one_error_line(r)


def test_identical_files_read_no_tensor_twice(tmp_path: Path, path_kind: str) -> None:
    """A file against a copy of itself: every tensor identical, exit 0, exact zeros."""
    g = torch.Generator().manual_seed(8)
    sd = model(g)
    a = save_checkpoint(tmp_path / "a.safetensors", sd)
    b = tmp_path / "copy.safetensors"
    b.write_bytes(a.read_bytes())
    code, doc = diff_json(a, b)
    assert code == 0
    for t in doc["tensors"]:
        assert t["status"] == "identical"
        assert (t["max_abs_diff"], t["rel_l2_diff"], t["mismatched"], t["nan_mismatch"]) == (0.0, 0.0, 0, 0)
    assert math.isclose(doc["summary"]["identical"], len(sd))
    assert np.isfinite([t["max_abs_diff"] for t in doc["tensors"]]).all()


def test_same_bytes_in_kernel(tmp_path: Path) -> None:
    """The helper duplicate detection can use: True / False for tensors in files, None elsewhere."""
    if not pinit.stats.kernel_available():
        pytest.skip("pinit._kernel is not built")
    from pinit.stats import same_bytes_in_kernel
    from pinit.storage import MemoryStorage, TensorEntry

    g = torch.Generator().manual_seed(9)
    w = torch.randn(300, 400, generator=g)
    other = w.clone()
    other[-1, -1] += 1
    a = save_checkpoint(tmp_path / "a.safetensors", {"w": w, "copy": w.clone(), "other": other})
    with open_checkpoint(str(a)) as ck:
        e = {t.name: t for t in ck.tensors}
        assert same_bytes_in_kernel(e["w"], e["copy"]) is True
        assert same_bytes_in_kernel(e["w"], e["other"]) is False
        mem = TensorEntry("m", "float32", (300, 400), MemoryStorage(w.numpy().view(np.uint8).reshape(-1), key="m"))
        assert same_bytes_in_kernel(e["w"], mem) is None
