"""Read what torch reads (SPEC section 1): pinit reads exactly the zip members ``torch.load`` reads,
or refuses the archive.

torch opens a zip with its own reader (``PyTorchStreamReader`` on miniz), not Python's ``zipfile``:
it looks names up ignoring ASCII case, takes the record prefix from the first entry, reads the
central directory where the end record says (no shift for prepended bytes) and ignores CRCs.  An
archive the two readers could read differently is refused as hostile (``zip_layout``).

Fixed cases run through the real CLI (``check`` and ``inspect``); the property test rewrites a real
``torch.save`` file with Python's ``zipfile`` (renamed, case-changed, duplicated, reordered,
re-prefixed, extra, dropped and swapped members, DEFLATE, prepended bytes, comments) and requires
that pinit either refuses it, or reads the very tensors ``torch.load(weights_only=True)`` returns.
"""

from __future__ import annotations

import io
import struct
import tracemalloc
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import assert_one_error_line, run_cli
from pinit.checkpoint import open_checkpoint
from pinit.errors import PinitError

Entry = tuple[str, bytes, int]  # name, data, compression


def _members(obj: Any) -> list[Entry]:
    buf = io.BytesIO()
    torch.save(obj, buf)  # saved to a buffer: the record prefix is "archive"
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        return [(i.filename, z.read(i), zipfile.ZIP_STORED) for i in z.infolist()]


BASE_SD = {
    "w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
    "b": torch.arange(4, dtype=torch.int64),
    "h": torch.ones(3, dtype=torch.float16),
}
EVIL_SD = {  # the same names, shapes and dtypes, other values: a tree torch could be made to read instead
    "w": torch.full((2, 3), 7.0),
    "b": torch.full((4,), -5, dtype=torch.int64),
    "h": torch.full((3,), 2.0, dtype=torch.float16),
}
BASE = _members(BASE_SD)
EVIL = dict((n, d) for n, d, _ in _members(EVIL_SD))


def build(
    path: Path, entries: list[Entry], *, comment: bytes = b"", prepend: bytes = b"", shifted: bool = False
) -> Path:
    """Write ``entries`` as a zip; ``prepend`` bytes go before it, with the offsets left as they were
    (``shifted=False``: a zip reader must shift them itself) or counted from the file's start."""
    buf = io.BytesIO()
    if shifted:
        buf.write(prepend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name"
        with zipfile.ZipFile(buf, "a" if shifted else "w") as z:
            for name, data, compress in entries:
                info = zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0))
                info.compress_type = compress
                z.writestr(info, data)
            z.comment = comment
    raw = buf.getvalue()
    path.write_bytes(raw if shifted else prepend + raw)
    return path


def pinit_tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    with open_checkpoint(path) as ckpt:
        return {t.name: (t.dtype, tuple(t.shape), t.read_bytes().tobytes()) for t in ckpt.tensors}


def torch_tensors(path: Path, mmap: bool = False) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = torch.load(path, weights_only=True, map_location="cpu", mmap=mmap)
    assert isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()), type(obj)
    return {
        k: (
            str(v.dtype).removeprefix("torch."),
            tuple(v.shape),
            v.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes(),
        )
        for k, v in obj.items()
    }


def torch_refuses(path: Path) -> bool:
    try:
        torch_tensors(path)
    except Exception:
        return True
    return False


def expected(sd: dict[str, torch.Tensor]) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    return {
        k: (
            str(v.dtype).removeprefix("torch."),
            tuple(v.shape),
            v.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes(),
        )
        for k, v in sd.items()
    }


def assert_refused(path: Path, *words: str) -> None:
    """``check`` reports one ``unreadable`` error (exit 1); ``inspect`` exits 2 with one error line."""
    r = run_cli("check", path, "--format", "json")
    assert r.exit_code == 1, (r.exit_code, r.stdout, r.stderr)
    doc = r.json()
    (file_doc,) = doc["files"]
    errors = [f for f in file_doc["findings"] if f["severity"] == "error"]
    assert [f["code"] for f in errors] == ["unreadable"], file_doc
    message = errors[0]["message"]
    assert "\n" not in message
    for word in words:
        assert word in message, message
    r = run_cli("inspect", path, "--format", "json")
    assert_one_error_line(r)
    assert r.stdout == ""


