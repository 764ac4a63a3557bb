"""Torch zip output written at the storage level (issue #12 item 2): the input is copied and the
selected tensors' storage records are patched in place, CRC-32 fixed; the pickle and every other
member stay byte for byte as they were, ``torch.load`` is never called by the writer.

Expected values come from ``torch.nn.init`` with the documented per-tensor generator
(``test_reinit_io.expected``); outputs are read back with ``torch.load(weights_only=True)`` and
Python's ``zipfile``.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import pinit.formats.zip_patch as zip_patch
from conftest import assert_one_error_line, run_cli
from test_reinit_io import expected, no_temp_files, raw, warnings_of

SEED = "7"


def reinit_ok(src: Path, *args: Any) -> None:
    r = run_cli("reinit", src, *args)
    assert r.exit_code == 0, (r.exit_code, r.stdout, r.stderr)


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None  # every CRC-32 checks
        return {i.filename: z.read(i) for i in z.infolist()}


def member_order(path: Path) -> list[tuple[str, int, int]]:
    with zipfile.ZipFile(path) as z:
        return [(i.filename, i.header_offset, i.file_size) for i in z.infolist()]


def data_spans(path: Path) -> dict[str, tuple[int, int]]:
    """Each member's data span in the file (read independently of pinit: local header by hand)."""
    out = {}
    with path.open("rb") as f, zipfile.ZipFile(path) as z:
        for i in z.infolist():
            f.seek(i.header_offset)
            head = f.read(30)
            n, m = struct.unpack("<HH", head[26:30])
            start = i.header_offset + 30 + n + m
            out[i.filename] = (start, start + i.compress_size)
    return out


def changed_bytes_outside(before: bytes, after: bytes, spans: list[tuple[int, int]]) -> list[int]:
    """Offsets where ``after`` differs from ``before`` outside ``spans`` and outside CRC-32 fields."""
    assert len(before) == len(after)
    a = np.frombuffer(before, np.uint8)
    b = np.frombuffer(after, np.uint8)
    diff = np.nonzero(a != b)[0]
    inside = np.zeros(len(a), bool)
    for lo, hi in spans:
        inside[lo:hi] = True
    return [int(i) for i in diff if not inside[i]]


def state_dict() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(10, 4, generator=g)
    qkv = torch.randn(3, 4, 4, generator=g)
    return {
        "model": {
            "conv.weight": torch.randn(6, 3, 3, 3, generator=g),
            "conv.bias": torch.randn(6, generator=g),
            "proj.weight_t": torch.randn(5, 7, generator=g).t(),  # non-contiguous: a transpose
            "embed.weight": emb,
            "head.weight": emb,  # tied: the very same tensor
            "attn.qkv": qkv,
            "attn.q": qkv[0],  # tied: a view inside qkv's storage
            "step_counter": torch.tensor(3, dtype=torch.int64),
        },
        "epoch": 12,
        "name": "run-α",
        "nested": {"lr": 0.001, "betas": [0.9, 0.999], "tags": ("a", "b")},
    }


