"""The initialization schemes of ``reinit``, described without importing torch.

Each scheme is ``torch.nn.init.<name>_``; its options map one to one onto
torch's arguments.  ``default`` is PyTorch's own default for the layer a tensor
belongs to, inferred from its name, shape and siblings (see :mod:`pinit.defaults`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pinit.errors import PinitError

REQUIRED = object()

# torch draws in float32 (float64 for float64 tensors): every number must fit float32, whose
# bounds torch's uniform_ and fill_ check; it also keeps a kaiming slope's square finite
FLOAT32_MAX = 3.4028234663852886e38

NONLINEARITIES = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "selu",
)

# CLI / plan option name -> torch argument name
OPTION_ARG = {
    "a": "a",
    "b": "b",
    "mean": "mean",
    "std": "std",
    "value": "val",
    "gain": "gain",
    "mode": "mode",
    "nonlinearity": "nonlinearity",
    "sparsity": "sparsity",
    "groups": "groups",
}


@dataclass(frozen=True)
class Option:
    name: str  # the CLI spelling without dashes (plan files use it too)
    kind: str  # "float", "int", "gain", "mode", "nonlinearity"
    default: Any = REQUIRED

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe(self) -> str:
        return f"{self.name} (required)" if self.required else f"{self.name}={self.default}"


@dataclass(frozen=True)
class Scheme:
    name: str
    options: tuple[Option, ...]
    min_ndim: int
    max_ndim: int | None
    random: bool
    summary: str

    @property
    def shapes(self) -> str:
        if self.max_ndim is None:
            return "any shape" if self.min_ndim == 0 else f"{self.min_ndim}-D or more"
        if self.min_ndim == self.max_ndim:
            return f"{self.min_ndim}-D only"
        return f"{self.min_ndim}-D to {self.max_ndim}-D"

    def accepts(self, shape: tuple[int, ...]) -> bool:
        n = len(shape)
        return n >= self.min_ndim and (self.max_ndim is None or n <= self.max_ndim)

    @property
    def torch_function(self) -> str:
        return f"torch.nn.init.{self.name}_"


def _o(name: str, kind: str, default: Any = REQUIRED) -> Option:
    return Option(name, kind, default)


_KAIMING = (_o("a", "float", 0.0), _o("mode", "mode", "fan_in"), _o("nonlinearity", "nonlinearity", "leaky_relu"))

SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in [
        Scheme("uniform", (_o("a", "float", 0.0), _o("b", "float", 1.0)), 0, None, True, "U(a, b)"),
        Scheme("normal", (_o("mean", "float", 0.0), _o("std", "float", 1.0)), 0, None, True, "N(mean, std²)"),
        Scheme(
            "trunc_normal",
            (_o("mean", "float", 0.0), _o("std", "float", 1.0), _o("a", "float", -2.0), _o("b", "float", 2.0)),
            0,
            None,
            True,
            "N(mean, std²) truncated to [a, b]",
        ),
        Scheme("constant", (_o("value", "float"),), 0, None, False, "every element = value"),
        Scheme("ones", (), 0, None, False, "every element = 1"),
        Scheme("zeros", (), 0, None, False, "every element = 0"),
        Scheme("eye", (), 2, 2, False, "identity matrix (ones on the diagonal)"),
        Scheme("dirac", (_o("groups", "int", 1),), 3, 5, False, "Dirac delta: a convolution that keeps its input"),
        Scheme(
            "xavier_uniform",
            (_o("gain", "gain", 1.0),),
            2,
            None,
            True,
            "U(-b, b), b = gain·√(6/(fan_in+fan_out)) (Glorot)",
        ),
        Scheme("xavier_normal", (_o("gain", "gain", 1.0),), 2, None, True, "N(0, σ²), σ = gain·√(2/(fan_in+fan_out))"),
        Scheme("kaiming_uniform", _KAIMING, 2, None, True, "U(-b, b), b = gain·√(3/fan_mode) (He)"),
        Scheme("kaiming_normal", _KAIMING, 2, None, True, "N(0, σ²), σ = gain/√fan_mode (He)"),
        Scheme("orthogonal", (_o("gain", "gain", 1.0),), 2, None, True, "(semi-)orthogonal matrix times gain"),
        Scheme(
            "sparse",
            (_o("sparsity", "float"), _o("std", "float", 0.01)),
            2,
            2,
            True,
            "N(0, std²) with a fraction `sparsity` of each column zeroed",
        ),
        Scheme(
            "default",
            (),
            0,
            None,
            True,
            "PyTorch's own default for the layer, inferred from name and shape (rules below)",
        ),
    ]
}

DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    ("*.running_mean", "zeros (BatchNorm running mean)"),
    ("*.running_var", "ones (BatchNorm running variance)"),
    ("*.weight, 1-D", "ones (norm layer: BatchNorm, LayerNorm, GroupNorm, RMSNorm)"),
    ("*.bias whose sibling weight is 1-D or absent", "zeros (norm layer bias)"),
    ("*.bias whose sibling weight is ≥ 2-D", "uniform(-1/√fan_in, 1/√fan_in), fan_in of that weight (Linear/Conv)"),
    ("*.weight, 2-D, name has 'embed', 'wte', 'wpe' or 'embedding'", "normal(0, 1) (nn.Embedding)"),
    ("*.weight (or any other tensor), ≥ 2-D", "kaiming_uniform(a=√5) (nn.Linear, nn.Conv*)"),
    ("anything else (1-D or 0-D without a rule)", "an error: choose a scheme"),
)


def canonical_name(name: str) -> str:
    """``kaiming_normal_`` and ``kaiming_normal`` are the same scheme."""
    key = name.strip().removeprefix("torch.nn.init.").removesuffix("_")
    if key not in SCHEMES:
        raise PinitError(f"unknown scheme '{name}' (see 'pinit schemes')")
    return key


def parse_gain(value: Any, ctx: str = "") -> float:
    """A number, or a nonlinearity name (``relu``, ``leaky_relu:0.2``) meaning calculate_gain(name)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    name, colon, param = text.partition(":")
    slope = None
    if colon:
        if name != "leaky_relu":
            raise PinitError(f"--gain {text!r}: only leaky_relu takes a parameter (leaky_relu:SLOPE){ctx}")
        slope = float(param)  # ValueError: the caller names the invalid value
        if not math.isfinite(slope) or abs(slope) > FLOAT32_MAX:  # torch squares it: a finite float
            raise PinitError(f"--gain {text!r}: the slope must be a finite number within ±3.4e38{ctx}")
    return calculate_gain(name, slope)


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The same numbers as ``torch.nn.init.calculate_gain`` (kept here so validation needs no torch)."""
    if nonlinearity not in NONLINEARITIES:
        raise PinitError(f"unknown nonlinearity '{nonlinearity}' (one of {', '.join(NONLINEARITIES)})")
    if nonlinearity in ("linear", "sigmoid") or nonlinearity.startswith("conv"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        return math.sqrt(2.0 / (1 + slope**2))
    return 3.0 / 4  # selu


def resolve_options(scheme: str, given: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Validate options for ``scheme`` and return torch keyword arguments.

    ``given`` maps option names (CLI spelling, no dashes) to values; an option
    the scheme does not take, or a missing required one, is an error naming it.
    """
    spec = SCHEMES[scheme]
    known = {o.name: o for o in spec.options}
    ctx = f" ({where})" if where else ""
    for name in given:
        if name not in known:
            takes = ", ".join(f"--{o.name}" for o in spec.options) or "no options"
            raise PinitError(f"scheme '{scheme}' does not take --{name}{ctx}; it takes {takes}")
    out: dict[str, Any] = {}
    for opt in spec.options:
        if opt.name in given:
            out[OPTION_ARG[opt.name]] = _convert(opt, given[opt.name], scheme, ctx)
        elif opt.required:
            raise PinitError(f"scheme '{scheme}' needs --{opt.name}{ctx}")
        else:
            out[OPTION_ARG[opt.name]] = opt.default
    _check_bounds(scheme, out, ctx)
    return out