def renamed(entries: list[Entry], old: str, new: str) -> list[Entry]:
    return [(new if n == old else n, d, c) for n, d, c in entries]


def central_directory(raw: bytes) -> tuple[int, list[zipfile.ZipInfo]]:
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        return z.start_dir, z.infolist()


def patch_central(raw: bytes, name: str, offset: int, fmt: str, value: int) -> bytes:
    """Overwrite a field (``offset`` bytes into the central directory header) of member ``name``."""
    start, infos = central_directory(raw)
    out = bytearray(raw)
    pos = start
    for info in infos:
        name_len, extra_len, comment_len = struct.unpack("<HHH", out[pos + 28 : pos + 34])
        if info.filename == name:
            struct.pack_into(fmt, out, pos + offset, value)
        pos += 46 + name_len + extra_len + comment_len
    return bytes(out)


# ---------------------------------------------------------------- refused: two members could be taken for one


def test_case_collision_is_refused(tmp_path: Path) -> None:
    """The known false pass: archive/data.pkl and also archive/DATA.PKL + archive/DATA/0, another tree.
    torch looks names up ignoring case (which one it finds depends on the sorted directory)."""
    evil_pkl = EVIL["archive/data.pkl"]
    path = build(
        tmp_path / "case.pt", [*BASE, ("archive/DATA.PKL", evil_pkl, 0), ("archive/DATA/0", EVIL["archive/data/0"], 0)]
    )
    assert_refused(path, "hostile", "case")


def test_exact_duplicate_data_pkl_is_refused(tmp_path: Path) -> None:
    path = build(tmp_path / "dup.pt", [*BASE, ("archive/data.pkl", EVIL["archive/data.pkl"], 0)])
    assert_refused(path, "hostile", "twice")


def test_duplicate_storage_differing_in_case_is_refused(tmp_path: Path) -> None:
    path = build(tmp_path / "dup0.pt", [*BASE, ("archive/DATA/0", EVIL["archive/data/0"], 0)])
    assert_refused(path, "hostile", "archive/DATA/0")


def test_local_header_naming_another_member_is_refused(tmp_path: Path) -> None:
    raw = bytearray(build(tmp_path / "x.pt", BASE).read_bytes())
    _, infos = central_directory(bytes(raw))
    (info,) = [i for i in infos if i.filename == "archive/data/0"]
    raw[info.header_offset + 30 : info.header_offset + 30 + len("archive/data/0")] = b"archive/data/9"
    path = tmp_path / "local.pt"
    path.write_bytes(bytes(raw))
    assert not torch_refuses(path)  # torch never reads the local name
    assert_refused(path, "hostile", "local header")


def test_name_with_nul_byte_is_refused(tmp_path: Path) -> None:
    """Python's zipfile cuts a name at NUL (``archive/data.pkl\\0x`` reads as ``archive/data.pkl``); miniz does not."""
    raw = build(tmp_path / "x.pt", renamed(BASE, "archive/data.pkl", "archive/data.pkl@x")).read_bytes()
    path = tmp_path / "nul.pt"
    path.write_bytes(raw.replace(b"archive/data.pkl@x", b"archive/data.pkl\0x"))  # local and central names
    assert central_directory(path.read_bytes())[1][0].filename == "archive/data.pkl"
    assert torch_refuses(path)
    assert_refused(path, "NUL")


# ---------------------------------------------------------------- refused: the record prefix is ambiguous


def test_first_member_in_another_folder_is_refused(tmp_path: Path) -> None:
    path = build(tmp_path / "first.pt", [("other/readme.txt", b"hi", 0), *BASE])
    assert torch_refuses(path)  # torch reads other/version, other/data.pkl: none there
    assert_refused(path, "hostile", "outside 'other/'")


@pytest.mark.parametrize("stray", ["other/x", "ARCHIVE/x", "x"])
def test_member_outside_the_record_folder_is_refused(tmp_path: Path, stray: str) -> None:
    path = build(tmp_path / "stray.pt", [*BASE, (stray, b"hi", 0)])
    assert torch_refuses(path)  # getAllRecords: "file in archive is not in a subdirectory"
    assert_refused(path, "hostile", stray)


