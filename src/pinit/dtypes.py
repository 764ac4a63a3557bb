"""Element types known to pinit, without importing torch.

Names are torch's dtype names without the ``torch.`` prefix.  Each entry knows
its size in bytes, its kind, its safetensors code, and (for floating types) the
smallest normal magnitude, ``torch.finfo(dtype).tiny``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported only when tensor data is read
    import numpy as np


@dataclass(frozen=True)
class DType:
    name: str
    itemsize: int
    kind: str  # "float", "int", "bool", "complex"
    st_code: str | None  # safetensors dtype code
    tiny: float = 0.0  # smallest positive normal, floating types only
    # whether subnormal values are rare in healthy data of this dtype (float32, float64, bfloat16:
    # they get the subnormal and uninitialized rules); fp16/fp8 hold them in ordinary weights
    subnormal_is_rare: bool = False

    @property
    def is_float(self) -> bool:
        return self.kind == "float"


_DTYPES = [
    DType("float64", 8, "float", "F64", 2.2250738585072014e-308, True),
    DType("float32", 4, "float", "F32", 1.1754943508222875e-38, True),
    DType("bfloat16", 2, "float", "BF16", 1.1754943508222875e-38, True),
    DType("float16", 2, "float", "F16", 6.103515625e-05, False),
    DType("float8_e4m3fn", 1, "float", "F8_E4M3", 0.015625, False),
    DType("float8_e5m2", 1, "float", "F8_E5M2", 6.103515625e-05, False),
    DType("float8_e4m3fnuz", 1, "float", None, 0.0078125, False),
    DType("float8_e5m2fnuz", 1, "float", None, 3.0517578125e-05, False),
    DType("int64", 8, "int", "I64"),
    DType("int32", 4, "int", "I32"),
    DType("int16", 2, "int", "I16"),
    DType("int8", 1, "int", "I8"),
    DType("uint64", 8, "int", "U64"),
    DType("uint32", 4, "int", "U32"),
    DType("uint16", 2, "int", "U16"),
    DType("uint8", 1, "int", "U8"),
    DType("bool", 1, "bool", "BOOL"),
    DType("complex64", 8, "complex", "C64"),
    DType("complex128", 16, "complex", None),
]

BY_NAME: dict[str, DType] = {d.name: d for d in _DTYPES}
BY_ST_CODE: dict[str, DType] = {d.st_code: d for d in _DTYPES if d.st_code}

# torch's legacy typed-storage class names (``torch.FloatStorage``) to dtypes.
STORAGE_CLASS_DTYPE: dict[str, str] = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}


def get(name: str) -> DType:
    """The dtype called ``name`` (torch spelling, ``torch.`` prefix allowed)."""
    key = name.removeprefix("torch.")
    try:
        return BY_NAME[key]
    except KeyError:
        raise KeyError(f"unsupported dtype '{name}'") from None


# torch name -> numpy type code (little-endian), where numpy has the type
_NUMPY_NATIVE = {
    "float64": "f8",
    "float32": "f4",
    "float16": "f2",
    "int64": "i8",
    "int32": "i4",
    "int16": "i2",
    "int8": "i1",
    "uint64": "u8",
    "uint32": "u4",
    "uint16": "u2",
    "uint8": "u1",
    "bool": "b1",
    "complex64": "c8",
    "complex128": "c16",
}


def numpy_dtype(name: str) -> np.dtype | None:
    """The numpy dtype with the same bytes, or None (bfloat16, fp8) where numpy has none."""
    import numpy as np

    t = _NUMPY_NATIVE.get(name)
    return None if t is None else np.dtype(t).newbyteorder("<")


def _fp8_value(bits: int, exp_bits: int, man_bits: int, bias: int, variant: str) -> float:
    sign = -1.0 if bits >> 7 else 1.0
    exp = (bits >> man_bits) & ((1 << exp_bits) - 1)
    man = bits & ((1 << man_bits) - 1)
    if variant == "fnuz":
        if bits == 0x80:
            return float("nan")
    elif variant == "fn":
        if exp == (1 << exp_bits) - 1 and man == (1 << man_bits) - 1:
            return float("nan")
    elif exp == (1 << exp_bits) - 1:  # IEEE-like (e5m2)
        return sign * float("inf") if man == 0 else float("nan")
    if exp == 0:
        return sign * (man / (1 << man_bits)) * 2.0 ** (1 - bias)
    return sign * (1 + man / (1 << man_bits)) * 2.0 ** (exp - bias)


_FP8_FORMATS = {
    "float8_e4m3fn": (4, 3, 7, "fn"),
    "float8_e5m2": (5, 2, 15, "ieee"),
    "float8_e4m3fnuz": (4, 3, 8, "fnuz"),
    "float8_e5m2fnuz": (5, 2, 16, "fnuz"),
}


@cache
def fp8_table(name: str) -> np.ndarray:
    """float32 value of each of the 256 bit patterns of an fp8 format."""
    import numpy as np

    fmt = _FP8_FORMATS[name]
    return np.array([_fp8_value(b, *fmt) for b in range(256)], dtype=np.float32)


def decode_float(raw: np.ndarray, name: str, out: np.ndarray | None = None) -> np.ndarray:
    """Decode little-endian raw bytes (uint8) of a floating dtype to float32/float64.

    float64 stays float64; everything narrower becomes float32, written into
    ``out`` when given (a reused buffer of at least the right length).
    """
    import numpy as np

    if name == "float64":
        return raw.view("<f8")
    if name == "float32":
        return raw.view("<f4")
    n = raw.size // BY_NAME[name].itemsize
    dest = np.empty(n, dtype=np.float32) if out is None else out[:n]
    if name == "float16":
        np.copyto(dest, raw.view("<f2"), casting="unsafe")
    elif name == "bfloat16":
        wide = dest.view(np.uint32)
        np.copyto(wide, raw.view("<u2"), casting="unsafe")
        np.left_shift(wide, 16, out=wide)
    else:
        np.take(fp8_table(name), raw, out=dest)
    return dest


def human_bytes(n: int) -> str:
    """``532 B``, ``15.9 KB``, ``2.1 GB`` (powers of 1000), for people reading a summary."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"
