"""Rewrite records of a zip archive in place, at the same size, with their CRC-32 fixed.

A torch checkpoint is a zip of STORED records: changing some tensors needs no new archive, only
new bytes in their ``data/<key>`` records and the record's CRC-32 written again where the zip
keeps it (the local header, the central-directory entry, and the data descriptor after the data
when general-purpose flag bit 3 is set, as torch's writer does).  Every other byte of the archive
(the pickle, the other records, the directory itself but for the CRC fields) stays as it was.

Everything here also serves an archive embedded inside a larger file: ``base`` is the absolute
offset in ``fd`` where the archive starts (its ``ZipInfo`` offsets are relative to it, as Python's
``zipfile`` reads an archive through a window starting there) and ``end`` the absolute offset where
it ends (default: the end of the file).  All offsets this module returns are absolute.

Functions:

* :func:`record_span` -- where a record's data lies (local header checked by ``zip_layout``).
* :func:`patch_record` -- write bytes into one STORED record and fix its CRC-32 fields.
* :class:`ZipPatcher` -- the same for many records of one archive, reading its directory once;
  also finds the member a ``FileStorage`` lies in (``member_at``) and members sharing its bytes.
* :func:`copy_file` -- a fast whole-file (or span) copy (``writers.copy_span``), with progress.
* :func:`record_crc` -- the CRC-32 of a span of a file, streamed in chunks.

No torch here: only ``os``, ``zlib`` and ``struct``.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable

from pinit.errors import PinitError
from pinit.files import FileRef, pread, size_of
from pinit.formats import zip_layout

CRC_CHUNK = 4 << 20
COPY_CHUNK = 64 << 20

_CENTRAL_SIG = b"PK\x01\x02"
_DESCRIPTOR_SIG = b"PK\x07\x08"
_CENTRAL_HEADER_SIZE = 46
_LOCAL_CRC_AT = 14  # in the local header: signature, version, flags, method, time, date, then the CRC
_CENTRAL_CRC_AT = 16  # in a central entry: signature, made by, needed, flags, method, time, date, CRC
_DESCRIPTOR_FLAG = 0x8

Bytes = bytes | bytearray | memoryview


def _file_end(fd: FileRef, end: int | None) -> int:
    return size_of(fd) if end is None else end


def record_span(fd: FileRef, info: zipfile.ZipInfo, base: int = 0, end: int | None = None) -> tuple[int, int]:
    """(absolute offset where the record's data starts, its length in the archive) -- the data as
    miniz reads it, after the local header's own name and extra field, which are checked
    (``zip_layout.data_offset``); a PinitError where the header is bad or the data runs past ``end``."""
    start = zip_layout.data_offset(fd, info, _file_end(fd, end), base)
    return start, info.compress_size


def record_crc(fd: int, start: int, length: int, chunk: int = CRC_CHUNK) -> int:
    """The CRC-32 of ``length`` bytes at absolute offset ``start`` of ``fd``, read in chunks."""
    crc = 0
    done = 0
    while done < length:
        data = os.pread(fd, min(chunk, length - done), start + done)
        if not data:
            raise PinitError("file ended inside a zip record")
        crc = zlib.crc32(data, crc)
        done += len(data)
    return crc


def copy_file(
    src_fd: int,
    dst_fd: int,
    length: int,
    progress: Callable[[int], None] | None = None,
    *,
    src_offset: int = 0,
    dst_offset: int = 0,
) -> None:
    """Copy ``length`` bytes from ``src_offset`` of ``src_fd`` to ``dst_offset`` of ``dst_fd``
    (``os.copy_file_range`` where the kernel can, else pread/pwrite: ``writers.copy_span``), in
    chunks of 64 MiB, calling ``progress(n)`` after each chunk."""
    from pinit.writers import copy_span  # writers imports numpy: only when copying

    done = 0
    while done < length:
        n = min(COPY_CHUNK, length - done)
        copy_span(src_fd, src_offset + done, n, dst_fd, dst_offset + done)
        done += n
        if progress is not None:
            progress(n)


def _central_directory(fd: FileRef, base: int, end: int) -> tuple[int, int]:
    """(absolute offset of the central directory, its entry count) of the archive in [base, end),
    where miniz reads it (``zip_layout``, which also checks the end records)."""
    ofs, total = zip_layout._central_directory(fd, end, base)
    return base + ofs, total


def _local_offset(entry: bytes, extra: bytes) -> int:
    """The local header offset of a central entry, from its zip64 extra field where it is 0xFFFFFFFF."""
    csize, usize = struct.unpack("<II", entry[20:28])
    (offset,) = struct.unpack("<I", entry[42:46])
    if offset != 0xFFFFFFFF:
        return offset
    i = 0
    while i + 4 <= len(extra):
        tag, n = struct.unpack("<HH", extra[i : i + 4])
        if tag == 1:  # zip64: the 8-byte fields in order, only those that are 0xFFFFFFFF above
            field = i + 4 + 8 * ((usize == 0xFFFFFFFF) + (csize == 0xFFFFFFFF))
            if field + 8 <= i + 4 + n:
                return int(struct.unpack("<Q", extra[field : field + 8])[0])
        i += 4 + n
    raise PinitError("not a readable zip archive (a zip64 offset is missing)")


class ZipPatcher:
    """Patch STORED records of one zip archive in place (``fd`` opened for reading and writing).

    The central directory is read once, when first needed, to know where each member's central
    entry lies.  ``base``/``end``: see the module docstring.  ``infos`` (the archive's members, as
    Python's ``zipfile`` lists them) is needed only by :meth:`member_at` and :meth:`sharing`.
    Patch with :meth:`write` then :meth:`fix_crc` (several writes to a record, one CRC pass), or
    with :meth:`patch` (both).
    """

    def __init__(
        self, fd: FileRef, base: int = 0, end: int | None = None, infos: Iterable[zipfile.ZipInfo] | None = None
    ) -> None:
        self.fd = fd
        self.base = base
        self.end = _file_end(fd, end)
        self.infos = list(infos) if infos is not None else None
        self._central: dict[tuple[int, bytes], int] | None = None
        self._spans: list[tuple[int, int, zipfile.ZipInfo]] | None = None
        self._by_start: dict[int, zipfile.ZipInfo] | None = None

    def _read_central(self) -> dict[tuple[int, bytes], int]:
        if self._central is None:
            at, total = _central_directory(self.fd, self.base, self.end)
            central: dict[tuple[int, bytes], int] = {}
            for _ in range(total):
                entry = pread(self.fd, _CENTRAL_HEADER_SIZE, at)
                if len(entry) < _CENTRAL_HEADER_SIZE or entry[:4] != _CENTRAL_SIG:
                    raise PinitError("not a readable zip archive (bad central directory entry)")
                name_len, extra_len, comment_len = struct.unpack("<HHH", entry[28:34])
                tail = pread(self.fd, name_len + extra_len, at + _CENTRAL_HEADER_SIZE)
                name, extra = tail[:name_len], tail[name_len:]
                central[(_local_offset(entry, extra), name)] = at
                at += _CENTRAL_HEADER_SIZE + name_len + extra_len + comment_len
            self._central = central
        return self._central

    def _member_spans(self) -> list[tuple[int, int, zipfile.ZipInfo]]:
        """(absolute data start, absolute end of data, member) of each member, by where it starts
        (a member whose local header is bad is left out)."""
        if self._spans is None:
            if self.infos is None:
                raise ValueError("ZipPatcher needs the archive's infos for this")
            spans = []
            for info in self.infos:
                try:
                    start = zip_layout.data_offset(self.fd, info, self.end, self.base)
                except PinitError:
                    continue
                spans.append((start, start + info.compress_size, info))
            spans.sort(key=lambda s: s[0])
            self._spans = spans
        return self._spans

    def member_at(self, data_start: int) -> zipfile.ZipInfo | None:
        """The member whose data starts at absolute offset ``data_start`` (how a
        ``FileStorage.offset`` names its record), or None."""
        if self._by_start is None:
            self._by_start = {start: info for start, _stop, info in reversed(self._member_spans())}
        return self._by_start.get(data_start)

    def sharing(self, info: zipfile.ZipInfo) -> list[str]:
        """Names of the other members whose bytes (local header to end of data) overlap ``info``'s
        data, and "the central directory" where it overlaps that: patching ``info`` would change
        them too (a hostile archive can point two entries at one span); empty for any archive a
        zip writer made."""
        start, length = self.record_span(info)
        out = []
        if start + length > _central_directory(self.fd, self.base, self.end)[0]:
            out.append("the central directory")
        for _start, other_stop, other in self._member_spans():
            if other is info or (other.header_offset == info.header_offset and other.filename == info.filename):
                continue
            lo = self.base + other.header_offset
            if lo < start + length and start < other_stop:
                out.append(other.filename)
        return out

    def record_span(self, info: zipfile.ZipInfo) -> tuple[int, int]:
        """See :func:`record_span`."""
        return record_span(self.fd, info, self.base, self.end)

    def _check_stored(self, info: zipfile.ZipInfo) -> None:
        if info.compress_type != zipfile.ZIP_STORED:
            raise PinitError(
                f"zip member '{info.filename}' is compressed; pinit rewrites only stored (uncompressed) "
                "records in place (torch.save stores them uncompressed: load and save it again with torch)"
            )

    def write(self, info: zipfile.ZipInfo, writes: Iterable[tuple[int, Bytes]]) -> None:
        """Write each ``(offset within the record's data, bytes)`` of ``writes`` (the CRC is not
        fixed: call :meth:`fix_crc` after the record's last write).  Only a STORED record can be
        written (a compressed one is a PinitError); a write outside the record's data is a
        ValueError; nothing is written in either case."""
        self._check_stored(info)
        start, length = self.record_span(info)
        pending = [(off, memoryview(data).cast("B")) for off, data in writes]
        for off, view in pending:
            if off < 0 or off + view.nbytes > length:
                raise ValueError(f"write of {view.nbytes} bytes at {off} is outside record '{info.filename}'")
        from pinit.writers import pwrite_all

        for off, view in pending:
            pwrite_all(self.fd, view, start + off)

    def fix_crc(self, info: zipfile.ZipInfo) -> int:
        """Compute the record's CRC-32 from the file (streamed) and write it in the local header
        (unless flag bit 3 left it zero there), the central entry and the data descriptor (flag
        bit 3).  Returns the new CRC, also set on ``info.CRC``."""
        self._check_stored(info)
        start, length = self.record_span(info)
        central_at = self._read_central().get((info.header_offset, zip_layout.raw_name(info)))
        if central_at is None:
            raise PinitError(f"zip member '{info.filename}' is not in the archive's central directory")
        old = info.CRC
        crc = record_crc(self.fd, start, length)
        local_at = self.base + info.header_offset + _LOCAL_CRC_AT
        (local_crc,) = struct.unpack("<I", os.pread(self.fd, 4, local_at))
        descriptor = bool(info.flag_bits & _DESCRIPTOR_FLAG)
        places = [central_at + _CENTRAL_CRC_AT]
        if not (descriptor and local_crc == 0):  # under bit 3 the local fields may be left zero
            places.append(local_at)
        if descriptor:
            places.append(self._descriptor_crc_at(info, start + length, old))
        packed = struct.pack("<I", crc)
        for at in places:
            os.pwrite(self.fd, packed, at)
        info.CRC = crc
        return crc

    def patch(self, info: zipfile.ZipInfo, writes: Iterable[tuple[int, Bytes]]) -> int:
        """:meth:`write` then :meth:`fix_crc`; returns the new CRC."""
        self.write(info, writes)
        return self.fix_crc(info)

    def _descriptor_crc_at(self, info: zipfile.ZipInfo, at: int, old: int) -> int:
        """Where the data descriptor after the data (at ``at``) keeps the CRC: after its optional
        signature; the reading that holds the old CRC where both are possible."""
        head = os.pread(self.fd, 8, at)
        if len(head) < 8 or at + 8 > self.end:
            raise PinitError(f"zip member '{info.filename}' has no data descriptor after its data")
        signed = head[:4] == _DESCRIPTOR_SIG
        if signed and struct.unpack("<I", head[4:8])[0] == old:
            return at + 4
        if struct.unpack("<I", head[:4])[0] == old:
            return at
        if signed:
            return at + 4
        raise PinitError(f"zip member '{info.filename}' has a data descriptor that does not match its entry")


def patch_record(
    fd: int,
    info: zipfile.ZipInfo,
    writes: Iterable[tuple[int, Bytes]],
    base: int = 0,
    *,
    end: int | None = None,
) -> int:
    """Write ``(offset within the record's data, bytes)`` pairs into one STORED record of the
    archive at ``base`` in ``fd`` and fix its CRC-32 fields; returns the new CRC.  See
    :meth:`ZipPatcher.patch` (use a ZipPatcher to patch several records: it reads the directory once)."""
    return ZipPatcher(fd, base, end).patch(info, writes)