def _convert(opt: Option, value: Any, scheme: str, ctx: str) -> Any:
    try:
        if opt.kind == "float":
            if isinstance(value, bool):
                raise ValueError
            v = float(value)
            if not math.isfinite(v):
                raise PinitError(f"--{opt.name} must be a finite number, not {value}{ctx}")
            if abs(v) > FLOAT32_MAX:
                raise PinitError(f"--{opt.name} must be within float32's range (±3.4e38), not {value}{ctx}")
            if opt.name == "sparsity" and not 0.0 <= v <= 1.0:
                raise PinitError(f"--sparsity must be between 0 and 1, not {value}{ctx}")
            if opt.name == "std" and v < 0:
                raise PinitError(f"--std must not be negative, not {value}{ctx}")
            return v
        if opt.kind == "int":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int):
                n = value
            else:
                f = float(value)
                if not f.is_integer():
                    raise ValueError
                n = int(f)
            if n < 1:
                raise PinitError(f"--{opt.name} must be at least 1, not {value}{ctx}")
            return n
        if opt.kind == "gain":
            g = parse_gain(value, ctx)
            if not math.isfinite(g):
                raise PinitError(f"--gain must be a finite number, not {value}{ctx}")
            if abs(g) > FLOAT32_MAX:
                raise PinitError(f"--gain must be within float32's range (±3.4e38), not {value}{ctx}")
            return g
        if opt.kind == "mode":
            if value not in ("fan_in", "fan_out"):
                raise PinitError(f"--mode must be fan_in or fan_out, not '{value}'{ctx}")
            return value
        if opt.kind == "nonlinearity":
            if value not in NONLINEARITIES:
                raise PinitError(f"--nonlinearity must be one of {', '.join(NONLINEARITIES)}, not '{value}'{ctx}")
            return value
    except (ValueError, TypeError, OverflowError):
        pass
    raise PinitError(f"invalid value {value!r} for --{opt.name} of scheme '{scheme}'{ctx}")