def test_in_place_patches_only_the_selected_records(tmp_path: Path) -> None:
    src = tmp_path / "model.pt"
    orig = state_dict()
    torch.save(orig, src)
    before = src.read_bytes()
    before_members = members(src)
    spans = data_spans(src)
    refused = run_cli("reinit", src, "--match", r"embed\.weight$", "--scheme", "normal", "--seed", SEED)
    assert refused.exit_code == 2 and "--with-tied" in refused.stderr and src.read_bytes() == before
    r = run_cli(
        "reinit", src, "--match", r"(conv\.weight|proj\.weight_t|embed\.weight|attn\.qkv)$",
        "--scheme", "normal", "--std", "0.5", "--seed", SEED, "--with-tied",
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert any("head.weight" in w for w in warnings_of(r)), r.stderr

    after_members = members(src)
    assert member_order(src) == [(n, o, s) for n, o, s in member_order_of(before)]
    changed = {n for n in before_members if before_members[n] != after_members[n]}
    # one storage record each for conv.weight, proj.weight_t, embed/head, qkv/q; nothing else
    assert len(changed) == 4 and all("/data/" in n for n in changed), changed
    prefix = next(iter(before_members)).split("/")[0]
    assert after_members[f"{prefix}/data.pkl"] == before_members[f"{prefix}/data.pkl"]
    after = src.read_bytes()
    outside = changed_bytes_outside(before, after, [spans[n] for n in changed])
    # only CRC fields change outside the records: 4 bytes in the local header (unless zero there),
    # the central entry and the data descriptor of each changed record
    assert len(outside) <= 4 * 3 * len(changed), outside

    new = torch.load(src, weights_only=True)
    m, om = new["model"], orig["model"]
    assert new["epoch"] == 12 and new["name"] == "run-α" and new["nested"] == orig["nested"]
    for name in ("conv.bias", "step_counter"):
        assert raw(m[name]) == raw(om[name]), name
    for name in ("conv.weight", "proj.weight_t"):
        assert torch.equal(m[name], expected(tuple(om[name].shape), "normal", int(SEED), f"model.{name}", std=0.5))
    assert m["proj.weight_t"].stride() == om["proj.weight_t"].stride()  # still the transposed view
    # tied: the same storage, the same values, drawn once under one of the names
    assert m["embed.weight"].untyped_storage().data_ptr() == m["head.weight"].untyped_storage().data_ptr()
    assert torch.equal(m["embed.weight"], m["head.weight"])
    assert any(
        torch.equal(m["embed.weight"], expected((10, 4), "normal", int(SEED), f"model.{n}", std=0.5))
        for n in ("embed.weight", "head.weight")
    )
    assert m["attn.q"].untyped_storage().data_ptr() == m["attn.qkv"].untyped_storage().data_ptr()
    assert torch.equal(m["attn.qkv"], expected((3, 4, 4), "normal", int(SEED), "model.attn.qkv", std=0.5))
    assert torch.equal(m["attn.q"], m["attn.qkv"][0])
    no_temp_files(tmp_path)


def member_order_of(data: bytes) -> list[tuple[str, int, int]]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(i.filename, i.header_offset, i.file_size) for i in z.infolist()]


def test_out_other_file_is_a_copy_plus_patches(tmp_path: Path) -> None:
    src = tmp_path / "model.pt"
    torch.save(state_dict(), src)
    before = src.read_bytes()
    out = tmp_path / "other.pt"
    reinit_ok(src, "--match", r"conv\.bias$", "--scheme", "uniform", "--seed", SEED, "--out", out)
    assert src.read_bytes() == before
    a, b = members(src), members(out)
    assert [n for n in a if a[n] != b[n]] and len([n for n in a if a[n] != b[n]]) == 1
    new = torch.load(out, weights_only=True)["model"]
    assert torch.equal(new["conv.bias"], expected((6,), "uniform", int(SEED), "model.conv.bias"))


def test_cuda_locations_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "gpu.pt"
    g = torch.Generator().manual_seed(1)
    sd = {"w": torch.randn(8, 8, generator=g), "b": torch.randn(8, generator=g)}
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(sd, src)
    pkl_name = next(n for n in members(src) if n.endswith("/data.pkl"))
    pkl = members(src)[pkl_name]
    assert b"cuda:0" in pkl and b"cpu" not in pkl
    for cmd in (["inspect", src, "--format", "json"], ["check", src, "--format", "json"]):
        r = run_cli(*cmd)
        assert r.exit_code == 0, r.stderr
        assert r.json()
    reinit_ok(src, "--match", "^w$", "--scheme", "xavier_uniform", "--seed", SEED)
    assert members(src)[pkl_name] == pkl  # still cuda:0, byte for byte
    new = torch.load(src, map_location="cpu", weights_only=True)
    assert torch.equal(new["w"], expected((8, 8), "xavier_uniform", int(SEED), "w"))
    assert raw(new["b"]) == raw(sd["b"])


