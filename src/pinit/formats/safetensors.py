"""The safetensors format, read and validated without torch.

Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON, then
the data buffer.  The header maps each tensor name to its dtype, shape and
``[begin, end)`` byte span inside the data buffer; ``__metadata__`` holds
string pairs.  Validation follows the reference implementation: spans must
tile the data buffer exactly, in order, with no gap or overlap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pinit import dtypes
from pinit.errors import PinitError
from pinit.files import FileRef, file_storage, pread
from pinit.storage import TensorEntry

MAX_HEADER_BYTES = 100_000_000  # the reference implementation's limit
MAX_INT64 = (1 << 63) - 1  # torch sizes and numels are int64


@dataclass
class HeaderTensor:
    name: str
    dtype: str  # torch name
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass
class Header:
    tensors: list[HeaderTensor]  # in data-offset order
    metadata: dict[str, str] | None
    data_start: int  # file offset of the data buffer


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise PinitError(f"safetensors header has the key '{key}' twice")
        if not _is_text(key):
            raise PinitError(f"safetensors header key {key!r:.100} holds a lone surrogate (\\uD800-\\uDFFF escape)")
        out[key] = value
    return out


def _is_text(s: str) -> bool:
    """False for strings JSON escapes gave lone surrogates: not Unicode text, not UTF-8 writable."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_header(fd: FileRef, file_size: int) -> Header:
    """Parse and validate the header of the safetensors file open as ``fd``."""
    if file_size < 8:
        raise PinitError("too short for a safetensors file")
    n = int.from_bytes(pread(fd, 8, 0), "little")
    if n > MAX_HEADER_BYTES:
        raise PinitError(f"safetensors header length {n} is over the {MAX_HEADER_BYTES}-byte limit")
    if 8 + n > file_size:
        raise PinitError(f"safetensors header length {n} runs past the end of the file ({file_size} bytes)")
    raw = pread(fd, n, 8)
    if len(raw) != n:
        raise PinitError("file ended inside the safetensors header")
    try:
        text = raw.decode("utf-8")
        doc = json.loads(text, object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError:
        raise PinitError("safetensors header is not valid UTF-8") from None
    except RecursionError:
        raise PinitError("safetensors header JSON is nested too deeply") from None
    except json.JSONDecodeError as e:
        raise PinitError(f"safetensors header is not valid JSON ({e.msg} at byte {e.pos})") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits (int_max_str_digits)
        raise PinitError(f"safetensors header is not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise PinitError("safetensors header is not a JSON object")
    data_start = 8 + n
    data_len = file_size - data_start
    metadata = doc.pop("__metadata__", None)
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise PinitError("safetensors __metadata__ must map strings to strings")
        if not all(_is_text(v) for v in metadata.values()):
            raise PinitError("safetensors __metadata__ holds a lone surrogate (\\uD800-\\uDFFF escape)")
    tensors = [_parse_entry(name, info) for name, info in doc.items()]
    tensors.sort(key=lambda t: (t.begin, t.end))
    pos = 0
    for t in tensors:
        if t.begin != pos:
            what = "overlaps the previous tensor" if t.begin < pos else "leaves a gap before it"
            raise PinitError(f"safetensors tensor '{t.name}' {what} (offset {t.begin}, expected {pos})")
        pos = t.end
    if pos != data_len:
        raise PinitError(
            f"safetensors data buffer is {data_len} bytes but the header describes {pos}"
            + (" (truncated file?)" if pos > data_len else "")
        )
    return Header(tensors, metadata, data_start)


def _parse_entry(name: str, info: Any) -> HeaderTensor:
    if not isinstance(info, dict):
        raise PinitError(f"safetensors entry '{name}' is not a JSON object")
    code = info.get("dtype")
    shape = info.get("shape")
    offsets = info.get("data_offsets")
    if not isinstance(code, str) or code not in dtypes.BY_ST_CODE:
        raise PinitError(f"safetensors tensor '{name}' has unknown dtype {code!r:.100}")
    if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
        raise PinitError(f"safetensors tensor '{name}' has an invalid shape {shape!r:.200}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise PinitError(f"safetensors tensor '{name}' has invalid data_offsets {offsets!r:.200}")
    dt = dtypes.BY_ST_CODE[code]
    numel = 1
    for s in shape:  # a running product, as the reference implementation checks it (and torch needs int64)
        numel *= s
        if s > MAX_INT64 or numel > MAX_INT64:
            raise PinitError(f"safetensors tensor '{name}' has a shape too large for int64 {shape!r:.200}")
    want = numel * dt.itemsize
    if offsets[1] - offsets[0] != want:
        raise PinitError(
            f"safetensors tensor '{name}' spans {offsets[1] - offsets[0]} bytes but {code}{shape} needs {want}"
        )
    return HeaderTensor(name, dt.name, tuple(shape), offsets[0], offsets[1])


def entries(header: Header, fd: FileRef, path: str) -> list[TensorEntry]:
    """One entry per tensor, reading from the open file ``fd``."""
    out = []
    for i, t in enumerate(header.tensors):
        storage = file_storage(fd, header.data_start + t.begin, t.end - t.begin, key=(path, t.name), path=path)
        out.append(TensorEntry(name=t.name, dtype=t.dtype, shape=t.shape, storage=storage, index=i))
    return out


def looks_like_safetensors(head: bytes, file_size: int) -> bool:
    """True when the first bytes read as a safetensors header start."""
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    # a length past the end is still safetensors (a cut download): read_header says what is wrong
    return n > 0 and head[8:9] == b"{"
