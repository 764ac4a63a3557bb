"""``pinit reinit --scheme S`` and ``pinit schemes``, checked through the CLI.

In the manner of PyTorch's ``test/nn/test_init.py``: every test writes a
checkpoint, runs ``pinit reinit`` on it, loads the output and checks the new
values, statistically (Kolmogorov-Smirnov against the distribution whose
spread is computed here from fan-in, fan-out and gain) or exactly.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from scipy import stats

from conftest import run_cli
from pinit.reinitialize import derive_seed

P_MIN = 1e-4  # a KS p-value below this means "not the expected distribution"

ALL_SCHEMES = [
    "uniform",
    "normal",
    "trunc_normal",
    "constant",
    "ones",
    "zeros",
    "eye",
    "dirac",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "orthogonal",
    "sparse",
    "default",
]

LINEAR = (256, 512)  # out_features x in_features: fan_in 512, fan_out 256
CONV = (64, 32, 3, 3)  # out x in x kh x kw: fan_in 32*9 = 288, fan_out 64*9 = 576


# ---------------------------------------------------------------------------
# helpers


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """fan_in, fan_out, computed here from the definition (not pinit's helper)."""
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def save(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    else:
        torch.save(tensors, path)
    return path


def load(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, weights_only=True)


def reinit(src: Path, out: Path, *args: str, seed: str | None = "0") -> str:
    """Run ``pinit reinit SRC ARGS --seed SEED --out OUT``; return stderr."""
    seed_args = ("--seed", seed) if seed is not None else ()
    r = run_cli("reinit", src, *args, *seed_args, "--out", out)
    assert r.exit_code == 0, (r.exit_code, r.stdout, r.stderr)
    return r.stderr


def reinit_one(
    tmp_path: Path,
    shape: tuple[int, ...],
    scheme: str,
    *opts: str,
    dtype: torch.dtype = torch.float32,
    name: str = "layer.weight",
    seed: str = "0",
    ext: str = ".safetensors",
) -> torch.Tensor:
    """A checkpoint holding ``name`` (filled with 7s) and a bystander; reinit ``name`` only."""
    src = save(
        tmp_path / f"in{ext}",
        {name: torch.full(shape, 7.0, dtype=dtype), "other": torch.arange(6, dtype=torch.float32)},
    )
    out = tmp_path / f"out{ext}"
    reinit(src, out, "--match", f"^{re.escape(name)}$", "--scheme", scheme, *opts, seed=seed)
    result = load(out)
    assert torch.equal(result["other"], torch.arange(6, dtype=torch.float32))  # untouched
    t = result[name]
    assert t.dtype == dtype and tuple(t.shape) == shape
    return t


def ks_p(t: torch.Tensor, cdf) -> float:
    return stats.kstest(t.double().flatten().numpy(), cdf).pvalue


def assert_uniform(t: torch.Tensor, lo: float, hi: float) -> None:
    p = ks_p(t, stats.uniform(lo, hi - lo).cdf)
    assert p > P_MIN, f"not U({lo}, {hi}): KS p={p:.3g}"
    assert float(t.min()) >= lo and float(t.max()) <= hi


def assert_normal(t: torch.Tensor, mean: float, std: float) -> None:
    p = ks_p(t, stats.norm(mean, std).cdf)
    assert p > P_MIN, f"not N({mean}, {std}²): KS p={p:.3g}"


def seed_for(seed: int, name: str) -> int:
    """The documented derivation, written out here independently of pinit."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def gen(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed_for(seed, name))


def as_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


# ---------------------------------------------------------------------------
# plain random schemes


def test_uniform_a_b(tmp_path):
    t = reinit_one(tmp_path, LINEAR, "uniform", "--a", "-0.3", "--b", "0.7")
    assert_uniform(t, -0.3, 0.7)


def test_uniform_defaults_to_unit_interval(tmp_path):
    t = reinit_one(tmp_path, (300, 300), "uniform")
    assert_uniform(t, 0.0, 1.0)


def test_normal_mean_std(tmp_path):
    t = reinit_one(tmp_path, LINEAR, "normal", "--mean", "1.5", "--std", "0.25")
    assert_normal(t, 1.5, 0.25)
    # power: the same values are not N(1.5, 0.3²)
    assert ks_p(t, stats.norm(1.5, 0.3).cdf) < P_MIN


@pytest.mark.parametrize(
    ("mean", "std", "a", "b"),
    [(0.5, 1.0, -1.0, 1.5), (0.0, 1.0, -2.0, 2.0), (0.0, 0.02, -0.04, 0.04)],
)
def test_trunc_normal(tmp_path, mean, std, a, b):
    t = reinit_one(
        tmp_path, LINEAR, "trunc_normal", "--mean", str(mean), "--std", str(std), "--a", str(a), "--b", str(b)
    )
    assert float(t.min()) >= a and float(t.max()) <= b
    dist = stats.truncnorm((a - mean) / std, (b - mean) / std, loc=mean, scale=std)
    p = ks_p(t, dist.cdf)
    assert p > P_MIN, f"KS p={p:.3g}"


# ---------------------------------------------------------------------------
# fan-based schemes


@pytest.mark.parametrize("shape", [LINEAR, CONV], ids=["linear", "conv"])
@pytest.mark.parametrize(
    ("gain_arg", "gain"),
    [
        (None, 1.0),
        ("relu", math.sqrt(2.0)),
        ("tanh", 5.0 / 3),
        ("leaky_relu:0.2", math.sqrt(2.0 / (1 + 0.2**2))),
        ("2.5", 2.5),
    ],
)
@pytest.mark.parametrize("kind", ["uniform", "normal"])
def test_xavier(tmp_path, kind, gain_arg, gain, shape):
    opts = ("--gain", gain_arg) if gain_arg is not None else ()
    t = reinit_one(tmp_path, shape, f"xavier_{kind}", *opts)
    fan_in, fan_out = fans(shape)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    if kind == "uniform":
        bound = std * math.sqrt(3.0)  # = gain·√(6/(fan_in+fan_out))
        assert_uniform(t, -bound, bound)
        assert ks_p(t, stats.uniform(-1.2 * bound, 2.4 * bound).cdf) < P_MIN
    else:
        assert_normal(t, 0.0, std)
        assert ks_p(t, stats.norm(0.0, 1.2 * std).cdf) < P_MIN


@pytest.mark.parametrize("shape", [LINEAR, CONV], ids=["linear", "conv"])
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
@pytest.mark.parametrize(
    ("nonlin_args", "gain"),
    [
        (("--nonlinearity", "relu"), math.sqrt(2.0)),
        (("--nonlinearity", "leaky_relu", "--a", "0.2"), math.sqrt(2.0 / (1 + 0.2**2))),
        ((), math.sqrt(2.0)),  # defaults: leaky_relu with a=0
        (("--nonlinearity", "leaky_relu", "--a", str(math.sqrt(5))), math.sqrt(1.0 / 3)),
    ],
    ids=["relu", "leaky_relu_0.2", "default", "leaky_relu_sqrt5"],
)
@pytest.mark.parametrize("kind", ["uniform", "normal"])
def test_kaiming(tmp_path, kind, nonlin_args, gain, mode, shape):
    t = reinit_one(tmp_path, shape, f"kaiming_{kind}", "--mode", mode, *nonlin_args)
    fan_in, fan_out = fans(shape)
    assert fan_in != fan_out  # so that a swapped mode is caught below
    fan, wrong_fan = (fan_in, fan_out) if mode == "fan_in" else (fan_out, fan_in)
    std, wrong_std = gain / math.sqrt(fan), gain / math.sqrt(wrong_fan)
    if kind == "uniform":
        bound = math.sqrt(3.0) * std
        assert_uniform(t, -bound, bound)
        wrong = math.sqrt(3.0) * wrong_std
        assert ks_p(t, stats.uniform(-wrong, 2 * wrong).cdf) < P_MIN
    else:
        assert_normal(t, 0.0, std)
        assert ks_p(t, stats.norm(0.0, wrong_std).cdf) < P_MIN


def test_kaiming_on_torch_checkpoint(tmp_path):
    """The same through a torch.save input and torch zip output."""
    t = reinit_one(tmp_path, CONV, "kaiming_normal", "--mode", "fan_out", "--nonlinearity", "relu", ext=".pt")
    assert_normal(t, 0.0, math.sqrt(2.0) / math.sqrt(fans(CONV)[1]))


# ---------------------------------------------------------------------------
# exact schemes


@pytest.mark.parametrize("shape", [(6, 6), (3, 5), (5, 3)])
def test_eye(tmp_path, shape):
    t = reinit_one(tmp_path, shape, "eye")
    expected = np.zeros(shape, np.float32)
    for i in range(min(shape)):
        expected[i, i] = 1.0
    np.testing.assert_array_equal(t.numpy(), expected)


@pytest.mark.parametrize(
    ("shape", "groups"),
    [
        ((4, 3, 5), 1),
        ((6, 2, 3), 2),
        ((8, 3, 3, 3), 2),
        ((4, 6, 3, 5), 2),
        ((4, 2, 3, 3, 3), 2),
        ((3, 5, 3, 3), 1),
    ],
)
def test_dirac(tmp_path, shape, groups):
    opts = ("--groups", str(groups)) if groups != 1 else ()
    t = reinit_one(tmp_path, shape, "dirac", *opts)
    expected = np.zeros(shape, np.float32)
    out_per_group = shape[0] // groups
    center = tuple(s // 2 for s in shape[2:])
    for g in range(groups):
        for d in range(min(out_per_group, shape[1])):
            expected[(g * out_per_group + d, d, *center)] = 1.0
    np.testing.assert_array_equal(t.numpy(), expected)
    # a dirac convolution keeps its input (within each group), checked for the 2-D case
    if len(shape) == 4 and groups == 1 and shape[0] <= shape[1]:
        x = torch.randn(1, shape[1], 7, 9, generator=torch.Generator().manual_seed(1))
        y = torch.nn.functional.conv2d(x, t, padding=tuple(s // 2 for s in shape[2:]))
        torch.testing.assert_close(y, x[:, : shape[0]])


@pytest.mark.parametrize(
    ("shape", "gain_args", "gain"),
    [
        ((64, 128), (), 1.0),
        ((128, 64), (), 1.0),
        ((64, 128), ("--gain", "2"), 2.0),
        ((128, 64), ("--gain", "2"), 2.0),
        ((16, 8, 3, 3), ("--gain", "2"), 2.0),  # flattened to 16 x 72
        ((100, 4, 3, 3), ("--gain", "relu"), math.sqrt(2.0)),  # flattened to 100 x 36
    ],
)
def test_orthogonal(tmp_path, shape, gain_args, gain):
    t = reinit_one(tmp_path, shape, "orthogonal", *gain_args)
    w = t.reshape(shape[0], -1)
    rows, cols = w.shape
    gram = w @ w.T if rows <= cols else w.T @ w
    eye = torch.eye(min(rows, cols)) * gain**2
    torch.testing.assert_close(gram, eye, atol=1e-5 * gain**2, rtol=0)


@pytest.mark.parametrize(("rows", "cols", "sparsity"), [(201, 200, 0.5), (100, 64, 0.5), (50, 400, 0.9)])
def test_sparse(tmp_path, rows, cols, sparsity):
    std = 0.05
    t = reinit_one(tmp_path, (rows, cols), "sparse", "--sparsity", str(sparsity), "--std", str(std))
    zeros_per_column = (t == 0).sum(dim=0)
    assert torch.all(zeros_per_column == math.ceil(sparsity * rows)), zeros_per_column
    assert_normal(t[t != 0], 0.0, std)


def test_sparse_default_std(tmp_path):
    t = reinit_one(tmp_path, (201, 200), "sparse", "--sparsity", "0.5")
    assert torch.all((t == 0).sum(dim=0) == 101)
    assert_normal(t[t != 0], 0.0, 0.01)


@pytest.mark.parametrize(
    ("scheme", "opts", "value"),
    [
        ("constant", ("--value", "0.5"), 0.5),
        ("constant", ("--value", "-3.25"), -3.25),
        ("ones", (), 1.0),
        ("zeros", (), 0.0),
    ],
)
@pytest.mark.parametrize("shape", [(), (5,), (3, 4, 2)])
def test_constant_ones_zeros(tmp_path, scheme, opts, value, shape):
    t = reinit_one(tmp_path, shape, scheme, *opts)
    assert torch.equal(t, torch.full(shape, value))


# ---------------------------------------------------------------------------
# the 'default' scheme


def _modules() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "fc": torch.nn.Linear(512, 256),
        "conv": torch.nn.Conv2d(32, 64, 3),
        "bn": torch.nn.BatchNorm2d(64),
        "ln": torch.nn.LayerNorm(128),
        "embed": torch.nn.Embedding(1000, 64),
    }


def _check_default_values(sd: dict[str, torch.Tensor]) -> None:
    """What freshly built nn.Linear, nn.Conv2d, nn.BatchNorm2d, nn.LayerNorm, nn.Embedding hold."""
    for layer, weight_shape in [("fc", (256, 512)), ("conv", (64, 32, 3, 3))]:
        w, b = sd[f"{layer}.weight"], sd[f"{layer}.bias"]
        assert tuple(w.shape) == weight_shape
        fan_in = fans(weight_shape)[0]
        bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform(a=√5): √(6/((1+5)·fan_in))
        assert_uniform(w, -bound, bound)
        assert_uniform(b, -bound, bound)
    for bias in ("fc.bias", "conv.bias"):
        # the bias bound follows the sibling weight's fan_in, not its own length
        assert float(sd[bias].abs().max()) > 0.5 / math.sqrt(fans(tuple(sd[bias.replace("bias", "weight")].shape))[0])
    for norm, n in [("bn", 64), ("ln", 128)]:
        assert torch.equal(sd[f"{norm}.weight"], torch.ones(n))
        assert torch.equal(sd[f"{norm}.bias"], torch.zeros(n))
    assert torch.equal(sd["bn.running_mean"], torch.zeros(64))
    assert torch.equal(sd["bn.running_var"], torch.ones(64))
    assert_normal(sd["embed.weight"], 0.0, 1.0)


def test_expectations_match_fresh_torch_modules():
    """The expectations of the 'default' test hold for modules PyTorch builds itself."""
    sd = {f"{p}.{k}": v.detach() for p, m in _modules().items() for k, v in m.state_dict().items()}
    _check_default_values(sd)


@pytest.mark.parametrize("ext", [".pt", ".safetensors"])
def test_default_scheme_matches_fresh_modules(tmp_path, ext):
    sd = {f"{p}.{k}": v.detach().clone() for p, m in _modules().items() for k, v in m.state_dict().items()}
    # scramble every value so that nothing passes by being left alone
    for k, v in sd.items():
        if v.is_floating_point():
            sd[k] = torch.full_like(v, 3.0)
    sd["bn.num_batches_tracked"] = torch.tensor(17)
    src = save(tmp_path / f"model{ext}", sd)
    out = tmp_path / f"out{ext}"
    r = run_cli(
        "reinit", src, "--match", ".", "--exclude", "num_batches_tracked", "--scheme", "default",
        "--seed", "0", "--out", out, "--format", "json",
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    applied = {t["name"]: t["applied"] for t in r.json()["tensors"]}
    assert applied == {
        "fc.weight": "kaiming_uniform",
        "fc.bias": "uniform",
        "conv.weight": "kaiming_uniform",
        "conv.bias": "uniform",
        "bn.weight": "ones",
        "bn.bias": "zeros",
        "bn.running_mean": "zeros",
        "bn.running_var": "ones",
        "ln.weight": "ones",
        "ln.bias": "zeros",
        "embed.weight": "normal",
    }
    new = load(out)
    assert set(new) == set(sd)
    assert torch.equal(new["bn.num_batches_tracked"], torch.tensor(17))
    for k, v in new.items():
        assert v.dtype == sd[k].dtype and v.shape == sd[k].shape, k
    _check_default_values(new)
    # and the reinitialized checkpoint loads into the modules it came from
    for prefix, module in _modules().items():
        module.load_state_dict({k.split(".", 1)[1]: v for k, v in new.items() if k.startswith(prefix + ".")})


# ---------------------------------------------------------------------------
# dtypes


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("scheme", "opts"),
    [
        ("normal", ("--std", "0.02")),
        ("kaiming_uniform", ("--nonlinearity", "relu")),
        ("trunc_normal", ("--std", "0.5")),
        ("orthogonal", ()),
        ("constant", ("--value", "0.1")),
    ],
)
@pytest.mark.parametrize("ext", [".safetensors", ".pt"])
def test_half_dtypes_are_float32_values_cast(tmp_path, dtype, scheme, opts, ext):
    shape = (64, 96)
    (tmp_path / "h").mkdir()
    (tmp_path / "f").mkdir()
    half = reinit_one(tmp_path / "h", shape, scheme, *opts, dtype=dtype, ext=ext)
    single = reinit_one(tmp_path / "f", shape, scheme, *opts, dtype=torch.float32, ext=ext)
    assert half.dtype == dtype
    assert torch.equal(half, single.to(dtype))


def test_float64_is_computed_in_float64(tmp_path):
    shape = (128, 256)
    t = reinit_one(tmp_path, shape, "normal", "--std", "0.02", dtype=torch.float64)
    assert t.dtype == torch.float64
    expected = torch.nn.init.normal_(
        torch.empty(shape, dtype=torch.float64), std=0.02, generator=gen(0, "layer.weight")
    )
    assert torch.equal(t, expected)
    assert_normal(t, 0.0, 0.02)


# ---------------------------------------------------------------------------
# seeds


def _two_tensor_checkpoint(path: Path) -> Path:
    return save(path, {"b": torch.zeros(200, 300), "a": torch.zeros(300, 200), "c": torch.zeros(10)})


def test_same_seed_gives_identical_files(tmp_path):
    src = _two_tensor_checkpoint(tmp_path / "m.safetensors")
    outs = [tmp_path / f"o{i}.safetensors" for i in range(2)]
    for o in outs:
        reinit(src, o, "--match", "^[ab]$", "--scheme", "kaiming_normal", "--no-provenance", seed="42")
    assert outs[0].read_bytes() == outs[1].read_bytes()
    # with provenance the tensor data are identical too
    provs = [tmp_path / f"p{i}.safetensors" for i in range(2)]
    for o in provs:
        reinit(src, o, "--match", "^[ab]$", "--scheme", "kaiming_normal", seed="42")
    one, two = load(provs[0]), load(provs[1])
    assert {k: as_bytes(v) for k, v in one.items()} == {k: as_bytes(v) for k, v in two.items()}
    assert {k: as_bytes(v) for k, v in one.items()} == {k: as_bytes(v) for k, v in load(outs[0]).items()}
    # a different seed changes the values
    reinit(src, tmp_path / "s43.safetensors", "--match", "^[ab]$", "--scheme", "kaiming_normal", seed="43")
    assert not torch.equal(load(tmp_path / "s43.safetensors")["a"], one["a"])


def test_same_seed_gives_identical_torch_files(tmp_path):
    src = _two_tensor_checkpoint(tmp_path / "m.pt")
    outs = [tmp_path / f"o{i}.pt" for i in range(2)]
    for o in outs:
        reinit(src, o, "--match", "^[ab]$", "--scheme", "xavier_uniform", seed="7")
    one, two = load(outs[0]), load(outs[1])
    assert {k: as_bytes(v) for k, v in one.items()} == {k: as_bytes(v) for k, v in two.items()}


@pytest.mark.parametrize("scheme", ["normal", "kaiming_uniform", "orthogonal", "sparse"])
def test_values_do_not_depend_on_other_selected_tensors(tmp_path, scheme):
    opts = ("--sparsity", "0.3") if scheme == "sparse" else ()
    src = _two_tensor_checkpoint(tmp_path / "m.safetensors")
    alone, both, rev = (tmp_path / f"{n}.safetensors" for n in ("alone", "both", "rev"))
    reinit(src, alone, "--match", "^a$", "--scheme", scheme, *opts, seed="5")
    reinit(src, both, "--match", "^(a|b)$", "--scheme", scheme, *opts, seed="5")
    reinit(src, rev, "--match", "^b$", "--match", "^a$", "--scheme", scheme, *opts, seed="5")
    a_alone, t_both, t_rev = load(alone), load(both), load(rev)
    assert torch.equal(a_alone["a"], t_both["a"])
    assert torch.equal(a_alone["a"], t_rev["a"])
    assert torch.equal(t_both["b"], t_rev["b"])
    assert torch.equal(a_alone["b"], torch.zeros(200, 300))  # not selected, untouched
    assert not torch.equal(t_both["b"], torch.zeros(200, 300))
    # a tensor moved to a file with other neighbours (and another name order) gets the same values
    other = save(tmp_path / "other.pt", {"zzz": torch.ones(3), "a": torch.full((300, 200), 9.0)})
    reinit(other, tmp_path / "other_out.pt", "--match", "^a$", "--scheme", scheme, *opts, seed="5")
    assert torch.equal(load(tmp_path / "other_out.pt")["a"], a_alone["a"])


@pytest.mark.parametrize(
    ("scheme", "opts", "kwargs"),
    [
        ("uniform", ("--a", "-2", "--b", "3"), {"a": -2.0, "b": 3.0}),
        ("normal", ("--mean", "1", "--std", "0.5"), {"mean": 1.0, "std": 0.5}),
        ("trunc_normal", ("--std", "0.02", "--a", "-0.04", "--b", "0.04"), {"std": 0.02, "a": -0.04, "b": 0.04}),
        ("xavier_uniform", ("--gain", "relu"), {"gain": math.sqrt(2.0)}),
        ("xavier_normal", ("--gain", "0.5"), {"gain": 0.5}),
        ("kaiming_uniform", ("--a", "0.1", "--mode", "fan_out"), {"a": 0.1, "mode": "fan_out"}),
        ("kaiming_normal", ("--nonlinearity", "relu"), {"nonlinearity": "relu"}),
        (
            "kaiming_normal_",
            ("--mode", "fan_out", "--nonlinearity", "relu"),
            {"mode": "fan_out", "nonlinearity": "relu"},
        ),
        ("orthogonal", ("--gain", "2"), {"gain": 2.0}),
        ("sparse", ("--sparsity", "0.25", "--std", "0.1"), {"sparsity": 0.25, "std": 0.1}),
    ],
)
@pytest.mark.parametrize("seed", [0, 123456789, 2**64 - 1])
def test_values_equal_torch_init_with_documented_generator(tmp_path, scheme, opts, kwargs, seed):
    name = "encoder.layers.0.mlp.weight"
    shape = (48, 80)
    t = reinit_one(tmp_path, shape, scheme, *opts, name=name, seed=str(seed))
    s = seed_for(seed, name)
    assert derive_seed(seed, name) == s
    expected = torch_init(scheme, shape, kwargs, torch.Generator().manual_seed(s))
    assert torch.equal(t, expected)
    # not the values of a generator seeded from the plain seed
    plain = torch_init(scheme, shape, kwargs, torch.Generator().manual_seed(seed % 2**63))
    assert not torch.equal(t, plain)


def torch_init(scheme: str, shape: tuple[int, ...], kwargs: dict, g: torch.Generator) -> torch.Tensor:
    """``torch.nn.init.<scheme>_(torch.empty(shape), **kwargs, generator=g)``.

    For ``sparse`` the same steps with the zero positions drawn from ``g`` too: torch's own
    ``sparse_`` draws them with ``torch.randperm`` from the global RNG, ignoring ``generator``
    (so no seed could reproduce them; see pytorch/pytorch PR 196941).
    """
    t = torch.empty(shape)
    if scheme == "sparse":
        rows, cols = shape
        t.normal_(0, kwargs["std"], generator=g)
        for col in range(cols):
            t[torch.randperm(rows, generator=g)[: math.ceil(kwargs["sparsity"] * rows)], col] = 0
        return t
    return getattr(torch.nn.init, scheme.rstrip("_") + "_")(t, **kwargs, generator=g)


@pytest.mark.parametrize(
    ("scheme", "opts"),
    [("sparse", ("--sparsity", "0.5")), ("kaiming_uniform", ()), ("orthogonal", ()), ("trunc_normal", ())],
)
def test_values_ignore_and_keep_the_global_rng(tmp_path, scheme, opts):
    """Every random draw comes from the tensor's own generator: the global torch RNG state
    neither changes the values nor is changed by the run."""
    src = save(tmp_path / "m.safetensors", {"w": torch.zeros(64, 40)})
    outs = []
    for i, global_seed in enumerate((1, 2)):
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        out = tmp_path / f"o{i}.safetensors"
        reinit(src, out, "--match", "w", "--scheme", scheme, *opts, "--no-provenance", seed="3")
        assert torch.equal(torch.get_rng_state(), state), "reinit consumed the global RNG"
        outs.append(out)
    assert outs[0].read_bytes() == outs[1].read_bytes()


def test_derive_seed_documented_vectors():
    for seed, name in [(0, "a"), (1, "a"), (0, "b"), (2**64 - 1, "model.layers.11.attn.q_proj.weight"), (7, "é")]:
        s = seed_for(seed, name)
        assert derive_seed(seed, name) == s
        assert 0 <= s < 2**63
    assert seed_for(0, "a") != seed_for(1, "a") != seed_for(0, "b")


def test_trailing_underscore_spelling(tmp_path):
    src = save(tmp_path / "m.safetensors", {"w": torch.zeros(CONV)})
    for scheme in ("kaiming_normal", "kaiming_normal_"):
        reinit(src, tmp_path / f"{scheme}.safetensors", "--match", "w", "--scheme", scheme, "--no-provenance")
    a = tmp_path / "kaiming_normal.safetensors"
    b = tmp_path / "kaiming_normal_.safetensors"
    assert a.read_bytes() == b.read_bytes()
    assert_normal(load(a)["w"], 0.0, math.sqrt(2.0) / math.sqrt(fans(CONV)[0]))


def test_drawn_seed_is_printed_recorded_and_reproducible(tmp_path):
    src = _two_tensor_checkpoint(tmp_path / "m.safetensors")
    first = tmp_path / "first.safetensors"
    r = run_cli("reinit", src, "--match", "^[ab]$", "--scheme", "xavier_normal", "--out", first, "--format", "json")
    assert r.exit_code == 0, r.stderr
    m = re.search(r"^seed: (\d+)\b", r.stderr, re.MULTILINE)
    assert m, r.stderr
    seed = int(m.group(1))
    doc = r.json()
    assert doc["seed"] == seed and doc["seed_drawn"] is True
    with safe_open(str(first), "pt") as f:
        record = json.loads(f.metadata()["pinit"])
    assert record["seed"] == seed
    again = tmp_path / "again.safetensors"
    r2 = run_cli(
        "reinit", src, "--match", "^[ab]$", "--scheme", "xavier_normal", "--out", again,
        "--seed", str(seed), "--format", "json",
    )  # fmt: skip
    assert r2.exit_code == 0, r2.stderr
    assert r2.json()["seed_drawn"] is False
    assert "seed:" not in r2.stderr
    x, y = load(first), load(again)
    assert {k: as_bytes(v) for k, v in x.items()} == {k: as_bytes(v) for k, v in y.items()}
    expected = torch.nn.init.xavier_normal_(torch.empty(300, 200), generator=gen(seed, "a"))
    assert torch.equal(x["a"], expected)


# ---------------------------------------------------------------------------
# pinit schemes


def test_schemes_table_lists_every_scheme():
    r = run_cli("schemes")
    assert r.exit_code == 0, r.stderr
    listed = {line.split()[0] for line in r.stdout.splitlines() if line.strip()}
    assert set(ALL_SCHEMES) <= listed


def test_schemes_json():
    r = run_cli("schemes", "--format", "json")
    assert r.exit_code == 0, r.stderr
    schemes = {s["name"]: s for s in r.json()["schemes"]}
    assert sorted(schemes) == sorted(ALL_SCHEMES)
    for name, s in schemes.items():
        assert isinstance(s["options"], list), name
        assert isinstance(s["shapes"], str) and s["shapes"], name
        for o in s["options"]:
            assert set(o) >= {"name", "required", "default"}, (name, o)
            assert o["required"] == (o["default"] is None), (name, o)
        if name == "default":
            assert s["options"] == []
            continue
        # each option's default is torch's own default for that argument
        params = inspect.signature(getattr(torch.nn.init, name + "_")).parameters
        for o in s["options"]:
            p = params["val" if o["name"] == "value" else o["name"]]
            if o["required"]:
                assert p.default is inspect.Parameter.empty, (name, o)
            else:
                assert o["default"] == p.default, (name, o, p.default)
    opts = {n: {o["name"] for o in s["options"]} for n, s in schemes.items()}
    assert opts["uniform"] == {"a", "b"}
    assert opts["trunc_normal"] == {"mean", "std", "a", "b"}
    assert opts["kaiming_normal"] == {"a", "mode", "nonlinearity"}
    assert opts["sparse"] == {"sparsity", "std"}
    assert opts["dirac"] == {"groups"}
    assert opts["constant"] == {"value"}
    ndim = {n: (s["min_ndim"], s["max_ndim"]) for n, s in schemes.items()}
    assert ndim["eye"] == (2, 2)
    assert ndim["sparse"] == (2, 2)
    assert ndim["dirac"] == (3, 5)
    for n in ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal"):
        assert ndim[n] == (2, None), n
    for n in ("uniform", "normal", "trunc_normal", "constant", "ones", "zeros"):
        assert ndim[n] == (0, None), n


@pytest.mark.parametrize("args", [["schemes"], ["schemes", "--format", "json"]])
def test_schemes_does_not_import_torch(args):
    code = (
        "import sys\n"
        f"sys.argv = ['pinit', *{args!r}]\n"
        "from pinit.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "assert 'torch' not in sys.modules, 'pinit schemes imported torch'\n"
        "print('NO-TORCH-OK', file=sys.stderr)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "NO-TORCH-OK" in p.stderr
    assert "kaiming_normal" in p.stdout