MIN_TRUNC_NORMAL_ACCEPTANCE = 0.01  # below it torch loops thousands of times over the whole tensor


def _erfcx(x: float) -> float:
    """erfc(x)·exp(x²) for x ≥ 0, without overflow (asymptotic series past 25)."""
    if x < 25:
        return math.erfc(x) * math.exp(x * x)
    return (1 - 1 / (2 * x * x) + 3 / (4 * x**4)) / (x * math.sqrt(math.pi))


def trunc_normal_acceptance(mean: float, std: float, a: float, b: float) -> float:
    """The share of draws torch's ``trunc_normal_`` keeps (torch 2.13's two samplers): a normal
    draw rejected outside [a, b] when [a, b] holds more than 30% of the mass, else a uniform draw
    on [a, b] accepted with the density relative to its peak in [a, b]. A tiny share means a loop
    that does not end in any useful time (std=1e-45, a=1e-45, b=2 never ends)."""
    za, zb = (a - mean) / std, (b - mean) / std
    if not (math.isfinite(za) and math.isfinite(zb)):
        return 0.0 if (b - a) / std == math.inf else 1.0
    half = math.sqrt(math.pi / 2)
    mass = 0.5 * (math.erf(zb / math.sqrt(2)) - math.erf(za / math.sqrt(2)))
    if mass > 0.3:
        return mass
    if b == a:
        return 1.0
    if za >= 0 or zb <= 0:  # the peak in [a, b] is at the end nearest the mean
        lo, hi = (za, zb) if za >= 0 else (-zb, -za)
        area = half * (_erfcx(lo / math.sqrt(2)) - _erfcx(hi / math.sqrt(2)) * math.exp((lo * lo - hi * hi) / 2))
    else:  # the mean lies inside: the peak is 1
        area = half * (math.erf(zb / math.sqrt(2)) - math.erf(za / math.sqrt(2)))
    return max(0.0, area) / (zb - za)


def _check_bounds(scheme: str, kw: dict[str, Any], ctx: str) -> None:
    """torch's own preconditions on the options together, checked before any file is opened, so
    that a bad value is a usage error naming it rather than an error from inside torch."""
    if scheme == "uniform":
        a, b = kw["a"], kw["b"]
        if a > b:
            raise PinitError(f"--a must not be greater than --b (uniform draws from [a, b)), got a={a:g}, b={b:g}{ctx}")
        if b - a > FLOAT32_MAX:
            raise PinitError(f"--b minus --a must be within float32's range (3.4e38), got a={a:g}, b={b:g}{ctx}")
    elif scheme == "trunc_normal":
        if kw["std"] <= 0:
            raise PinitError(f"--std of trunc_normal must be positive, not {kw['std']:g}{ctx}")
        if kw["a"] > kw["b"]:
            raise PinitError(
                f"--a must not be greater than --b (trunc_normal cuts to [a, b]), got a={kw['a']:g}, b={kw['b']:g}{ctx}"
            )
        rate = trunc_normal_acceptance(kw["mean"], kw["std"], kw["a"], kw["b"])
        if rate < MIN_TRUNC_NORMAL_ACCEPTANCE:
            raise PinitError(
                f"trunc_normal with mean={kw['mean']:g}, std={kw['std']:g}, a={kw['a']:g}, b={kw['b']:g}: torch's "
                f"sampler would keep about one draw in {1 / max(rate, 1e-300):.3g} and could run for hours; "
                f"bring [a, b] nearer the mean or widen --std{ctx}"
            )
    elif scheme in ("xavier_uniform", "xavier_normal"):
        g = kw["gain"]
        if g < 0:
            raise PinitError(f"--gain of {scheme} must not be negative, not {g:g}{ctx}")
        if scheme == "xavier_uniform" and g > FLOAT32_MAX / 4:  # its bounds ±gain·√3 must fit float32
            raise PinitError(f"--gain of xavier_uniform must be at most 8.5e37, not {g:g}{ctx}")


def schemes_json() -> list[dict[str, Any]]:
    """What ``pinit schemes --format json`` prints."""
    out = []
    for s in SCHEMES.values():
        doc: dict[str, Any] = {
            "name": s.name,
            "torch": s.torch_function if s.name != "default" else None,
            "options": [
                {"name": o.name, "required": o.required, "default": None if o.required else o.default}
                for o in s.options
            ],
            "shapes": s.shapes,
            "min_ndim": s.min_ndim,
            "max_ndim": s.max_ndim,
            "random": s.random,
            "description": s.summary,
        }
        if s.name == "default":
            doc["rules"] = [{"tensor": t, "init": i} for t, i in DEFAULT_RULES]
        out.append(doc)
    return out
