"""Issue 11, item 6: ``diff`` across dtypes compares upcast values, ``diff`` names NaN/Inf position
mismatches, and every scheme option torch would refuse is a usage error before any work.

All through the real CLI.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import SAMPLES, assert_clean, assert_one_error_line, diff_json, run_cli, save_checkpoint
from pinit.cli.output import fmt_num


def entry(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in doc["tensors"] if t["name"] == name)


def f64(t: torch.Tensor) -> np.ndarray:
    return t.to(torch.float64).numpy()


# ------------------------------------------------------------------------------- diff across dtypes


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_fp32_against_its_conversion_compares_upcast_values(tmp_path: Path, low: torch.dtype) -> None:
    g = torch.Generator().manual_seed(7)
    # 600k elements: several chunks, of 2.4 MB on one side and 1.2 MB on the other
    w = torch.randn(600, 1000, generator=g)
    a = save_checkpoint(tmp_path / "a.safetensors", {"w": w, "b": torch.zeros(4)})
    b = save_checkpoint(tmp_path / "b.safetensors", {"w": w.to(low), "b": torch.zeros(4, dtype=low)})
    code, doc = diff_json(a, b)
    assert code == 1
    e = entry(doc, "w")
    assert e["status"] == "dtype_changed"  # the dtype change is reported, and is a difference
    assert (e["dtype_a"], e["dtype_b"]) == ("float32", str(low).removeprefix("torch."))
    xa, xb = f64(w), f64(w.to(low))
    assert e["max_abs_diff"] == pytest.approx(float(np.max(np.abs(xa - xb))), rel=1e-12)
    assert e["rel_l2_diff"] == pytest.approx(np.linalg.norm(xa - xb) / np.linalg.norm(xa), rel=1e-9)
    assert e["mismatched"] == int(np.count_nonzero(xa != xb))
    assert e["values"] == "changed"
    assert e["nan_mismatch"] == 0 and e["inf_mismatch"] == 0
    zeros = entry(doc, "b")
    assert zeros["status"] == "dtype_changed" and zeros["values"] == "identical"
    assert zeros["max_abs_diff"] == 0 and zeros["mismatched"] == 0
    # the rounding of the conversion is accepted with a relative tolerance
    # (float16's subnormals below 6e-5 need an absolute tolerance too)
    tol = ["--rtol", "0.004"] if low == torch.bfloat16 else ["--rtol", "0.001", "--atol", "1e-7"]
    code, doc = diff_json(a, b, *tol)
    assert code == 1  # still a dtype change
    e = entry(doc, "w")
    assert e["status"] == "dtype_changed" and e["values"] == "within_tolerance" and e["mismatched"] == 0
    # the table shows the value columns and says what the values did
    r = run_cli("diff", a, b, *tol)
    assert r.exit_code == 1
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith("w "))
    assert "dtype_changed" in row and fmt_num(e["max_abs_diff"]) in row, r.stdout
    assert r.stdout.splitlines()[-1] == "different: 2 dtype changed (values: 1 identical, 1 within tolerance)"


REAL = Path(__file__).parent / "data" / "real"


@pytest.mark.parametrize(
    ("converted", "tolerance"),
    [
        # bfloat16 keeps 8 significant bits (a relative error up to 2**-9) and flushes float32's
        # subnormals below its own (9e-41) to zero: BatchNorm statistics hold a few
        ("mobilenetv2_bottleneck_bn_slice_bf16_converted.pt", ["--rtol", "0.004", "--atol", "1e-38"]),
        # float16 keeps 11 bits, and loses precision below its normal range (6e-5)
        ("mobilenetv2_bottleneck_bn_slice_fp16_converted.pt", ["--rtol", "0.001", "--atol", "1e-7"]),
    ],
)
def test_a_real_conversion_is_within_its_rounding(converted: str, tolerance: list[str]) -> None:
    a, b = REAL / "mobilenetv2_bottleneck_bn_slice.pt", REAL / converted
    code, doc = diff_json(a, b)
    assert code == 1
    assert {t["values"] for t in doc["tensors"] if t["status"] == "dtype_changed"} == {"changed"}
    code, doc = diff_json(a, b, *tolerance)
    assert code == 1  # the conversion itself stays a difference
    converted_values = [t["values"] for t in doc["tensors"] if t["status"] == "dtype_changed"]
    assert len(converted_values) > 200 and set(converted_values) == {"within_tolerance"}
    assert doc["summary"]["changed"] == 0
    # bfloat16 without the absolute tolerance: the flushed subnormals are the only mismatches
    if "bf16" in converted:
        _, doc = diff_json(a, b, "--rtol", "0.004")
        ta, tb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
        flushed = {k: int(((tb[k] == 0) & (ta[k] != 0)).sum()) for k in ta if ta[k].dtype != tb[k].dtype}
        got = {t["name"]: t["mismatched"] for t in doc["tensors"] if t["status"] == "dtype_changed"}
        assert got == flushed and sum(got.values()) > 0


def test_upcast_against_a_transposed_view_in_a_pt_file(tmp_path: Path) -> None:
    """A strided tensor in a .pt on one side, a contiguous float64 copy on the other."""
    base = torch.randn(300, 200, generator=torch.Generator().manual_seed(1))
    t = base.t()  # a transposed view: stored with strides (1, 200)
    a = tmp_path / "a.pt"
    torch.save({"t": t}, a)
    b = save_checkpoint(tmp_path / "b.safetensors", {"t": t.to(torch.float64).contiguous()})
    code, doc = diff_json(a, b)
    e = entry(doc, "t")
    assert code == 1 and e["status"] == "dtype_changed"
    assert e["values"] == "identical" and e["max_abs_diff"] == 0.0 and e["mismatched"] == 0
    c = t.to(torch.float64).contiguous().clone()
    c[5, 7] += 0.5
    code, doc = diff_json(a, save_checkpoint(tmp_path / "c.safetensors", {"t": c}))
    e = entry(doc, "t")
    assert e["values"] == "changed" and e["mismatched"] == 1
    assert e["max_abs_diff"] == pytest.approx(0.5, rel=1e-6)


def test_integer_dtypes_compare_exactly(tmp_path: Path) -> None:
    big = 2**62 + 1  # float64 would round it to 2**62
    a = save_checkpoint(
        tmp_path / "a.pt",
        {
            "steps": torch.tensor([1, 2, 3], dtype=torch.int64),
            "big": torch.tensor([big, 5], dtype=torch.int64),
            "neg": torch.tensor([-1, 7], dtype=torch.int64),
        },
    )
    b = save_checkpoint(
        tmp_path / "b.pt",
        {
            "steps": torch.tensor([1, 2, 4], dtype=torch.int32),
            "big": torch.tensor([2**62, 5], dtype=torch.uint64),
            "neg": torch.tensor([2**64 - 1, 7], dtype=torch.uint64),  # same bits as -1, another value
        },
    )
    code, doc = diff_json(a, b)
    assert code == 1
    s = entry(doc, "steps")
    assert (s["status"], s["values"], s["mismatched"], s["max_abs_diff"]) == ("dtype_changed", "changed", 1, 1)
    assert entry(doc, "big")["values"] == "changed" and entry(doc, "big")["mismatched"] == 1
    assert entry(doc, "neg")["values"] == "changed" and entry(doc, "neg")["mismatched"] == 1
    # a tolerance applies to integers too
    _, doc = diff_json(a, b, "--atol", "1")
    assert entry(doc, "steps")["values"] == "within_tolerance"


def test_kinds_that_do_not_compare_stay_uncompared(tmp_path: Path) -> None:
    a = save_checkpoint(tmp_path / "a.safetensors", {"x": torch.tensor([1.0, 2.0]), "s": torch.ones(2, 2)})
    b = save_checkpoint(tmp_path / "b.safetensors", {"x": torch.tensor([1, 2], dtype=torch.int64), "s": torch.ones(4)})
    code, doc = diff_json(a, b)
    assert code == 1
    for name, status in (("x", "dtype_changed"), ("s", "shape_changed")):
        e = entry(doc, name)
        assert e["status"] == status
        assert e["values"] is e["max_abs_diff"] is e["mismatched"] is e["nan_mismatch"] is None
    r = run_cli("diff", a, b)
    assert r.stdout.splitlines()[-1] == "different: 1 shape changed, 1 dtype changed", r.stdout


def test_overflow_of_a_conversion_is_an_inf_mismatch(tmp_path: Path) -> None:
    w = torch.tensor([1.0, 1e5, -1e5, 2.0])  # beyond float16's 65504
    a = save_checkpoint(tmp_path / "a.safetensors", {"w": w})
    b = save_checkpoint(tmp_path / "b.safetensors", {"w": w.to(torch.float16)})
    _, doc = diff_json(a, b, "--rtol", "0.01")
    e = entry(doc, "w")
    assert e["status"] == "dtype_changed" and e["values"] == "changed"
    assert e["inf_mismatch"] == 2 and e["nan_mismatch"] == 0 and e["mismatched"] == 2
    r = run_cli("diff", a, b, "--rtol", "0.01")
    assert "w: ±Inf at 2 positions where the other side differs" in r.stdout


# ------------------------------------------------------------------------ NaN / Inf position mismatch


def test_nan_position_mismatch_is_named(tmp_path: Path) -> None:
    a = save_checkpoint(tmp_path / "a.safetensors", {"w": torch.tensor([math.nan, math.nan, math.nan, 1.0, 5.0])})
    b = save_checkpoint(tmp_path / "b.safetensors", {"w": torch.tensor([1.0, 2.0, 3.0, 1.0, math.nan])})
    code, doc = diff_json(a, b)
    assert code == 1
    e = entry(doc, "w")
    # the finite positions agree: max abs diff 0, and yet changed, because of the NaNs
    assert (e["status"], e["max_abs_diff"], e["mismatched"]) == ("changed", 0.0, 4)
    assert e["nan_mismatch"] == 4 and e["inf_mismatch"] == 0
    r = run_cli("diff", a, b)
    assert r.exit_code == 1
    assert "w: NaN in A at 3 positions where B has a number" in r.stdout
    assert "w: NaN in B at 1 position where A has a number" in r.stdout


def test_inf_position_mismatch_is_named(tmp_path: Path) -> None:
    a = save_checkpoint(tmp_path / "a.pt", {"w": torch.tensor([math.inf, -math.inf, math.inf, 2.0])})
    b = save_checkpoint(tmp_path / "b.pt", {"w": torch.tensor([math.inf, math.inf, 3.0, 2.0])})
    code, doc = diff_json(a, b, "--atol", "1e30")
    e = entry(doc, "w")
    assert code == 1 and e["status"] == "changed"
    assert e["inf_mismatch"] == 2 and e["nan_mismatch"] == 0
    assert "±Inf at 2 positions" in run_cli("diff", a, b).stdout


def test_same_nan_positions_are_no_mismatch(tmp_path: Path) -> None:
    w = torch.tensor([math.nan, 1.0, math.inf])
    a = save_checkpoint(tmp_path / "a.safetensors", {"w": w})
    b = save_checkpoint(tmp_path / "b.safetensors", {"w": w.to(torch.float64)})
    code, doc = diff_json(a, b)
    e = entry(doc, "w")
    assert e["values"] == "identical" and e["nan_mismatch"] == 0 and e["inf_mismatch"] == 0
    w2 = w.clone()
    w2[1] = 1.5
    code, doc = diff_json(a, save_checkpoint(tmp_path / "c.safetensors", {"w": w2}))
    e = entry(doc, "w")
    assert code == 1 and e["status"] == "changed" and e["nan_mismatch"] == 0 and e["max_abs_diff"] == 0.5


# ---------------------------------------------------------------------------- scheme option bounds


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bounds")
    cnn = Path(shutil.copy(SAMPLES / "tiny_cnn.pt", d / "tiny_cnn.pt"))
    g = torch.Generator().manual_seed(0)
    mixed = save_checkpoint(
        d / "mixed.safetensors",
        {
            "conv.weight": torch.randn(4, 2, 3, 3, generator=g).to(torch.float16),
            "fc.weight": torch.randn(6, 5, generator=g).to(torch.bfloat16),
            "head.weight": torch.randn(3, 4, generator=g).to(torch.float64),
            "head.bias": torch.randn(3, generator=g),
        },
    )
    return {"cnn": cnn, "mixed": mixed}


# which tensors each scheme can take, in tiny_cnn (the mixed file's names match the same patterns)
ANY = ("--match", ".", "--exclude", "num_batches")
MATRIX = ("--match", r"fc\.weight|head\.weight")
WEIGHTS = ("--match", r"conv.*weight|fc\.weight|head\.weight")
CONV = ("--match", r"conv.*weight")
SELECT = {
    "uniform": ANY,
    "normal": ANY,
    "trunc_normal": ANY,
    "constant": ANY,
    "ones": ANY,
    "zeros": ANY,
    "eye": MATRIX,
    "dirac": CONV,
    "xavier_uniform": WEIGHTS,
    "xavier_normal": WEIGHTS,
    "kaiming_uniform": WEIGHTS,
    "kaiming_normal": WEIGHTS,
    "orthogonal": WEIGHTS,
    "sparse": MATRIX,
}

BOUNDARY = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    2.0,
    -2.0,
    5e-324,
    1e-320,
    1e-45,
    1e-38,
    65504.0,
    1e5,
    3.4e38,
    3.4028234663852886e38,
    3.5e38,
    1e39,
    1.3e154,
    1e155,
    1e300,
    1.7976931348623157e308,
    math.inf,
    -math.inf,
    math.nan,
]
numbers = st.one_of(
    st.sampled_from(BOUNDARY),
    st.sampled_from(BOUNDARY).map(lambda v: -v),
    st.floats(allow_nan=True, allow_infinity=True),
)
num_text = numbers.map(repr)
gains = st.one_of(
    num_text,
    st.sampled_from(["relu", "tanh", "selu", "linear", "conv2d", "sigmoid", "leaky_relu", "swish", "", "relu:2"]),
    numbers.map(lambda v: f"leaky_relu:{v!r}"),
    st.text(max_size=6),
)
OPTION_VALUES: dict[str, st.SearchStrategy[str]] = {
    "a": num_text,
    "b": num_text,
    "mean": num_text,
    "std": num_text,
    "value": num_text,
    "sparsity": num_text,
    "gain": gains,
    "mode": st.sampled_from(["fan_in", "fan_out", "fan_avg", "FAN_IN", ""]),
    "nonlinearity": st.sampled_from(["relu", "leaky_relu", "tanh", "selu", "conv1d", "gelu", "Linear"]),
    "groups": st.one_of(st.integers(-3, 9), st.integers(-(2**70), 2**70)).map(str),
}
SCHEME_OPTIONS = {
    "uniform": ("a", "b"),
    "normal": ("mean", "std"),
    "trunc_normal": ("mean", "std", "a", "b"),
    "constant": ("value",),
    "ones": (),
    "zeros": (),
    "eye": (),
    "dirac": ("groups",),
    "xavier_uniform": ("gain",),
    "xavier_normal": ("gain",),
    "kaiming_uniform": ("a", "mode", "nonlinearity"),
    "kaiming_normal": ("a", "mode", "nonlinearity"),
    "orthogonal": ("gain",),
    "sparse": ("sparsity", "std"),
}


@st.composite
def reinit_args(draw: st.DrawFn) -> tuple[str, str, list[str]]:
    scheme = draw(st.sampled_from(sorted(SCHEME_OPTIONS)))
    names = SCHEME_OPTIONS[scheme]
    chosen = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
    if draw(st.integers(0, 9)) == 0:  # now and then an option the scheme does not take
        chosen.append(draw(st.sampled_from(sorted(OPTION_VALUES))))
    args = ["--scheme", scheme, *SELECT[scheme]]
    for name in dict.fromkeys(chosen):
        args += [f"--{name}", draw(OPTION_VALUES[name])]
    return draw(st.sampled_from(["cnn", "mixed"])), scheme, args


@pytest.mark.slow  # hundreds of CLI runs: CI runs it, the fast loop does not
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=reinit_args())
def test_scheme_options_never_crash(ckpts: dict[str, Path], tmp_path: Path, case: tuple[str, str, list[str]]) -> None:
    """Whatever the option values: exit 0, or exit 2 with one ``error:`` line; never an internal error."""
    which, _scheme, args = case
    src = ckpts[which]
    out = tmp_path / f"out{src.suffix}"
    out.unlink(missing_ok=True)  # tmp_path is shared by hypothesis' examples
    before = src.read_bytes()
    r = run_cli("reinit", src, *args, "--seed", "0", "--out", out, "--quiet")
    assert_clean(r)
    event(f"exit {r.exit_code}")
    assert src.read_bytes() == before
    if r.exit_code == 0:
        assert out.exists()
    else:
        assert not out.exists()  # a failed command writes nothing


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scheme", "uniform", "--a", "1", "--b", "0"], "--a must not be greater than --b"),
        (["--scheme", "uniform", "--a", "-3e38", "--b", "3e38"], "--b minus --a must be within float32's range"),
        (["--scheme", "uniform", "--a", "-1e39"], "--a must be within float32's range"),
        (["--scheme", "uniform", "--b", "nan"], "--b must be a finite number"),
        (["--scheme", "trunc_normal", "--a", "1", "--b", "0"], "--a must not be greater than --b"),
        (["--scheme", "trunc_normal", "--std", "0"], "--std of trunc_normal must be positive"),
        (["--scheme", "normal", "--std", "-1"], "--std must not be negative"),
        (["--scheme", "normal", "--mean", "inf"], "--mean must be a finite number"),
        (["--scheme", "constant", "--value", "1e39"], "--value must be within float32's range"),
        (["--scheme", "sparse", "--sparsity", "1.5"], "--sparsity must be between 0 and 1"),
        (["--scheme", "sparse", "--sparsity", "0.5", "--std", "-0.1"], "--std must not be negative"),
        (["--scheme", "xavier_uniform", "--gain", "-1"], "--gain of xavier_uniform must not be negative"),
        (["--scheme", "xavier_normal", "--gain", "-1"], "--gain of xavier_normal must not be negative"),
        (["--scheme", "xavier_uniform", "--gain", "1e38"], "--gain of xavier_uniform must be at most"),
        (["--scheme", "orthogonal", "--gain", "nan"], "--gain must be a finite number"),
        (["--scheme", "orthogonal", "--gain", "1e300"], "--gain must be within float32's range"),
        (["--scheme", "xavier_normal", "--gain", "leaky_relu:1e200"], "the slope must be a finite number"),
        (["--scheme", "xavier_normal", "--gain", "relu:2"], "only leaky_relu takes a parameter"),
        (["--scheme", "xavier_normal", "--gain", "swish"], "unknown nonlinearity 'swish'"),
        (["--scheme", "kaiming_uniform", "--a", "1e200"], "--a must be within float32's range"),
        (["--scheme", "kaiming_uniform", "--mode", "fan_avg"], "--mode must be fan_in or fan_out"),
        (["--scheme", "kaiming_normal", "--nonlinearity", "gelu"], "--nonlinearity must be one of"),
        (["--scheme", "dirac", "--groups", "0"], "--groups must be at least 1"),
    ],
)
def test_bad_scheme_values_are_one_error_line_before_any_work(tmp_path: Path, args: list[str], message: str) -> None:
    # the path does not exist: the options are refused before the file is even opened
    r = run_cli("reinit", tmp_path / "missing.pt", "--match", ".", *args, "--out", tmp_path / "o.pt")
    assert_one_error_line(r)
    assert message in r.stderr, r.stderr
    assert "internal error" not in r.stderr and not (tmp_path / "o.pt").exists()


def test_bounds_apply_to_plan_files_too(tmp_path: Path) -> None:
    src = Path(shutil.copy(SAMPLES / "tiny_cnn.pt", tmp_path / "m.pt"))
    plan = tmp_path / "plan.toml"
    for body, message in [
        ('match = "fc"\nscheme = "uniform"\na = 1\nb = 0', "--a must not be greater than --b"),
        ('match = "fc"\nscheme = "normal"\nstd = nan', "--std must be a finite number"),
        ('match = "fc.weight"\nscheme = "dirac"\ngroups = 1e400', "invalid value"),
        ('match = "fc"\nscheme = "constant"\nvalue = ' + "9" * 400, "invalid value"),
    ]:
        plan.write_text(f"[[rule]]\n{body}\n")
        r = run_cli("reinit", src, "--plan", plan, "--out", tmp_path / "o.pt")
        assert_one_error_line(r)
        assert message in r.stderr and "rule 1" in r.stderr, r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--scheme", "uniform", "--a", "0", "--b", "0"],  # a == b: every value is a
        ["--scheme", "trunc_normal", "--a", "1", "--b", "1"],
        ["--scheme", "normal", "--std", "0"],
        ["--scheme", "sparse", "--sparsity", "1", "--std", "0"],
        ["--scheme", "orthogonal", "--gain", "-2"],
        ["--scheme", "xavier_uniform", "--gain", "leaky_relu:0.2"],
        ["--scheme", "kaiming_normal", "--a", "-1", "--nonlinearity", "leaky_relu"],
    ],
)
def test_boundary_values_torch_accepts_still_work(tmp_path: Path, args: list[str]) -> None:
    src = Path(shutil.copy(SAMPLES / "tiny_cnn.pt", tmp_path / "m.pt"))
    sel = SELECT[args[1]]
    r = run_cli("reinit", src, *sel, *args, "--seed", "1", "--out", tmp_path / "o.pt")
    assert r.exit_code == 0, r.stderr


def toml_literal(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_literal(x) for x in v) + "]"
    return str(v)


toml_values = st.one_of(
    numbers,
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2, 10**400]),
    st.booleans(),
    st.sampled_from(["relu", "leaky_relu:0.1", "fan_in", "fan_out", "1.5", "nan", "", "tanh"]),
    st.lists(st.integers(0, 3), max_size=2),
)


@pytest.mark.slow  # hundreds of CLI runs: CI runs it, the fast loop does not
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    scheme=st.sampled_from(sorted(SCHEME_OPTIONS)),
    values=st.dictionaries(st.sampled_from(sorted(OPTION_VALUES)), toml_values, max_size=3),
)
def test_plan_option_values_never_crash(
    ckpts: dict[str, Path], tmp_path: Path, scheme: str, values: dict[str, object]
) -> None:
    """The same through a plan file, where TOML gives ints, bools, strings and arrays too."""
    match = SELECT[scheme][1]  # the tensors the scheme takes, as for the CLI
    body = "".join(f"{k} = {toml_literal(v)}\n" for k, v in values.items())
    plan = tmp_path / "plan.toml"
    plan.write_text(
        f"[[rule]]\nmatch = {json.dumps(match)}\nexclude = 'num_batches'\nscheme = {json.dumps(scheme)}\n{body}"
    )
    out = tmp_path / "o.pt"
    out.unlink(missing_ok=True)
    r = run_cli("reinit", ckpts["cnn"], "--plan", plan, "--seed", "0", "--out", out, "--quiet")
    assert_clean(r)
    event(f"exit {r.exit_code}")
    assert out.exists() is (r.exit_code == 0)


def test_upcast_progress_adds_up_to_the_bytes_of_a(tmp_path: Path) -> None:
    """The upcast comparison reports A's bytes done, like the one-dtype one (the diff progress bar)."""
    from pinit.checkpoint import open_checkpoint
    from pinit.diff import diff_checkpoints

    w = torch.randn(700, 500, generator=torch.Generator().manual_seed(3))
    a = save_checkpoint(tmp_path / "a.safetensors", {"w": w, "i": torch.arange(9)})
    b = save_checkpoint(tmp_path / "b.safetensors", {"w": w.to(torch.bfloat16), "i": torch.arange(9).int()})
    seen: list[int] = []
    with open_checkpoint(str(a)) as ca, open_checkpoint(str(b)) as cb:
        report = diff_checkpoints(ca, cb, progress=seen.append)
        assert sum(seen) == sum(e.nbytes for e in ca.tensors)
    assert {t.name: t.values for t in report.tensors} == {"w": "changed", "i": "identical"}


