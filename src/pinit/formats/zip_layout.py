"""Which members of a torch zip ``torch.load`` reads, or a refusal when that is not certain.

torch does not read a checkpoint through Python's ``zipfile``: ``torch.load`` opens it with
``PyTorchStreamReader`` (``caffe2/serialize/inline_container.cc``), built on miniz 3.0.2.  The two
readers see different archives when the archive is odd, so pinit follows miniz, and refuses what
the two could read differently:

* miniz finds the central directory at the offset the end record gives; Python shifts every
  offset when bytes were prepended (``concat``) and reads the zip64 end record before the locator
  rather than where the locator points; miniz reads exactly the entry count the end record gives,
  Python every entry in the directory's size.  They must agree.
* ``PyTorchStreamReader::init`` takes the record prefix ("archive name") from the first entry's
  name, up to its first ``/``; every lookup is ``<prefix>/<record>``.  ``torch.load`` calls
  ``getAllRecords`` (``_is_torchscript_zip``), which refuses any entry outside ``<prefix>/``.
* Lookups (``mz_zip_reader_locate_file``, flags 0) are a binary search over the names sorted
  ASCII-case-insensitively: two names equal but for ASCII case (or equal) may each be the one
  found, so they are refused.  Names are compared as the bytes they are in the directory, up to
  their full length (Python's ``zipfile`` cuts a name at a NUL byte: such names are refused).
* miniz extracts only stored and DEFLATE members, refuses encrypted and patch members, reads
  nothing for a "directory" (a name ending in ``/`` or the DOS directory attribute) and leaves the
  buffer uninitialised, needs a DEFLATE member to inflate to exactly its stated size, and does not
  check CRCs (torch builds it with ``MINIZ_DISABLE_ZIP_READER_CRC32_CHECKS``).  Data starts after
  the local header's own name and extra lengths; its name is not compared (pinit refuses a local
  name that differs from the directory's).
* torch reads ``.data/version`` (else ``version``) and ``.data/serialization_id`` when opening,
  then ``.format_version``, ``byteorder`` (exactly ``little`` or ``big``), ``.storage_alignment``
  (``int()`` of it), ``data.pkl`` and ``data/<key>`` for each storage, whose size must equal the
  storage's (``get_storage_from_record``).
"""

from __future__ import annotations

import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

from pinit.errors import PinitError
from pinit.files import FileRef, pread, size_of

# torch 2.13's caffe2/serialize/versions.h: the file format versions its reader accepts
MIN_FILE_FORMAT_VERSION = 1
MAX_FILE_FORMAT_VERSION = 10
MAX_METADATA_RECORD_BYTES = 1 << 20  # version, byteorder, alignment...: a few bytes in torch's files
MAX_FILENAME_BYTES = 511  # getAllRecords copies names into a 512-byte buffer

_EOCD_SIG = b"PK\x05\x06"
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"
_ZIP64_EOCD_SIG = b"PK\x06\x06"
_LOCAL_SIG = b"PK\x03\x04"
_EOCD_SIZE = 22
_ZIP64_LOCATOR_SIZE = 20
_ZIP64_EOCD_SIZE = 56
_CENTRAL_HEADER_SIZE = 46
_LOCAL_HEADER_SIZE = 30
_UNSUPPORTED_FLAGS = 0x1 | 0x20 | 0x40 | 0x2000  # encrypted, patch data, strong encryption, masked directory
_DOS_DIRECTORY = 0x10
_CHUNK = 1 << 20
_STOULL = re.compile(rb"[ \t\n\v\f\r]*([+-]?)([0-9]+)")


def _hostile(why: str) -> PinitError:
    return PinitError(f"zip archive refused as hostile: {why}")


def raw_name(info: zipfile.ZipInfo) -> bytes:
    """The member's name as the bytes in the central directory (what miniz compares)."""
    return info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")


def record_key(name: str) -> str | None:
    """The lookup key of a record name as torch passes it to miniz: UTF-8 bytes, ASCII case folded."""
    try:
        return name.encode("utf-8").lower().decode("latin-1")
    except UnicodeEncodeError:  # a lone surrogate: torch cannot even pass it to its reader
        return None


def _show(raw: bytes) -> str:
    return repr(raw.decode("utf-8", "backslashreplace"))[1:-1][:200]


@dataclass(frozen=True)
class ZipLayout:
    """The members ``torch.load`` can read: ``records`` maps each name below the prefix, ASCII
    case folded (``record_key``), to its member; ``prefix`` is ``<archive name>/``."""

    prefix: str
    records: dict[str, zipfile.ZipInfo]
    byteorder: str

    def find(self, name: str) -> zipfile.ZipInfo | None:
        """The member torch's ``getRecord(name)`` reads, or None where torch finds none."""
        return find(self.records, name)