def legacy_state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {
        "big": torch.randn(512, 640, generator=g),  # 1.25 MiB
        "small.a": torch.randn(3, 5, generator=g),
        "small.b": torch.arange(10, dtype=torch.int32),
        "view_t": torch.randn(6, 4, generator=g).t(),
    }


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_legacy_pickle_is_converted(tmp_path: Path, suffix: str) -> None:
    src = tmp_path / "legacy.pt"
    sd = legacy_state_dict()
    torch.save(sd, src, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(src)
    before = src.read_bytes()
    out = tmp_path / f"out{suffix}"
    reinit_ok(src, "--match", r"^small\.a$", "--scheme", "normal", "--seed", SEED, "--out", out)
    assert src.read_bytes() == before
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        new = load_file(out)
    else:
        assert zipfile.is_zipfile(out)
        new = torch.load(out, weights_only=True)
    assert torch.equal(new["small.a"], expected((3, 5), "normal", int(SEED), "small.a"))
    for name in ("big", "small.b", "view_t"):
        assert raw(new[name]) == raw(sd[name]), name


def test_mode_is_kept(tmp_path: Path) -> None:
    src = tmp_path / "model.pt"
    torch.save(state_dict(), src)
    os.chmod(src, 0o640)
    reinit_ok(src, "--match", r"conv\.bias$", "--scheme", "zeros")
    assert stat.S_IMODE(os.stat(src).st_mode) == 0o640
    assert torch.equal(torch.load(src, weights_only=True)["model"]["conv.bias"], torch.zeros(6))
    no_temp_files(tmp_path)


@pytest.mark.parametrize("where", ["write", "fix_crc"])
def test_failure_mid_write_leaves_the_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    src = tmp_path / "model.pt"
    torch.save(state_dict(), src)
    before = src.read_bytes()
    real = getattr(zip_patch.ZipPatcher, where)
    calls = []

    def failing(self: Any, *args: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:  # after one record was written
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args)

    monkeypatch.setattr(zip_patch.ZipPatcher, where, failing)
    r = run_cli("reinit", src, "--match", r"conv\.(weight|bias)$", "--scheme", "normal", "--seed", SEED)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert_one_error_line(r)
    assert "No space left" in r.stderr
    assert len(calls) == 2
    assert src.read_bytes() == before
    no_temp_files(tmp_path)


def deflate_records(src: Path, dst: Path, which: Any) -> None:
    """Rewrite ``src`` with Python's zipfile, DEFLATE for the data/ records ``which(name)`` picks."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            new = zipfile.ZipInfo(info.filename, info.date_time)
            new.compress_type = zipfile.ZIP_DEFLATED if which(info.filename) else zipfile.ZIP_STORED
            zout.writestr(new, zin.read(info))


def test_compressed_record_is_refused_and_stored_ones_still_patch(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    sd = {"a": torch.randn(4, 4), "b": torch.randn(4)}
    torch.save(sd, plain)
    src = tmp_path / "deflated.pt"
    # records in pickle order: 'a' is data/0, 'b' is data/1 (torch.save numbers storages as met)
    deflate_records(plain, src, lambda n: n.endswith("/data/0"))
    with zipfile.ZipFile(src) as z:
        kinds = {i.filename.split("/", 1)[1]: i.compress_type for i in z.infolist()}
    assert kinds["data/0"] == zipfile.ZIP_DEFLATED and kinds["data/1"] == zipfile.ZIP_STORED
    assert torch.equal(torch.load(src, weights_only=True)["a"], sd["a"])
    before = src.read_bytes()
    r = run_cli("reinit", src, "--match", "^a$", "--scheme", "normal", "--seed", SEED)
    assert r.exit_code == 2
    assert_one_error_line(r)
    assert "compressed" in r.stderr and "'a'" in r.stderr
    assert src.read_bytes() == before
    no_temp_files(tmp_path)
    # a stored record of the same archive is patched; the compressed one is left as it was
    before_members = members(src)
    reinit_ok(src, "--match", "^b$", "--scheme", "ones")
    after_members = members(src)
    assert [n for n in before_members if before_members[n] != after_members[n]] == [
        next(n for n in before_members if n.endswith("/data/1"))
    ]
    new = torch.load(src, weights_only=True)
    assert torch.equal(new["a"], sd["a"]) and torch.equal(new["b"], torch.ones(4))


def test_patch_record_in_an_embedded_archive(tmp_path: Path) -> None:
    """An archive at offset ``base`` inside a larger file (as a .distcp chunk): patched in place,
    CRC fields fixed, the bytes around it untouched."""
    inner = tmp_path / "inner.pt"
    torch.save({"x": torch.zeros(16)}, inner)
    archive = inner.read_bytes()
    head, tail = b"H" * 1000, b"T" * 777
    big = tmp_path / "big.bin"
    big.write_bytes(head + archive + tail)
    with zipfile.ZipFile(inner) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
        others = {i.filename: z.read(i) for i in z.infolist() if i is not info}
    fd = os.open(big, os.O_RDWR)
    try:
        start, length = zip_patch.record_span(fd, info, base=len(head), end=len(head) + len(archive))
        assert length == 64 and start == len(head) + data_spans(inner)[info.filename][0]
        new = np.arange(16, dtype=np.float32).tobytes()
        crc = zip_patch.patch_record(fd, info, [(8, new[8:])], base=len(head), end=len(head) + len(archive))
    finally:
        os.close(fd)
    data = big.read_bytes()
    assert data[: len(head)] == head and data[-len(tail) :] == tail
    patched = data[len(head) : -len(tail)]
    with zipfile.ZipFile(io.BytesIO(patched)) as z:
        assert z.testzip() is None
        got = z.read(info.filename)
        assert {i.filename: z.read(i) for i in z.infolist() if i.filename != info.filename} == others
    assert got == bytes(8) + new[8:] and crc == zlib.crc32(got)
    x = torch.load(io.BytesIO(patched), weights_only=True)["x"]
    assert torch.equal(x, torch.tensor([0.0, 0.0, *range(2, 16)]))


def test_patch_refuses_compressed_and_out_of_bounds(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save({"a": torch.zeros(4)}, plain)
    src = tmp_path / "d.pt"
    deflate_records(plain, src, lambda n: "/data/" in n)
    with zipfile.ZipFile(src) as z:
        deflated = next(i for i in z.infolist() if "/data/" in i.filename)
    with zipfile.ZipFile(plain) as z:
        stored = next(i for i in z.infolist() if "/data/" in i.filename)
    before, plain_before = src.read_bytes(), plain.read_bytes()
    from pinit.errors import PinitError

    for path, info, writes, err in (
        (src, deflated, [(0, b"\0")], PinitError),
        (plain, stored, [(15, b"\0\0")], ValueError),
    ):
        fd = os.open(path, os.O_RDWR)
        try:
            with pytest.raises(err):
                zip_patch.patch_record(fd, info, writes)
        finally:
            os.close(fd)
    assert src.read_bytes() == before and plain.read_bytes() == plain_before


@pytest.mark.parametrize("mode", ["in_place", "out", "backup"])
def test_failure_in_the_copy_leaves_the_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """ENOSPC half-way through the kernel copy of the input (the first step of the write)."""
    import pinit.writers

    src = tmp_path / "model.pt"
    torch.save(state_dict(), src)
    before = sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir())
    real = pinit.writers.copy_span
    calls = []

    def failing(src_fd: int, offset: int, length: int, dst_fd: int, dst_offset: int) -> None:
        calls.append(length)
        real(src_fd, offset, length // 2, dst_fd, dst_offset)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pinit.writers, "copy_span", failing)
    extra = {"in_place": [], "out": ["--out", tmp_path / "new.pt"], "backup": ["--backup"]}[mode]
    r = run_cli("reinit", src, "--match", r"conv\.bias$", "--scheme", "zeros", *extra)
    assert calls and r.exit_code == 2
    assert_one_error_line(r)
    assert "No space left" in r.stderr and ("new.pt" if mode == "out" else "model.pt") in r.stderr
    assert sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir()) == before


def test_progress_adds_up_to_its_total(tmp_path: Path) -> None:
    import contextlib

    import pinit

    src = tmp_path / "model.pt"
    torch.save(state_dict(), src)
    log: list[tuple[str, int]] = []

    def factory(total: int) -> Any:
        @contextlib.contextmanager
        def cm() -> Any:
            log.append(("total", total))
            yield lambda n: log.append(("advance", n))

        return cm()

    pinit.reinit(src, match=[r"conv\.weight$"], scheme="normal", seed=0, progress=factory)
    totals = [n for k, n in log if k == "total"]
    assert len(totals) == 1 and sum(n for k, n in log if k == "advance") == totals[0]
    assert all(n > 0 for k, n in log if k == "advance")


@pytest.mark.parametrize("big_sizes", [False, True])
def test_zip64_local_offset_of_a_central_entry(big_sizes: bool) -> None:
    """A central entry whose local header offset is in its zip64 extra field (archives over 4 GiB),
    after the sizes where those are 0xFFFFFFFF too (the field order of APPNOTE 4.5.3)."""
    size = 0xFFFFFFFF if big_sizes else 100
    entry = bytearray(46)
    struct.pack_into("<II", entry, 20, size, size)
    struct.pack_into("<I", entry, 42, 0xFFFFFFFF)
    fields = struct.pack("<QQ", 5 << 32, 5 << 32) if big_sizes else b""
    extra = struct.pack("<HH", 0x7075, 3) + b"abc" + struct.pack("<HH", 1, len(fields) + 8) + fields
    extra += struct.pack("<Q", (9 << 32) + 17)
    assert zip_patch._local_offset(bytes(entry), extra) == (9 << 32) + 17


def test_unsafe_pickle_rewrite_warns_that_locations_are_not_kept(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save({"w": torch.ones(2, 2)}, path)
    r = run_cli("reinit", path, "--match", "w", "--scheme", "zeros", "--unsafe-pickle")
    assert r.exit_code == 0, r.stderr
    assert "storage locations such as cuda:0 become cpu" in r.stderr, r.stderr