@pytest.mark.parametrize(
    "args",
    [
        ["--mean", "0", "--std", "1e-45", "--a", "1e-45", "--b", "2"],  # torch's sampler never ends here
        ["--mean", "100", "--std", "1", "--a", "-2", "--b", "2"],  # one draw in 400 kept
    ],
)
def test_trunc_normal_that_torch_would_loop_on_is_refused_before_any_work(tmp_path: Path, args: list[str]) -> None:
    path = tmp_path / "w.pt"
    torch.save({"w": torch.ones(64, 64)}, path)
    before = path.read_bytes()
    r = run_cli("reinit", path, "--match", "w", "--scheme", "trunc_normal", *args, "--seed", "0")
    assert r.exit_code == 2 and "could run for hours" in r.stderr, r.stderr
    assert path.read_bytes() == before


def test_trunc_normal_acceptance_matches_torch_sampling() -> None:
    """The predicted share of kept draws, against torch's own sampler counted by hand."""
    from pinit.schemes import trunc_normal_acceptance

    for mean, std, a, b in [(0.0, 1.0, 2.0, 3.0), (5.0, 1.0, -2.0, 2.0), (0.0, 1.0, -2.0, 2.0)]:
        g = torch.Generator().manual_seed(0)
        n = 400_000
        mass = 0.5 * (math.erf((b - mean) / std / math.sqrt(2)) - math.erf((a - mean) / std / math.sqrt(2)))
        if mass > 0.3:  # torch: normal draws cut to [a, b]
            x = torch.empty(n).normal_(mean, std, generator=g)
            kept = ((x >= a) & (x <= b)).float().mean().item()
        else:  # torch: uniform draws on [a, b] kept with the density relative to its peak
            x = torch.empty(n).uniform_(a, b, generator=g)
            mode = max(a, min(mean, b))
            log_pdf = -0.5 * ((x - mean) / std) ** 2 + 0.5 * ((mode - mean) / std) ** 2
            kept = (torch.empty(n).uniform_(generator=g).log() <= log_pdf).float().mean().item()
        assert abs(kept - trunc_normal_acceptance(mean, std, a, b)) < 0.01, (mean, std, a, b, kept)
