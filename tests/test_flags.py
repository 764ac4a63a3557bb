"""Flags (SPEC section 4): each fires on a crafted tensor and stays silent on its healthy twin."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import SAMPLES, run_cli, save_checkpoint
from pinit import Selector, inspect_checkpoint, open_checkpoint

HEALTHY = torch.tensor([[0.5, -0.25], [0.125, 1.0]])


def cli_flags(path: Path, *args: str) -> dict[str, list[dict]]:
    r = run_cli("inspect", path, "--format", "json", *args)
    assert r.exit_code == 0, r.stderr  # inspect exits 0 whatever the flags
    return {t["name"]: t["flags"] for t in r.json()["tensors"]}


def core_flags(path: Path, **kw) -> dict[str, list[dict]]:
    with open_checkpoint(path) as ckpt:
        report = inspect_checkpoint(ckpt, **kw)
    return {t.name: [f.as_json() for f in t.flags] for t in report.tensors}


def codes(flags: list[dict]) -> list[str]:
    return sorted(f["code"] for f in flags)


def both(path: Path, *cli_args: str, **core_kw) -> dict[str, list[dict]]:
    """Flags through the CLI and through the core; the two must agree."""
    via_cli = cli_flags(path, *cli_args)
    via_core = core_flags(path, **core_kw)
    assert via_cli == via_core
    return via_cli


@pytest.fixture(params=["safetensors", "pt"])
def ext(request) -> str:
    return request.param


# ---------------------------------------------------------------- value flags


def test_nan(tmp_path, ext):
    bad = HEALTHY.clone()
    bad[0, 1] = math.nan
    flags = both(save_checkpoint(tmp_path / f"m.{ext}", {"bad": bad, "good": HEALTHY}))
    assert flags["bad"] == [{"code": "nan", "severity": "error", "message": "1 NaN of 4 values"}]
    assert flags["good"] == []


def test_inf(tmp_path, ext):
    bad = torch.tensor([[math.inf, 1.0, -math.inf], [0.5, 0.5, 2.0]])
    flags = both(save_checkpoint(tmp_path / f"m.{ext}", {"bad": bad, "good": bad.nan_to_num(posinf=3.0, neginf=-3.0)}))
    assert codes(flags["bad"]) == ["inf"]
    (f,) = flags["bad"]
    assert f["severity"] == "error"
    assert "2 Inf of 6 values" in f["message"]
    assert flags["good"] == []


@pytest.mark.parametrize(
    "dtype,value,flagged",
    [
        (torch.float32, 1e-40, True),
        (torch.float64, 1e-310, True),
        (torch.bfloat16, 1e-39, True),
        (torch.float16, 6e-8, False),  # fp16 weights legitimately hold subnormals
        (torch.float8_e4m3fn, 0.005, False),
        (torch.float8_e5m2, 3e-5, False),
    ],
    ids=lambda v: str(v).removeprefix("torch.") if isinstance(v, torch.dtype) else None,
)
def test_subnormal(tmp_path, dtype, value, flagged):
    bad = torch.tensor([[value, 1.0], [0.5, -0.5], [0.25, 2.0]], dtype=torch.float64).to(dtype)
    good = torch.tensor([[1.0, 1.0], [0.5, -0.5], [0.25, 2.0]], dtype=torch.float64).to(dtype)
    assert 0 < abs(float(bad[0, 0])) < torch.finfo(dtype).tiny  # really a subnormal of this dtype
    path = save_checkpoint(tmp_path / "m.safetensors", {"bad": bad, "good": good})
    r = run_cli("inspect", path, "--format", "json")
    docs = {t["name"]: t for t in r.json()["tensors"]}
    assert docs["bad"]["stats"]["subnormal"] == 1  # counted for every dtype ...
    assert docs["good"]["flags"] == []
    if flagged:  # ... but a warning only for float32, float64 and bfloat16, and not an error:
        (f,) = docs["bad"]["flags"]  # a lone subnormal without the never-written signature (SPEC 4)
        assert (f["code"], f["severity"]) == ("subnormal", "warning")
        assert "1 subnormal of 6 values" in f["message"]
        assert "no other sign of garbage" in f["message"]
    else:
        assert docs["bad"]["flags"] == []
    assert core_flags(path) == {n: d["flags"] for n, d in docs.items()}
    assert r.json()["summary"]["errors"] == 0
    assert r.json()["summary"]["warnings"] == (1 if flagged else 0)

    # the same subnormal beside NaN is the signature of never-written memory: an error for every dtype
    garbage = bad.clone()
    garbage[2, 1] = math.nan
    path = save_checkpoint(tmp_path / "g.safetensors", {"garbage": garbage})
    doc = run_cli("inspect", path, "--format", "json").json()
    got = {(f["code"], f["severity"]) for f in doc["tensors"][0]["flags"]}
    assert got == {("nan", "error"), ("uninitialized", "error")}
    assert core_flags(path) == {t["name"]: t["flags"] for t in doc["tensors"]}


def test_huge_default_and_max_abs(tmp_path, ext):
    tensors = {
        "huge": torch.tensor([[2e6, 1.0], [0.5, 0.25]]),
        "neg": torch.tensor([[-3e7, 1.0], [-2e7, 0.25]]),
        "edge": torch.tensor([[1e6, 1.0], [-1e6, 0.25]]),  # exactly max_abs: not above it
        "mid": torch.tensor([[5e5, 1.0], [0.5, 0.25]]),
        "inf": torch.tensor([[math.inf, 1.0], [0.5, 0.25]]),  # Inf is not a finite huge value
    }
    path = save_checkpoint(tmp_path / f"m.{ext}", tensors)
    flags = both(path)
    assert codes(flags["huge"]) == ["huge"]
    assert flags["huge"][0]["severity"] == "error"
    assert "1 of 4 values" in flags["huge"][0]["message"] and "1e+06" in flags["huge"][0]["message"]
    assert codes(flags["neg"]) == ["huge"] and "2 of 4 values" in flags["neg"][0]["message"]
    assert "3e+07" in flags["neg"][0]["message"]  # the largest magnitude is the evidence
    assert flags["edge"] == [] and flags["mid"] == []
    assert codes(flags["inf"]) == ["inf"]

    flags = both(path, "--max-abs", "1000", max_abs=1000.0)
    assert codes(flags["mid"]) == ["huge"] and "|x| > 1000" in flags["mid"][0]["message"]
    assert codes(flags["edge"]) == ["huge"] and "2 of 4 values" in flags["edge"][0]["message"]
    flags = cli_flags(path, "--max-abs", "1e8")
    assert flags["huge"] == [] and flags["neg"] == []


def test_all_zero(tmp_path, ext):
    emb = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    emb[3] = 0.0  # a padding row
    tensors = {
        "w": torch.zeros(4, 3),
        "negzero": torch.full((2, 2), -0.0),
        "conv": torch.zeros(2, 3, 3, 3, dtype=torch.bfloat16),
        "bias": torch.zeros(4),
        "emb": emb,
        "empty": torch.zeros(0, 3),
        "healthy": HEALTHY,
    }
    flags = both(save_checkpoint(tmp_path / f"m.{ext}", tensors))
    assert flags["w"] == [{"code": "all_zero", "severity": "warning", "message": "all 12 values are 0"}]
    assert codes(flags["negzero"]) == ["all_zero"]
    assert codes(flags["conv"]) == ["all_zero"] and "54" in flags["conv"][0]["message"]
    for name in ("bias", "emb", "healthy"):
        assert flags[name] == [], name
    # a 0-element tensor is never all_zero; it is an `empty` warning (SPEC 4), one of 7 tensors: no error
    assert flags["empty"] == [{"code": "empty", "severity": "warning", "message": "shape [0, 3]: 0 elements"}]


def test_constant(tmp_path, ext):
    tensors = {
        "half": torch.full((3, 4), 0.5),
        "neg": torch.full((2, 2, 2), -7.0, dtype=torch.float16),
        "one": torch.full((1, 1), 0.5),  # a single element is not "constant"
        "vec": torch.full((8,), 0.5),  # 1-D constants (norm weights) are normal
        "almost": torch.tensor([[0.5, 0.5], [0.5, 0.5000001]]),
    }
    flags = both(save_checkpoint(tmp_path / f"m.{ext}", tensors))
    assert flags["half"] == [{"code": "constant", "severity": "warning", "message": "all 12 values equal 0.5"}]
    assert codes(flags["neg"]) == ["constant"] and "-7" in flags["neg"][0]["message"]
    for name in ("one", "vec", "almost"):
        assert flags[name] == [], name


def test_duplicate_separate_storage(tmp_path, ext):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(6, 5, generator=g)
    ints = torch.arange(16.0).reshape(4, 4)
    tensors = {
        "a": a,
        "b": a.clone(),
        "c": a.clone(),
        "other": torch.randn(6, 5, generator=g),
        "vec1": torch.arange(5.0) / 7,
        "vec2": torch.arange(5.0) / 7,  # equal 1-D tensors: not flagged
        "ints": ints,
        # same shape, dtype and statistics (exact small integers), different bytes: not a duplicate
        "flipped": ints.flip(0).clone(),
        "ia": torch.arange(6).reshape(2, 3),
        "ib": torch.arange(6).reshape(2, 3),  # integer tensors are never flagged
    }
    flags = both(save_checkpoint(tmp_path / f"m.{ext}", tensors))
    for name, others in (("a", ["b", "c"]), ("b", ["a", "c"]), ("c", ["a", "b"])):
        (f,) = flags[name]
        assert (f["code"], f["severity"]) == ("duplicate", "warning")
        assert all(o in f["message"] for o in others), f["message"]
    for name in ("other", "vec1", "vec2", "ints", "flipped", "ia", "ib"):
        assert flags[name] == [], name


def test_tied_weights_are_not_duplicates(tmp_path):
    emb = torch.randn(8, 4, generator=torch.Generator().manual_seed(2))
    path = save_checkpoint(
        tmp_path / "tied.pt", {"embed.weight": emb, "norm.weight": torch.ones(4), "lm_head.weight": emb}
    )
    r = run_cli("inspect", path, "--format", "json")
    assert r.exit_code == 0
    doc = r.json()
    by = {t["name"]: t for t in doc["tensors"]}
    assert by["embed.weight"]["tied_with"] == ["lm_head.weight"]
    assert by["lm_head.weight"]["tied_with"] == ["embed.weight"]
    assert by["norm.weight"]["tied_with"] == []
    assert all(t["flags"] == [] for t in doc["tensors"])
    assert [sorted(g) for g in doc["summary"]["tied"]] == [["embed.weight", "lm_head.weight"]]
    assert doc["summary"]["parameters"] == 8 * 4 + 4  # tied tensors count once
    assert doc["summary"]["warnings"] == 0

    # the shipped sample: embedding and output head share storage
    doc = run_cli("inspect", SAMPLES / "tied_lm.pt", "--format", "json").json()
    assert [sorted(g) for g in doc["summary"]["tied"]] == [["embed.weight", "lm_head.weight"]]
    assert not any(t["flags"] for t in doc["tensors"])


def test_views_of_one_storage_are_neither_tied_nor_duplicate(tmp_path):
    base = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(3))
    base[1] = base[0]
    path = save_checkpoint(tmp_path / "views.pt", {"first": base[0], "second": base[1]})
    doc = run_cli("inspect", path, "--format", "json").json()
    assert doc["summary"]["tied"] == []
    assert all(t["tied_with"] == [] for t in doc["tensors"])


def test_integer_tensors_never_flagged(tmp_path, ext):
    tensors = {
        "zeros": torch.zeros(4, 4, dtype=torch.int64),
        "const": torch.full((3, 3), 7, dtype=torch.int32),
        "big": torch.full((2, 2), 2**40, dtype=torch.int64),
        "dup1": torch.arange(12, dtype=torch.int16).reshape(3, 4),
        "dup2": torch.arange(12, dtype=torch.int16).reshape(3, 4),
        "mask": torch.zeros(3, 3, dtype=torch.bool),
        "u8": torch.full((2, 2), 255, dtype=torch.uint8),
    }
    flags = both(save_checkpoint(tmp_path / f"m.{ext}", tensors))
    assert flags == {n: [] for n in tensors}


def test_scalars_and_optimizer_step_not_flagged(tmp_path):
    ckpt = {
        "model": {"w": HEALTHY, "scale": torch.tensor(0.0), "temp": torch.tensor(0.5)},
        "optimizer": {"state": {0: {"step": torch.tensor(120.0), "exp_avg": HEALTHY * 1e-3}}},
    }
    path = save_checkpoint(tmp_path / "train.pt", ckpt)
    flags = both(path)
    assert set(flags) == {"model.w", "model.scale", "model.temp", "optimizer.state.0.step", "optimizer.state.0.exp_avg"}
    assert all(f == [] for f in flags.values()), flags


def test_flags_messages_carry_counts_for_large_tensors(tmp_path):
    t = torch.randn(64, 64, generator=torch.Generator().manual_seed(4))
    t.view(-1)[::1000] = math.nan  # 5 NaN of 4096
    flags = cli_flags(save_checkpoint(tmp_path / "m.safetensors", {"t": t}))
    assert flags["t"][0]["message"] == "5 NaN of 4096 values"


def test_several_flags_on_one_tensor(tmp_path):
    t = torch.tensor([[math.nan, math.inf], [1e-40, 5e9]])
    doc = run_cli("inspect", save_checkpoint(tmp_path / "m.safetensors", {"t": t}), "--format", "json").json()
    # the subnormal beside NaN/Inf/huge values is the never-written signature, not a mere subnormal
    assert codes(doc["tensors"][0]["flags"]) == ["huge", "inf", "nan", "uninitialized"]
    assert doc["summary"]["errors"] == 4 and doc["summary"]["warnings"] == 0


# ---------------------------------------------------------------- --flagged


def flagged_fixture(tmp_path: Path) -> Path:
    nan = HEALTHY.clone()
    nan[1, 1] = math.nan
    return save_checkpoint(
        tmp_path / "m.safetensors",
        {
            "enc.nan": nan,
            "enc.zero": torch.zeros(3, 3),  # a warning only
            "enc.ok": HEALTHY,
            "dec.huge": HEALTHY * 1e7,
            "dec.ok": HEALTHY.clone() + 1,
            "dec.const": torch.full((2, 2), 3.0),  # a warning only
        },
    )


def names(path: Path, *args: str) -> set[str]:
    r = run_cli("inspect", path, "--format", "json", *args)
    assert r.exit_code == 0, r.stderr
    return {t["name"] for t in r.json()["tensors"]}


def test_flagged_selects_error_flags_only(tmp_path):
    path = flagged_fixture(tmp_path)
    assert names(path, "--flagged") == {"enc.nan", "dec.huge"}
    assert names(path, "--flagged", "--match", "^enc") == {"enc.nan"}
    assert names(path, "--flagged", "--match", "ok") == set()
    assert names(path, "--flagged", "--exclude", "nan") == {"dec.huge"}
    assert names(path, "--flagged", "--max-abs", "1e8") == {"enc.nan"}
    with open_checkpoint(path) as ckpt:
        report = inspect_checkpoint(ckpt, selector=Selector(match=["dec"]), flagged=True)
    assert [t.name for t in report.tensors] == ["dec.huge"]


# ---------------------------------------------------------------- the shipped samples

UNINIT_EXPECTED = {
    "conv1.weight": [("all_zero", "warning")],
    "conv2.weight": [("huge", "error"), ("uninitialized", "error")],  # subnormals beside 3e38
    "fc.weight": [("nan", "error")],
    "extra.proj.weight": [("constant", "warning")],
    "extra.copy.weight": [("duplicate", "warning")],
    "extra.copy2.weight": [("duplicate", "warning")],
}


@pytest.mark.parametrize("name", ["uninit_cnn.safetensors", "uninit_cnn.pt"])
def test_uninit_sample_flags(name):
    r = run_cli("inspect", SAMPLES / name, "--format", "json")
    assert r.exit_code == 0
    doc = r.json()
    got = {t["name"]: sorted((f["code"], f["severity"]) for f in t["flags"]) for t in doc["tensors"]}
    assert len(got) == 19
    assert {n: f for n, f in got.items() if f} == UNINIT_EXPECTED
    assert doc["summary"]["errors"] == 3 and doc["summary"]["warnings"] == 4
    msgs = {t["name"]: [f["message"] for f in t["flags"]] for t in doc["tensors"]}
    assert msgs["fc.weight"] == ["1 NaN of 160 values"]
    assert "extra.copy2.weight" in msgs["extra.copy.weight"][0]
    # the 1-D zeros put there on purpose are not flagged
    assert got["bn2.weight"] == [] and got["fc.bias"] == []
    flagged = run_cli("inspect", SAMPLES / name, "--format", "json", "--flagged").json()
    assert {t["name"] for t in flagged["tensors"]} == {"conv2.weight", "fc.weight"}


@pytest.mark.parametrize(
    "name", ["tiny_cnn.safetensors", "tiny_cnn.pt", "legacy.pt", "lightning.ckpt", "sharded", "tied_lm.pt"]
)
def test_healthy_samples_have_no_flags(name):
    r = run_cli("inspect", SAMPLES / name, "--format", "json")
    assert r.exit_code == 0, r.stderr
    doc = r.json()
    assert doc["tensors"]
    assert [(t["name"], t["flags"]) for t in doc["tensors"] if t["flags"]] == []
    assert doc["summary"]["errors"] == 0 and doc["summary"]["warnings"] == 0