def find(records: dict[str, zipfile.ZipInfo], name: str) -> zipfile.ZipInfo | None:
    key = record_key(name)
    return None if key is None else records.get(key)


def _central_directory(fd: FileRef, size: int, base: int = 0) -> tuple[int, int]:
    """Where miniz (``mz_zip_reader_read_central_dir``) reads the central directory: (offset, entries).

    The archive lies in ``[base, size)`` of the file (``base`` > 0: embedded in a larger file);
    the offset returned is relative to ``base``, as the archive's own offsets are."""
    if size - base < _EOCD_SIZE:
        raise PinitError("not a readable zip archive (too short)")
    tail_len = min(size - base, (1 << 16) + _EOCD_SIZE)  # where Python's zipfile looks for it
    if not isinstance(fd, int):  # a remote file: the end record alone first (no comment: the usual case)
        last = pread(fd, _EOCD_SIZE, size - _EOCD_SIZE)
        if last[:4] == _EOCD_SIG and last[20:22] == b"\0\0":  # the last place one can be: found
            tail_len = _EOCD_SIZE
    tail = pread(fd, tail_len, size - tail_len)
    pos = tail.rfind(_EOCD_SIG, 0, len(tail) - _EOCD_SIZE + 4)  # the last one with a whole record after it
    if pos < 0:
        raise PinitError("not a readable zip archive (no end of central directory record)")
    eocd = size - tail_len + pos
    this_disk, cdir_disk, on_disk, total, cdir_size, cdir_ofs = struct.unpack("<HHHHII", tail[pos + 4 : pos + 20])
    if eocd - base >= _ZIP64_LOCATOR_SIZE + _ZIP64_EOCD_SIZE:
        locator = pread(fd, _ZIP64_LOCATOR_SIZE, eocd - _ZIP64_LOCATOR_SIZE)
        if locator[:4] == _ZIP64_LOCATOR_SIG:
            record_ofs, disks = struct.unpack("<QI", locator[8:20])
            # Python reads the zip64 end record just before the locator, miniz where the locator points
            if base + record_ofs != eocd - _ZIP64_LOCATOR_SIZE - _ZIP64_EOCD_SIZE:
                raise _hostile("its zip64 locator points away from the zip64 end record (zip readers disagree)")
            record = pread(fd, _ZIP64_EOCD_SIZE, base + record_ofs)
            if record[:4] == _ZIP64_EOCD_SIG:
                record_size, this_disk, cdir_disk, on_disk, total, cdir_size, cdir_ofs = struct.unpack(
                    "<Q4xIIQQQQ", record[4:56]
                )
                if record_size < _ZIP64_EOCD_SIZE - 12 or disks != 1:
                    raise PinitError("not a readable zip archive (bad zip64 end record)")
                if total > 0xFFFFFFFF or on_disk > 0xFFFFFFFF or cdir_size > 0xFFFFFFFF:
                    raise PinitError("not a readable zip archive (too many entries for torch's reader)")
    if total != on_disk or ((this_disk | cdir_disk) != 0 and (this_disk, cdir_disk) != (1, 1)):
        raise PinitError("not a readable zip archive (multi-disk archives are not supported)")
    if cdir_size < total * _CENTRAL_HEADER_SIZE or base + cdir_ofs + cdir_size > size:
        raise PinitError("not a readable zip archive (bad central directory size or offset)")
    return cdir_ofs, total