def test_data_pkl_in_a_subfolder_only_is_refused(tmp_path: Path) -> None:
    path = build(tmp_path / "sub.pt", renamed(BASE, "archive/data.pkl", "archive/inner/data.pkl"))
    assert torch_refuses(path)
    assert_refused(path, "archive/data.pkl")


def test_prepended_bytes_are_refused(tmp_path: Path) -> None:
    """Python's zipfile finds the directory of a zip behind prepended bytes and shifts every offset
    (``concat``); miniz reads the directory where the end record says, so torch refuses the file."""
    path = build(tmp_path / "pre.pt", BASE, prepend=b"PK\x03\x04" + b"\0" * 60)
    assert torch_refuses(path)
    assert_refused(path, "prepended")


def test_prepended_bytes_with_offsets_from_the_start_read_as_torch_reads_them(tmp_path: Path) -> None:
    """A zip written after some bytes, its offsets counted from the file's start: both readers agree."""
    path = build(tmp_path / "pre.pt", BASE, prepend=b"PK\x03\x04" + b"\0" * 60, shifted=True)
    assert pinit_tensors(path) == torch_tensors(path) == expected(BASE_SD)


def test_end_record_counting_fewer_entries_is_refused(tmp_path: Path) -> None:
    """miniz reads exactly the entries the end record counts, Python's zipfile all in the directory."""
    raw = bytearray(build(tmp_path / "x.pt", BASE).read_bytes())
    eocd = raw.rfind(b"PK\x05\x06")
    n = struct.unpack_from("<H", raw, eocd + 10)[0]
    struct.pack_into("<HH", raw, eocd + 8, n - 1, n - 1)
    path = tmp_path / "count.pt"
    path.write_bytes(bytes(raw))
    assert_refused(path, "hostile", "entries")


def _with_zip64_end(raw: bytes, locator_offset: int | None = None) -> bytes:
    """``raw`` with a zip64 end record and locator inserted before its end record."""
    eocd = raw.rfind(b"PK\x05\x06")
    _, _, entries, total, cd_size, cd_ofs = struct.unpack_from("<HHHHII", raw, eocd + 4)
    record = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, total, cd_size, cd_ofs)
    where = eocd if locator_offset is None else locator_offset
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, where, 1)
    return raw[:eocd] + record + locator + raw[eocd:]


def test_zip64_locator_pointing_elsewhere_is_refused(tmp_path: Path) -> None:
    raw = build(tmp_path / "x.pt", BASE).read_bytes()
    path = tmp_path / "zip64.pt"
    path.write_bytes(_with_zip64_end(raw, locator_offset=0))
    assert_refused(path, "hostile", "zip64")


# ---------------------------------------------------------------- refused: records torch cannot read


def test_records_torch_refuses(tmp_path: Path) -> None:
    cases: dict[str, list[Entry]] = {
        "no version": [e for e in BASE if not e[0].endswith("/version")],
        "version 11": [(n, b"11\n" if n.endswith("/version") else d, c) for n, d, c in BASE],
        "byteorder with a newline": [(n, b"little\n" if n.endswith("byteorder") else d, c) for n, d, c in BASE],
        "alignment not a number": [(n, b"x" if n.endswith("alignment") else d, c) for n, d, c in BASE],
        "storage short": [(n, d[:-4] if n.endswith("data/0") else d, c) for n, d, c in BASE],
        "bzip2 member": [(n, d, zipfile.ZIP_BZIP2 if n.endswith("format_version") else c) for n, d, c in BASE],
    }
    for case, entries in cases.items():
        path = build(tmp_path / f"{case}.pt", entries)
        assert torch_refuses(path), case
        assert_refused(path)


def test_member_marked_as_a_folder_is_refused(tmp_path: Path) -> None:
    """miniz extracts nothing from a member with the DOS directory attribute (torch would get an
    uninitialised buffer of its size)."""
    raw = build(tmp_path / "x.pt", BASE).read_bytes()
    path = tmp_path / "dir.pt"
    path.write_bytes(patch_central(raw, "archive/data/0", 38, "<I", 0x10))
    assert_refused(path, "folder")


