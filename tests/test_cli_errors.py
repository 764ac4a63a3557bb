"""Bad input and bad usage (SPEC section 7): exit 2, one ``error:`` line, no traceback, nothing written.

Corrupt safetensors files are built by hand (8-byte little-endian header length, JSON header,
data) so that each one breaks exactly one rule.
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from conftest import assert_one_error_line, run_cli
from pinit.checkpoint import open_checkpoint
from pinit.errors import PinitError


def st_file(path: Path, header: Any, data: bytes, *, raw_header: bytes | None = None) -> Path:
    """A safetensors-shaped file: header length, header (JSON of ``header`` or raw bytes), data."""
    head = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)
    return path


def good_st(path: Path) -> Path:
    save_file({"a": torch.arange(64, dtype=torch.float32), "b": torch.ones(4, 4)}, str(path))
    return path


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for root, _dirs, files in os.walk(folder):
        for f in files:
            st = os.stat(os.path.join(root, f))
            out[os.path.relpath(os.path.join(root, f), folder)] = (st.st_size, st.st_mtime_ns)
    return out


def assert_refused(path: Path, folder: Path, *extra: str, mention: str | None = None, names: Path | None = None) -> str:
    """``inspect`` (table, json, --no-stats) all give one error line naming the file; no file changes."""
    before = snapshot(folder)
    stderr = ""
    for args in ((), ("--format", "json"), ("--no-stats",)):
        r = run_cli("inspect", path, *args, *extra)
        assert_one_error_line(r)
        assert r.stdout == "", r.stdout
        assert str(names or path) in r.stderr, r.stderr
        if mention is not None:
            assert mention in r.stderr, r.stderr
        stderr = r.stderr
    with pytest.raises(PinitError), open_checkpoint(path) as ckpt:
        for e in ckpt.tensors:  # a reader that defers errors to data reads still fails
            e.read_bytes()
    assert snapshot(folder) == before
    return stderr


# ---------------------------------------------------------------------------- safetensors


def test_truncated_in_data(tmp_path: Path) -> None:
    path = good_st(tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    assert_refused(path, tmp_path, mention="truncated")


def test_truncated_in_header(tmp_path: Path) -> None:
    path = good_st(tmp_path / "m.safetensors")
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    path.write_bytes(data[: 8 + n // 2])
    assert_refused(path, tmp_path)


def test_header_length_larger_than_file(tmp_path: Path) -> None:
    path = good_st(tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    data[:8] = struct.pack("<Q", len(data) + 1000)
    path.write_bytes(bytes(data))
    assert_refused(path, tmp_path)


def test_huge_header_length(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", 2**63) + b'{"a": 1}')
    assert_refused(path, tmp_path)


def test_garbled_header_json(tmp_path: Path) -> None:
    path = st_file(tmp_path / "m.safetensors", None, b"\0" * 8, raw_header=b'{"a": {"dtype": "F32", "sha')
    assert_refused(path, tmp_path)


def test_header_not_utf8(tmp_path: Path) -> None:
    path = st_file(tmp_path / "m.safetensors", None, b"", raw_header=b'{"\xff\xfe": 1}')
    assert_refused(path, tmp_path)


@pytest.mark.parametrize("header", [[1, 2], "text", 3, None])
def test_header_not_an_object(tmp_path: Path, header: Any) -> None:
    path = st_file(tmp_path / "m.safetensors", header, b"")
    assert_refused(path, tmp_path)


def test_duplicate_json_keys(tmp_path: Path) -> None:
    entry = '{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    raw = f'{{"w": {entry}, "w": {entry}}}'.encode()
    path = st_file(tmp_path / "m.safetensors", None, b"\0" * 4, raw_header=raw)
    assert_refused(path, tmp_path, mention="twice")


def test_unknown_dtype(tmp_path: Path) -> None:
    header = {"w": {"dtype": "F7", "shape": [2], "data_offsets": [0, 8]}}
    path = st_file(tmp_path / "m.safetensors", header, b"\0" * 8)
    assert_refused(path, tmp_path, mention="F7")


@pytest.mark.parametrize(
    "entry",
    [
        {"dtype": "F32", "shape": [2]},  # no data_offsets
        {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]},
        {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]},
        {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]},
        {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]},
        {"dtype": "F32", "shape": [2], "data_offsets": [0.0, 8.0]},
        [1, 2],
    ],
)
def test_malformed_entry(tmp_path: Path, entry: Any) -> None:
    path = st_file(tmp_path / "m.safetensors", {"w": entry}, b"\0" * 8)
    assert_refused(path, tmp_path)


def test_overlapping_offsets(tmp_path: Path) -> None:
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    path = st_file(tmp_path / "m.safetensors", header, b"\0" * 12)
    assert_refused(path, tmp_path, mention="'b'")


def test_gap_between_tensors(tmp_path: Path) -> None:
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]},
    }
    path = st_file(tmp_path / "m.safetensors", header, b"\0" * 20)
    assert_refused(path, tmp_path)


def test_offsets_past_the_end(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    path = st_file(tmp_path / "m.safetensors", header, b"\0" * 8)
    assert_refused(path, tmp_path)


def test_span_disagrees_with_dtype_and_shape(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}
    path = st_file(tmp_path / "m.safetensors", header, b"\0" * 8)
    assert_refused(path, tmp_path, mention="'a'")


def test_bad_metadata(tmp_path: Path) -> None:
    header = {"__metadata__": {"k": 1}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    path = st_file(tmp_path / "m.safetensors", header, b"\0" * 4)
    assert_refused(path, tmp_path)


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4096)))
    path = tmp_path / "random.pt"
    path.write_bytes(data)
    assert_refused(path, tmp_path)


@pytest.mark.parametrize("prefix", [b"PK\x03\x04", b"\x80\x02", b"\x10\0\0\0\0\0\0\0{"])
def test_random_bytes_after_a_magic(tmp_path: Path, prefix: bytes) -> None:
    rng = random.Random(len(prefix))
    path = tmp_path / "random.bin"
    path.write_bytes(prefix + bytes(rng.randrange(256) for _ in range(512)))
    assert_refused(path, tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    assert_refused(path, tmp_path)


# ---------------------------------------------------------------------------- torch zip


def test_zip_that_is_not_a_torch_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("hello.txt", "hi")
    assert_refused(path, tmp_path)


def rewrite_member(path: Path, suffix: str, new: Callable[[bytes], bytes]) -> None:
    """Rewrite the zip at ``path`` with the member ending in ``suffix`` replaced."""
    buf = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, new(data) if info.filename.endswith(suffix) else data)
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize(
    "garbage",
    [
        b"this is not a pickle",
        b"\x80\x02}q\x00(X\x01\x00\x00\x00a",  # a pickle cut short
        b"",
    ],
)
def test_torch_zip_with_garbage_data_pkl(tmp_path: Path, garbage: bytes) -> None:
    path = tmp_path / "m.pt"
    torch.save({"w": torch.ones(3)}, path)
    rewrite_member(path, "/data.pkl", lambda _old: garbage)
    assert_refused(path, tmp_path)


def test_torch_zip_with_missing_storage(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save({"w": torch.ones(3)}, path)
    buf = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            if "/data/" not in info.filename:
                dst.writestr(info, src.read(info))
    path.write_bytes(buf.getvalue())
    assert_refused(path, tmp_path)


def test_torch_zip_with_short_storage(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save({"w": torch.ones(100)}, path)
    rewrite_member(path, "/data/0", lambda old: old[:10])
    assert_refused(path, tmp_path)


def test_truncated_torch_zip(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save({"w": torch.ones(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_refused(path, tmp_path)


def test_truncated_legacy_pickle(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save({"w": torch.ones(1000)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_refused(path, tmp_path)


# ---------------------------------------------------------------------------- sharded


def sharded(folder: Path, weight_map: Any = None, *, raw: str | None = None) -> Path:
    folder.mkdir(exist_ok=True)
    save_file({"a": torch.ones(2)}, str(folder / "s1.safetensors"))
    save_file({"b": torch.zeros(2)}, str(folder / "s2.safetensors"))
    if weight_map is None:
        weight_map = {"a": "s1.safetensors", "b": "s2.safetensors"}
    index = folder / "model.safetensors.index.json"
    index.write_text(raw if raw is not None else json.dumps({"weight_map": weight_map}))
    return index


def test_index_names_a_missing_shard(tmp_path: Path) -> None:
    index = sharded(tmp_path / "m", {"a": "s1.safetensors", "b": "s3.safetensors"})
    assert_refused(index, tmp_path, mention="s3.safetensors")
    r = run_cli("inspect", tmp_path / "m")
    assert_one_error_line(r)


@pytest.mark.parametrize("raw", ["{not json", "", '{"weight_map": [1, 2]}', "[]", '{"weight_map": {"a": 1}}'])
def test_index_that_is_not_valid(tmp_path: Path, raw: str) -> None:
    index = sharded(tmp_path / "m", raw=raw)
    assert_refused(index, tmp_path)
    assert_one_error_line(run_cli("inspect", tmp_path / "m"))


@pytest.mark.parametrize("name", ["../outside.safetensors", "/abs/s1.safetensors", "sub/../../s1.safetensors"])
def test_shard_name_leaving_the_folder(tmp_path: Path, name: str) -> None:
    save_file({"b": torch.zeros(2)}, str(tmp_path / "outside.safetensors"))
    if name.startswith("/"):
        name = str(tmp_path / "m" / "s2.safetensors")  # an absolute path, even to a real shard
    index = sharded(tmp_path / "m", {"a": "s1.safetensors", "b": name})
    assert_refused(index, tmp_path)


def test_shard_symlink_leaving_the_folder(tmp_path: Path) -> None:
    save_file({"b": torch.zeros(2)}, str(tmp_path / "outside.safetensors"))
    index = sharded(tmp_path / "m", {"a": "s1.safetensors", "b": "link.safetensors"})
    (tmp_path / "m" / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    assert_refused(index, tmp_path)


def test_tensor_in_two_shards(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    index = sharded(folder)
    save_file({"a": torch.ones(2), "b": torch.zeros(2)}, str(folder / "s2.safetensors"))
    assert_refused(index, tmp_path, mention="'a'")


def test_index_disagrees_with_shards(tmp_path: Path) -> None:
    index = sharded(tmp_path / "m", {"a": "s2.safetensors", "b": "s1.safetensors"})
    assert_refused(index, tmp_path)


def test_index_names_a_tensor_no_shard_holds(tmp_path: Path) -> None:
    index = sharded(tmp_path / "m", {"a": "s1.safetensors", "b": "s2.safetensors", "c": "s2.safetensors"})
    assert_refused(index, tmp_path, mention="'c'")


def test_corrupt_shard(tmp_path: Path) -> None:
    index = sharded(tmp_path / "m")
    (tmp_path / "m" / "s2.safetensors").write_bytes(b"\0" * 7)
    assert_refused(index, tmp_path, names=tmp_path / "m" / "s2.safetensors")


# ---------------------------------------------------------------------------- usage


def test_nonexistent_path(tmp_path: Path) -> None:
    r = run_cli("inspect", tmp_path / "nope.safetensors")
    assert_one_error_line(r)
    assert "nope.safetensors" in r.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "args",
    [
        ("--match", "("),
        ("--exclude", "[a-"),
        ("--bogus",),
        ("--sort", "bogus"),
        ("--format", "yaml"),
        ("--values", "-1"),
        ("--max-abs", "abc"),
        ("--flagged", "--no-stats"),
    ],
)
def test_bad_usage(tmp_path: Path, args: tuple[str, ...]) -> None:
    path = good_st(tmp_path / "m.safetensors")
    before = snapshot(tmp_path)
    r = run_cli("inspect", path, *args)
    assert_one_error_line(r)
    assert r.stdout == ""
    assert snapshot(tmp_path) == before


def test_bad_regex_names_the_option(tmp_path: Path) -> None:
    path = good_st(tmp_path / "m.safetensors")
    r = run_cli("inspect", path, "--match", "(")
    assert "--match" in r.stderr


def test_unknown_command() -> None:
    assert_one_error_line(run_cli("inspectt", "x"))


def test_missing_argument() -> None:
    assert_one_error_line(run_cli("inspect"))


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_a_traceback(tmp_path: Path, where: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\0" * 3)
    args = ("--debug", "inspect", path) if where == "before" else ("inspect", path, "--debug")
    r = run_cli(*args)
    assert r.exit_code == 2
    assert "Traceback" in r.stderr
    assert r.stderr.rstrip().splitlines()[-1].startswith("error:")


def test_debug_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\0" * 3)
    monkeypatch.setenv("PINIT_DEBUG", "1")
    r = run_cli("inspect", path)
    assert r.exit_code == 2
    assert "Traceback" in r.stderr