def torch_layout(
    fd: FileRef, infos: list[zipfile.ZipInfo], start_dir: int, base: int = 0, end: int | None = None
) -> ZipLayout:
    """Check that Python's ``zipfile`` (``infos``, ``start_dir``) sees the archive as torch does,
    and list the records torch can read; reads torch's small metadata records as torch does.

    ``base``/``end``: the archive lies in ``[base, end)`` of the file (default: the whole file), as
    a ``torch.save`` archive embedded in a larger file; ``infos`` and ``start_dir`` are relative to
    ``base`` (``zipfile`` reading through a window starting there).

    Raises PinitError for an archive torch refuses or could read differently.
    """
    size = size_of(fd) if end is None else end
    cdir_ofs, total = _central_directory(fd, size, base)
    if start_dir != cdir_ofs:
        raise _hostile(
            f"its central directory is at offset {cdir_ofs} but Python's zipfile reads it at {start_dir} "
            "(bytes prepended to the archive)"
        )
    if len(infos) != total:
        raise _hostile(f"its end record counts {total} entries but the central directory holds {len(infos)}")
    if not infos:
        raise PinitError("zip archive holds no members")
    names: list[bytes] = []
    for info in infos:
        try:
            raw = raw_name(info)
        except UnicodeEncodeError:
            raise PinitError(f"zip member name {info.orig_filename!r:.200} cannot be read back") from None
        names.append(raw)
        shown = _show(raw)
        if b"\0" in raw:
            raise _hostile(f"member name '{shown}' holds a NUL byte (zip readers cut it there or not)")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise PinitError(
                f"zip member '{shown}' uses compression method {info.compress_type} (torch reads stored and DEFLATE)"
            )
        if info.flag_bits & _UNSUPPORTED_FLAGS:
            raise PinitError(f"zip member '{shown}' is encrypted or patch data (torch cannot read it)")
        if info.volume != 0:
            raise PinitError(f"zip member '{shown}' is on another disk (multi-disk archives are not supported)")
        if (info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size) or (
            info.file_size and not info.compress_size
        ):
            raise PinitError(f"zip member '{shown}' has inconsistent sizes")
        if base + info.header_offset + _LOCAL_HEADER_SIZE + info.compress_size > size:
            raise PinitError(f"zip member '{shown}' runs past the end of the file")
    seen: dict[bytes, bytes] = {}
    for raw in names:
        other = seen.get(raw.lower())
        if other is not None:
            how = "twice" if other == raw else f"and as '{_show(other)}' (equal but for case)"
            raise _hostile(
                f"member '{_show(raw)}' is in it {how}; torch looks names up ignoring case, either could be read"
            )
        seen[raw.lower()] = raw
    first = names[0]
    slash = first.find(b"/")
    if slash < 0:
        raise PinitError(
            f"zip archive is not a torch checkpoint (its first member '{_show(first)}' is not in a folder)"
        )
    prefix = first[: slash + 1]
    if len(prefix) > MAX_FILENAME_BYTES:
        raise PinitError("zip archive is not a torch checkpoint (its folder name is too long for torch's reader)")
    for raw in names:
        if not raw.startswith(prefix):
            raise _hostile(
                f"member '{_show(raw)}' is outside '{_show(prefix)}', the folder of its first member, "
                "where torch reads every record (torch refuses such archives)"
            )
    records = {raw[len(prefix) :].lower().decode("latin-1"): info for raw, info in zip(names, infos)}
    if find(records, "data.pkl") is None:
        pkl = [_show(raw) for raw in names if raw.lower().endswith(b"data.pkl")]
        where = f" ('{pkl[0]}' is not where torch reads it)" if pkl else ""
        raise PinitError(f"zip archive is not a torch checkpoint (no {_show(prefix)}data.pkl){where}")
    if not isinstance(fd, int):  # a remote file: the local headers data_offset reads, requested at once
        fd.prefetch([(base + i.header_offset, _LOCAL_HEADER_SIZE + len(raw_name(i))) for i in infos])
    return ZipLayout(prefix.decode("utf-8", "replace"), records, _check_metadata(fd, records, size, base))


def _check_metadata(fd: FileRef, records: dict[str, zipfile.ZipInfo], size: int, base: int = 0) -> str:
    """Read the records torch reads before data.pkl, as torch does; returns the byte order."""

    def record(name: str) -> bytes | None:
        info = find(records, name)
        return None if info is None else read_record(fd, info, MAX_METADATA_RECORD_BYTES, size, base)

    version = record(".data/version")
    if version is None:
        version = record("version")
    if version is None:
        raise PinitError("zip archive is not a torch checkpoint (no version record)")
    m = _STOULL.match(version)  # std::stoull: spaces, a sign, digits; the rest ignored
    digits = (m.group(2).lstrip(b"0") or b"0") if m and m.group(1) != b"-" else b""
    number = int(digits) if 0 < len(digits) <= 20 else -1  # past 20 digits stoull overflows
    if not MIN_FILE_FORMAT_VERSION <= number <= MAX_FILE_FORMAT_VERSION:
        raise PinitError(
            f"unsupported torch file format version {version[:20]!r} "
            f"(torch reads {MIN_FILE_FORMAT_VERSION} to {MAX_FILE_FORMAT_VERSION})"
        )
    record(".data/serialization_id")
    record(".format_version")
    alignment = record(".storage_alignment")
    if alignment is not None:
        try:
            int(alignment)
        except ValueError:
            raise PinitError(f"invalid .storage_alignment record {alignment[:20]!r} (torch refuses it)") from None
    byteorder = record("byteorder")
    if byteorder is None:
        return "little"
    if byteorder not in (b"little", b"big"):
        raise PinitError(f"unknown byteorder {byteorder[:20]!r} (torch accepts only 'little' or 'big')")
    return byteorder.decode()