def test_compressed_pickle_lying_about_its_size_inflates_no_more(tmp_path: Path) -> None:
    """A DEFLATE data.pkl stating 100 bytes that inflates to 64 MiB: refused, and never inflated
    beyond its stated size."""
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = bomb.compress(b"\x80\x02}." + b"\0" * (64 << 20)) + bomb.flush()
    entries = [(n, d, c) for n, d, c in BASE if n != "archive/data.pkl"]
    raw = build(tmp_path / "x.pt", [("archive/data.pkl", b"\0" * 100, zipfile.ZIP_DEFLATED), *entries]).read_bytes()
    start, infos = central_directory(raw)
    pkl = infos[0]
    local = pkl.header_offset + 30 + len("archive/data.pkl")  # Python writes no local extra field here
    old = pkl.compress_size
    raw = raw[:local] + payload + raw[local + old :]
    grow = len(payload) - old
    # shift every later offset, and set the compressed size of data.pkl
    fixed = bytearray(raw)
    pos = start + grow
    for info in infos:
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", fixed, pos + 28)
        if info.filename == "archive/data.pkl":
            struct.pack_into("<I", fixed, pos + 20, len(payload))
        else:
            struct.pack_into("<I", fixed, pos + 42, info.header_offset + grow)
        pos += 46 + name_len + extra_len + comment_len
    eocd = fixed.rfind(b"PK\x05\x06")
    struct.pack_into("<I", fixed, eocd + 16, start + grow)
    path = tmp_path / "bomb.pt"
    path.write_bytes(bytes(fixed))
    tracemalloc.start()
    try:
        with pytest.raises(PinitError, match="inflates to more"):
            open_checkpoint(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak
    # torch reads the first 100 bytes and says nothing: miniz stops at the end of its buffer with
    # TINFL_STATUS_HAS_MORE_OUTPUT but sets no error, and PyTorchStreamReader::valid sees none
    assert_refused(path, "data.pkl", "inflates to more")


def test_compressed_pickle_stated_larger_than_the_limit_is_refused_unread(tmp_path: Path) -> None:
    from pinit.formats.torch_zip import MAX_PICKLE_BYTES

    entries = [(n, d, zipfile.ZIP_DEFLATED if n.endswith("data.pkl") else c) for n, d, c in BASE]
    raw = build(tmp_path / "x.pt", entries).read_bytes()
    path = tmp_path / "big.pt"
    path.write_bytes(patch_central(raw, "archive/data.pkl", 24, "<I", MAX_PICKLE_BYTES + 1))
    assert_refused(path, "data.pkl is larger")


# ---------------------------------------------------------------- read as torch reads them


def _zip64(raw: bytes) -> bytes:
    return _with_zip64_end(raw)


def _bad_crc(raw: bytes) -> bytes:
    return patch_central(raw, "archive/data/0", 16, "<I", 0x12345678)


BENIGN: dict[str, Any] = {
    "data.pkl named in capitals": lambda: renamed(BASE, "archive/data.pkl", "archive/DATA.PKL"),
    "storages named in capitals": lambda: [(n.replace("/data/", "/DATA/"), d, c) for n, d, c in BASE],
    "every member DEFLATE": lambda: [(n, d, zipfile.ZIP_DEFLATED) for n, d, _ in BASE],
    "members reordered": lambda: [BASE[0], *reversed(BASE[1:])],
    "storage swapped for another tree's": lambda: [(n, EVIL[n] if n.endswith("data/1") else d, c) for n, d, c in BASE],
    "version as std::stoull reads it": lambda: [
        (n, b" +3junk" if n.endswith("/version") else d, c) for n, d, c in BASE
    ],
}


@pytest.mark.parametrize("case", sorted(BENIGN))
def test_odd_but_unambiguous_archives_read_as_torch_reads_them(tmp_path: Path, case: str) -> None:
    path = build(tmp_path / "odd.pt", BENIGN[case](), comment=b"a comment")
    reference = torch_tensors(path)
    assert pinit_tensors(path) == reference
    if case.startswith("storage swapped"):
        assert reference["b"] == expected(EVIL_SD)["b"]


@pytest.mark.parametrize("patch", [_zip64, _bad_crc], ids=["zip64 end record", "wrong CRC (torch checks none)"])
def test_patched_archives_read_as_torch_reads_them(tmp_path: Path, patch: Any) -> None:
    path = tmp_path / "patched.pt"
    path.write_bytes(patch(build(tmp_path / "x.pt", BASE).read_bytes()))
    assert pinit_tensors(path) == torch_tensors(path) == expected(BASE_SD)
    r = run_cli("inspect", path, "--format", "json")
    assert r.exit_code == 0, r.stderr


# ---------------------------------------------------------------- property: refused, or read as torch reads it

NAMES = [n for n, _, _ in BASE]
PREFIXES = ["other/", "ARCHIVE/", "", "archive/sub/", "Archive/"]
EXTRAS = ["archive/extra.txt", "other/x", "archive/DATA.PKL", "archive/data/9", "archive/Byteorder", "x", "archive/"]


def _flip_case(name: str, mask: int) -> str:
    return "".join(ch.swapcase() if mask >> (i % 60) & 1 else ch for i, ch in enumerate(name))


mutation = st.one_of(
    st.tuples(st.just("case"), st.integers(0, 20), st.integers(0, 2**60)),
    st.tuples(st.just("dup"), st.integers(0, 20), st.booleans(), st.integers(0, 2**60), st.integers(0, 20)),
    st.tuples(st.just("move"), st.integers(0, 20), st.integers(0, 20)),
    st.tuples(st.just("prefix"), st.integers(0, 20), st.sampled_from(PREFIXES)),
    st.tuples(st.just("extra"), st.sampled_from(EXTRAS), st.integers(0, 20)),
    st.tuples(st.just("drop"), st.integers(0, 20)),
    st.tuples(st.just("deflate"), st.integers(0, 20)),
    st.tuples(st.just("swap"), st.integers(0, 20)),
)


def mutate(entries: list[Entry], ops: list[tuple[Any, ...]]) -> list[Entry]:
    out = list(entries)
    for op in ops:
        if not out:
            break
        kind, i = op[0], op[1] if isinstance(op[1], int) else 0
        i %= len(out)
        name, data, compress = out[i]
        if kind == "case":
            out[i] = (_flip_case(name, op[2]), data, compress)
        elif kind == "dup":
            evil, mask, at = op[2], op[3], op[4]
            new_name = _flip_case(name, mask)
            out.insert(at % (len(out) + 1), (new_name, EVIL.get(name, data) if evil else data, compress))
        elif kind == "move":
            out.insert(op[2] % len(out), out.pop(i))
        elif kind == "prefix":
            out[i] = (op[2] + name.split("/", 1)[-1], data, compress)
        elif kind == "extra":
            out.insert(op[2] % (len(out) + 1), (op[1], b"" if op[1].endswith("/") else b"extra", 0))
        elif kind == "drop":
            out.pop(i)
        elif kind == "deflate":
            out[i] = (name, data, zipfile.ZIP_DEFLATED)
        elif kind == "swap":
            out[i] = (name, EVIL.get(name, data), compress)
    return out


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    ops=st.lists(mutation, max_size=4),
    prepend=st.sampled_from([None, "raw", "shifted"]),
    comment=st.sampled_from([b"", b"a comment", b"PK\x05\x06 in a comment"]),
)
def test_odd_archives_are_refused_or_read_as_torch_reads_them(
    tmp_path: Path, ops: list[tuple[Any, ...]], prepend: str | None, comment: bytes
) -> None:
    entries = mutate(BASE, ops)
    if not entries:
        return
    junk = b"PK\x03\x04" + b"\0" * 40 if prepend else b""
    path = build(tmp_path / "odd.pt", entries, comment=comment, prepend=junk, shifted=prepend == "shifted")
    try:
        got = pinit_tensors(path)
    except PinitError:
        event("pinit refuses")
        return
    event("pinit reads")
    try:
        reference = torch_tensors(path)
    except Exception as plain:
        # SPEC 1 names torch.load(weights_only=True, mmap=True) as the reference reader; without mmap
        # torch is stricter about record sizes (never generated here)
        try:
            reference = torch_tensors(path, mmap=True)
        except Exception:
            raise AssertionError(f"pinit read a file torch refuses ({plain!r:.300}): {entries!r:.600}") from None
    assert got == reference, entries