def data_offset(fd: FileRef, info: zipfile.ZipInfo, file_size: int, base: int = 0) -> int:
    """Where the member's data starts, as miniz computes it (after the local header's own name and
    extra field); the local header must name the member as the central directory does.

    ``base``: the absolute offset in ``fd`` of an archive embedded in a larger file (``info``'s
    offsets are relative to it); the result is absolute, ``file_size`` the absolute end."""
    raw = raw_name(info)
    head = pread(fd, _LOCAL_HEADER_SIZE + len(raw), base + info.header_offset)
    if len(head) < _LOCAL_HEADER_SIZE or head[:4] != _LOCAL_SIG:
        raise PinitError(f"zip member '{info.filename}' has a bad local header")
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    if name_len != len(raw) or head[_LOCAL_HEADER_SIZE:] != raw:
        raise _hostile(f"the local header of member '{info.filename}' names another member")
    start = base + info.header_offset + _LOCAL_HEADER_SIZE + name_len + extra_len
    if start + info.compress_size > file_size:
        raise PinitError(f"zip member '{info.filename}' runs past the end of the file")
    if info.file_size and (info.external_attr & _DOS_DIRECTORY or raw.endswith(b"/")):
        raise _hostile(f"member '{info.filename}' is marked as a folder but holds data (torch reads none of it)")
    return start


def read_record(fd: FileRef, info: zipfile.ZipInfo, limit: int, file_size: int | None = None, base: int = 0) -> bytes:
    """The member's bytes as torch's ``getRecord`` reads them, never more than ``limit`` bytes
    inflated whatever the header says; refused when it holds more than ``limit``.

    ``base``/``file_size``: see :func:`data_offset` (an archive embedded at ``base``)."""
    if info.file_size > limit:
        raise PinitError(
            f"zip member '{info.filename}' holds {info.file_size} bytes, more than the {limit} pinit reads"
        )
    size = size_of(fd) if file_size is None else file_size
    start = data_offset(fd, info, size, base)
    if not info.compress_size:
        return b""
    if info.compress_type == zipfile.ZIP_STORED:
        data = pread(fd, info.file_size, start)
        if len(data) != info.file_size:
            raise PinitError(f"zip member '{info.filename}' runs past the end of the file")
        return data
    return InflatedReader(fd, info, start).read()


class InflatedReader:
    """A DEFLATE member's bytes, inflated in chunks from the file: never more than its stated size
    plus one byte, and an error unless it inflates to exactly that size (as miniz requires)."""

    def __init__(self, fd: FileRef, info: zipfile.ZipInfo, start: int) -> None:
        self.fd = fd
        self.info = info
        self.start = start
        self._restart()

    def _restart(self) -> None:
        self._inflater = zlib.decompressobj(-15)
        self._in_pos = self.start
        self._in_left = self.info.compress_size
        self._pending = b""  # compressed input not yet consumed
        self.pos = 0  # inflated bytes returned so far

    def __enter__(self) -> InflatedReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def _bad(self, why: str) -> PinitError:
        return PinitError(f"zip member '{self.info.filename}' {why} (torch cannot read it)")

    def _inflate(self, room: int) -> bytes:
        """Up to ``room`` more inflated bytes (b"" at the end of the stream)."""
        while not self._inflater.eof:
            if not self._pending and self._in_left:
                chunk = pread(self.fd, min(self._in_left, _CHUNK), self._in_pos)
                if not chunk:
                    raise self._bad("runs past the end of the file")
                self._in_pos += len(chunk)
                self._in_left -= len(chunk)
                self._pending = chunk
            try:  # called without input too: zlib may hold output of a match it has not copied yet
                out = self._inflater.decompress(self._pending, room)
            except zlib.error as e:
                raise self._bad(f"is not valid DEFLATE data ({e})") from None
            self._pending = self._inflater.unconsumed_tail
            if out:
                return out
            if not self._pending and not self._in_left and not self._inflater.eof:
                raise self._bad("ends inside its compressed data")
        return b""

    def read(self, n: int = -1) -> bytes:
        """At most ``n`` bytes (all that are left when negative); an error where the stream ends
        before its stated size, or goes on after it."""
        left = self.info.file_size - self.pos
        n = left if n < 0 else min(n, left)
        parts: list[bytes] = []
        got = 0
        while got < n:
            out = self._inflate(min(n - got, _CHUNK))
            if not out:
                raise self._bad(f"inflates to {self.pos + got} bytes, not the {self.info.file_size} it states")
            parts.append(out)
            got += len(out)
        self.pos += got
        if self.pos == self.info.file_size and self._inflate(1):
            raise self._bad(f"inflates to more than the {self.info.file_size} bytes it states")
        return b"".join(parts)

    def seek(self, pos: int) -> None:
        if pos < self.pos:
            self._restart()
        while self.pos < pos:
            self.read(min(pos - self.pos, _CHUNK))

    def check(self) -> None:
        """Inflate the whole member once, discarding it: it must yield exactly its stated size."""
        self._restart()
        while self.pos < self.info.file_size:
            self.read(_CHUNK)
        self._restart()
