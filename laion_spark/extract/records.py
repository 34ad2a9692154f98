"""Web-archive file bytes (WARC 0.17-1.1 / ARC v1, plain, gzip or lz4) -> ArchiveRecord / RecordError stream.

INPUT:  a binary file-like object (read sequentially; it may be non-seekable, e.g. an HTTP stream)
        holding a WARC or ARC file, uncompressed, gzipped per record (Common Crawl style), gzipped as a
        whole, or LZ4-framed (only when the optional ``lz4`` package is installed).
OUTPUT: ``iter_archive`` yields, in file order, one ``ArchiveRecord`` per record it can read and a
        ``RecordError`` for every part of the file it cannot (it never raises on bad input).

Offsets (``ArchiveRecord.offset`` / ``length``), the contract the candidates table relies on:

* uncompressed files: the raw byte offset of the record's first header byte and its length up to the
  next record (header + block + the separator that follows);
* gzip, one member (or several consecutive members) per record, as Common Crawl writes them:
  the compressed offset of the first member and the compressed length of the member(s), so that
  ``gunzip(file[offset:offset + length])`` is exactly this record (what CC's CDX index gives);
* gzip where a member holds several records (whole-file gzip, e.g. ``warcio/example-bad*.gz``):
  no byte range can hold one record only, so ``offset`` is the compressed offset of the member the
  record starts in, ``length`` covers compressed input at least up to the record's last byte, and
  ``inner_offset`` is where the record starts in the decompressed output of
  ``file[offset:offset + length]`` (streaming gunzip: the range may end inside the member). For the
  two cases above ``inner_offset`` is 0.

Tolerance, by design (each anomaly gives a RecordError, the records around it are still read):

* record separators may be ``\\r\\n\\r\\n``, ``\\n\\n``, ``\\n`` or missing (ClueWeb09), NUL padding is
  skipped, header lines may end in LF, CRLF or CRCRLF;
* a Content-Length that does not land on the next record (ClueWeb09 is fine, cc_net/ipwb are not):
  the block is cut or extended to the next header line found (``WARC/x.y`` or an ARC header line)
  and a RecordError says so; junk between records is skipped with a RecordError;
* a truncated last record is yielded with the bytes that are there, followed by a RecordError;
* gzip damage (bad CRC, corrupt deflate data, truncated member, non-gzip bytes between members):
  a RecordError, then reading resumes at the next gzip member header found in the compressed bytes;
* an I/O error from the stream ends the file with a RecordError.

Memory, with a ``block_limit`` (what extract passes): bounded by what the limit keeps of a block, never
by the block. The first 64 KiB of each block are peeked at, the limit says how many bytes to keep, and
the rest is decoded and dropped as it comes (drained), searched on the way for the next record header
in case the Content-Length proves wrong (the bytes from a header found are held, at most 64 MiB: a
Content-Length that overshoots a real header by more than that loses the records in between, with an
error). Besides what the limit keeps: one chunk of compressed input (1 MiB) and of output (4 MiB).
Without a block_limit, each block is held whole, as the record's ``block``.

ARC records become ``record_type`` 'warcinfo' (the ``filedesc://`` record), 'response' (content that
is an HTTP message) or 'resource' (anything else, e.g. ``dns:`` records); their ``content_type`` is
the ARC header's content-type field and ``block`` the record content (the raw HTTP response).
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO, TypeAlias

try:  # ISA-L inflate is about twice as fast as zlib here (bench/readers.py); optional, same API
    from isal import isal_zlib as _inflate
except ImportError:  # pragma: no cover - depends on the environment
    _inflate = zlib

logger = logging.getLogger(__name__)

__all__ = ["ArchiveRecord", "BlockLimit", "RecordError", "iter_archive"]

# (record type, Content-Type of the record, first bytes of its block) -> how many block bytes to keep
BlockLimit: TypeAlias = Callable[[str, str, bytes], int]


@dataclass(frozen=True, slots=True)
class ArchiveRecord:
    """One record of a WARC/ARC file; see the module docstring for offset/length."""

    record_type: str
    target_uri: str | None
    date: datetime | None
    offset: int
    length: int
    content_type: str
    block: bytes
    inner_offset: int = 0
    # the block's length in the file; ``block`` holds its first bytes only when a block_limit cut it
    block_length: int | None = None


@dataclass(frozen=True, slots=True)
class RecordError:
    """A record, a stretch of the file, or the rest of the file that could not be read.

    ``ends_file``: the file could not be read past this point (an I/O failure once the stream's own
    retries ran out, or a reader failure): what follows in the file was never seen.
    """

    offset: int | None
    error: str
    ends_file: bool = False


_RAW_READ = 1 << 20  # compressed bytes read from the stream at a time
_FEED = 1 << 16  # compressed bytes fed to zlib per call: bounds the copy of unused_data per member
_MAX_OUT = 1 << 22  # decompressed bytes per zlib call: bounds memory on gzip bombs
_MAX_HEADER = 1 << 16  # a WARC header block (or ARC header line) longer than this is junk
_RESYNC_LIMIT = 1 << 26  # how far a wrong Content-Length may be extended to find the next header
_COMPACT = 1 << 20

_HEADER_END = re.compile(rb"\n\r*\n")
_WARC_LINE = re.compile(rb"WARC/\d+\.\d+\r*\n")
_ARC_SEARCH = re.compile(rb"\n(?=[A-Za-z][A-Za-z0-9+.\-]*:)")
_SKIPPABLE = b"\r\n\x00"  # separators and NUL padding between records
_GZIP_MAGIC = b"\x1f\x8b\x08"
_LZ4_MAGIC = b"\x04\x22\x4d\x18"


class _Stream:
    """Decompressed view of the file with the gzip member map needed for compressed offsets.

    The data is a sequence of *segments*: runs of bytes that continue each other. A damage in the
    compressed data (or EOF) ends a segment; ``next_segment`` resumes at the next gzip member.
    Positions (``pos``, member bounds) are absolute offsets in the decompressed output.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.buf = bytearray()
        self.base = 0  # decompressed offset of buf[0]
        self.rpos = 0  # read index into buf
        self.errors: list[RecordError] = []
        self.raw_eof = False
        self.seg_done = False  # no more bytes in the current segment
        self.cbuf = b""  # compressed bytes not yet fed
        self.ci = 0
        self.cbase = 0  # compressed offset of cbuf[0]
        self.dec = None
        self.m_cstart = 0
        self.m_ustart = 0
        self.crc = 0
        # finished members: (u_start, u_end, c_start, c_end); pruned as records are consumed
        self.members: list[tuple[int, int, int, int]] = []
        self.damaged = False  # the segment ended on damage (resync possible), not on EOF
        head = self._peek_raw(4)
        if head.startswith(_GZIP_MAGIC):
            self.codec = "gzip"
        elif head.startswith(_LZ4_MAGIC):
            self.codec = "lz4"
        else:
            self.codec = "plain"
        if self.codec == "lz4":
            try:
                import lz4.frame  # noqa: F401  (optional: read LZ4 files when installed)
            except ImportError:
                self.errors.append(
                    RecordError(0, "unsupported compression: lz4 (install the 'lz4' package to read it)")
                )
                self.seg_done = True
                self.raw_eof = True

    # ---- compressed side -------------------------------------------------------------------
    def _peek_raw(self, n: int) -> bytes:
        while len(self.cbuf) - self.ci < n and not self.raw_eof:
            self._read_raw()
        return self.cbuf[self.ci : self.ci + n]

    def _read_raw(self) -> None:
        try:
            data = self.raw.read(_RAW_READ)
        except Exception as exc:  # noqa: BLE001  (any I/O failure ends the file as an error row, never a crash)
            self.raw_eof = True
            self.errors.append(
                RecordError(self.cbase + len(self.cbuf), f"I/O error while reading: {exc}", ends_file=True)
            )
            return
        if not data:
            self.raw_eof = True
            return
        if self.ci > 0:
            self.cbase += self.ci
            self.cbuf = self.cbuf[self.ci :] + data
            self.ci = 0
        else:
            self.cbuf = self.cbuf + data if self.cbuf else data

    @property
    def cpos(self) -> int:
        return self.cbase + self.ci

    @property
    def pos(self) -> int:
        return self.base + self.rpos

    @property
    def end(self) -> int:
        return self.base + len(self.buf)

    def _start_member(self) -> bool:
        """Parse a gzip member header at the compressed position; False (segment over) if none."""
        head = self._peek_raw(10)
        if not head:
            return False
        if not head.startswith(_GZIP_MAGIC) or len(head) < 10:
            rest = self._peek_raw(4096)
            if self.raw_eof and len(rest) == len(self.cbuf) - self.ci and not rest.strip(b"\x00\r\n"):
                self.ci = len(self.cbuf)  # padding after the last member is harmless
                return False
            what = "truncated gzip header" if head.startswith(_GZIP_MAGIC) else "data that is not a gzip member"
            self.errors.append(RecordError(self.cpos, f"{what} at compressed offset {self.cpos}"))
            self._skip_damaged_start(head)
            return False
        flags = head[3]
        n = 10
        need = self._peek_raw(10 + 4096)
        try:
            if flags & 4:
                xlen = need[n] | (need[n + 1] << 8)
                n += 2 + xlen
                if n + 4096 > len(need):  # an extra field may be up to 64 KiB: read all of it
                    need = self._peek_raw(n + 4096)
            for bit in (8, 16):
                if flags & bit:
                    z = need.index(b"\x00", n)
                    n = z + 1
            if flags & 2:
                n += 2
            if n > len(need):
                raise ValueError
        except (IndexError, ValueError):
            self.errors.append(RecordError(self.cpos, f"bad or truncated gzip header at compressed offset {self.cpos}"))
            self._skip_damaged_start(head)
            return False
        self.m_cstart = self.cpos
        self.m_ustart = self.end
        self.ci += n
        self.dec = _inflate.decompressobj(-15)
        self.crc = 0
        return True

    def _skip_damaged_start(self, head: bytes) -> None:
        """Mark the segment damaged; a damaged member header is stepped over, since resync looks for the next
        gzip magic and would otherwise find this one again, for ever."""
        self.damaged = True
        if head.startswith(_GZIP_MAGIC):
            self.ci += 1

    def _more(self) -> bool:
        """Append some decompressed bytes to buf; False when the current segment has ended."""
        if self.seg_done:
            return False
        if self.codec == "plain":
            if self.ci < len(self.cbuf):
                self.buf += memoryview(self.cbuf)[self.ci :]
                self.cbase += len(self.cbuf)
                self.cbuf, self.ci = b"", 0
                return True
            self._read_raw()
            if self.raw_eof and not self.cbuf:
                self.seg_done = True
                return False
            return self._more()
        if self.codec == "lz4":
            return self._more_lz4()
        while True:
            if self.dec is None and not self._start_member():
                self.seg_done = True
                return False
            if self.ci >= len(self.cbuf):
                self._read_raw()
                if self.ci >= len(self.cbuf):
                    self._flush_truncated()
                    return False
            chunk = memoryview(self.cbuf)[self.ci : self.ci + _FEED]
            dec = self.dec
            try:
                out = dec.decompress(chunk, _MAX_OUT)
            except (zlib.error, _inflate.error) as exc:
                self.errors.append(
                    RecordError(
                        self.m_cstart,
                        f"corrupt deflate data in gzip member at compressed offset {self.m_cstart}: {exc}",
                    )
                )
                # resync looks for the next member right after the damaged one's start (its header may have
                # swallowed the next member's: a truncated header followed by a good member)
                self.ci = max(self.m_cstart + 1 - self.cbase, self.ci + 1 if self.m_cstart < self.cbase else 0)
                self.dec = None
                self.damaged = True
                self.seg_done = True
                return False
            self.ci += len(chunk) - len(dec.unconsumed_tail) - len(dec.unused_data)
            if out:
                self.buf += out
                self.crc = _inflate.crc32(out, self.crc)
            if dec.eof:
                self._finish_member()
            if out:
                return True

    def _finish_member(self) -> None:
        trailer = self._peek_raw(8)
        u_end = self.end
        if len(trailer) < 8:
            self.errors.append(
                RecordError(self.m_cstart, f"gzip member at compressed offset {self.m_cstart} has a truncated trailer")
            )
        else:
            crc = int.from_bytes(trailer[:4], "little")
            size = int.from_bytes(trailer[4:], "little")
            if crc != self.crc or size != (u_end - self.m_ustart) & 0xFFFFFFFF:
                self.errors.append(
                    RecordError(
                        self.m_cstart,
                        f"gzip CRC/size mismatch in member at compressed offset {self.m_cstart}: "
                        "its records are yielded but may be corrupt",
                    )
                )
        self.ci += len(trailer)
        self.members.append((self.m_ustart, u_end, self.m_cstart, self.cpos))
        self.dec = None

    def _flush_truncated(self) -> None:
        out = self.dec.flush() if self.dec is not None else b""
        if out:
            self.buf += out
        self.errors.append(
            RecordError(
                self.m_cstart,
                f"truncated gzip member at compressed offset {self.m_cstart} (file ends inside it)",
            )
        )
        self.dec = None
        self.seg_done = True

    def _more_lz4(self) -> bool:
        import lz4.frame

        while True:
            if self.dec is None:
                head = self._peek_raw(4)
                if not head:
                    self.seg_done = True
                    return False
                if head != _LZ4_MAGIC:
                    self.errors.append(RecordError(self.cpos, f"data that is not an lz4 frame at offset {self.cpos}"))
                    self.damaged = True
                    self.seg_done = True
                    return False
                self.m_cstart, self.m_ustart = self.cpos, self.end
                self.dec = lz4.frame.LZ4FrameDecompressor()
            if self.ci >= len(self.cbuf):
                self._read_raw()
                if self.ci >= len(self.cbuf):
                    self.errors.append(RecordError(self.m_cstart, f"truncated lz4 frame at offset {self.m_cstart}"))
                    self.dec = None
                    self.seg_done = True
                    return False
            chunk = bytes(memoryview(self.cbuf)[self.ci : self.ci + _FEED])
            try:
                out = self.dec.decompress(chunk)
            except RuntimeError as exc:
                self.errors.append(RecordError(self.m_cstart, f"corrupt lz4 frame at offset {self.m_cstart}: {exc}"))
                self.ci += 1
                self.dec = None
                self.damaged = True
                self.seg_done = True
                return False
            used = len(chunk) - len(self.dec.unused_data or b"") if self.dec.eof else len(chunk)
            self.ci += used
            if out:
                self.buf += out
            if self.dec.eof:
                self.members.append((self.m_ustart, self.end, self.m_cstart, self.cpos))
                self.dec = None
            if out:
                return True

    def next_segment(self) -> bool:
        """After damage: find the next member header in the compressed bytes; False at EOF."""
        if self.codec == "plain" or not self.damaged:
            return False
        magic = _GZIP_MAGIC if self.codec == "gzip" else _LZ4_MAGIC
        start = self.cpos
        while True:
            i = self.cbuf.find(magic, self.ci)
            if i >= 0:
                self.ci = i
                break
            self.ci = max(self.ci, len(self.cbuf) - 3)
            if self.raw_eof:
                return False
            self._read_raw()
        self.errors.append(
            RecordError(start, f"skipped {self.cpos - start} damaged compressed bytes; resuming at offset {self.cpos}")
        )
        self.damaged = False
        self.seg_done = False
        # the new segment's bytes do not continue the old ones: drop what is left
        self.base = self.end
        self.buf = bytearray()
        self.rpos = 0
        return True

    # ---- decompressed side -----------------------------------------------------------------
    def fill(self, n: int) -> bool:
        """Make at least n bytes available from the read position; False if the segment ends first."""
        while len(self.buf) - self.rpos < n:
            if not self._more():
                return False
        return True

    def compact(self) -> None:
        if self.rpos > _COMPACT and self.rpos * 2 > len(self.buf):
            del self.buf[: self.rpos]
            self.base += self.rpos
            self.rpos = 0
            keep = [m for m in self.members if m[1] > self.base]
            if len(keep) != len(self.members):
                self.members = keep

    def discard(self, upto: int, anchor: int) -> None:
        """Forget the decoded bytes before ``upto`` (absolute), so that a drained block is never held whole.

        The member map keeps the member that holds ``anchor`` (the current record's start: its
        compressed offset comes from it) and those that end after ``upto``.
        """
        n = upto - self.base
        if n < _COMPACT:  # deleting in steps of at least 1 MiB keeps the copies few
            return
        del self.buf[:n]
        self.base = upto
        self.rpos = max(self.rpos - n, 0)
        self.members = [m for m in self.members if m[1] > upto or m[0] <= anchor < m[1]]

    def member_starts(self, start: int) -> list[int]:
        """Decompressed offsets of the member starts after ``start`` that are decoded and still held."""
        if self.codec == "plain":
            return []
        out = [m[0] for m in self.members if m[0] > start and m[0] >= self.base]
        if self.dec is not None and start < self.m_ustart < self.end:
            out.append(self.m_ustart)
        return out

    def span(self, start: int, end: int) -> tuple[int, int, int]:
        """Compressed (offset, length, inner_offset) for the decompressed range [start, end)."""
        if self.codec == "plain":
            return start, end - start, 0
        members = self.members
        while members and members[0][1] <= start:  # records come in file order: older members are done
            members.pop(0)
        first = last = None
        for m in members:
            if m[0] <= start < m[1]:
                first = m
            if m[0] < end <= m[1]:
                last = m
                break
        if first is None:  # the record starts in the member still being decompressed
            return self.m_cstart, self.cpos - self.m_cstart, start - self.m_ustart
        if first[0] == start and last is not None and last[1] == end:
            return first[2], last[3] - first[2], 0
        c_end = last[3] if last is not None else self.cpos
        return first[2], c_end - first[2], start - first[0]


def _parse_date(value: str) -> datetime | None:
    value = value.strip()
    if not value:
        return None
    try:
        if value.isdigit() and len(value) >= 14:  # ARC / WARC 0.17 style 14-digit date
            dt = datetime.strptime(value[:14], "%Y%m%d%H%M%S")
        else:
            dt = datetime.fromisoformat(value)
        if dt.tzinfo is None:
            return dt.replace(tzinfo=UTC)
        # OverflowError: 0001-01-01T00:00+01:00 or 9999-12-31T23:00-05:00 has no UTC datetime;
        # uncaught it would end the whole file as an "unexpected reader failure"
        return dt.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


_DIGITS = re.compile(rb"\d{1,18}")  # a length with more digits is beyond int64 and no length at all


def _parse_length(value: bytes) -> int | None:
    """A Content-Length / ARC length field -> int, None unless it is plain ASCII digits.

    int() alone would take '+5', '1_000', ' 7 ' and 5,000-digit numbers; none is a length a
    writer produced, so each is treated as a missing length (the block is then resynchronised).
    """
    value = value.strip()
    return int(value) if _DIGITS.fullmatch(value) else None


def _clean_uri(value: str) -> str | None:
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    return value or None


def _parse_arc_header(line: bytes) -> tuple[str, str, str, int] | None:
    """ARC v1/v2 header line -> (url, date, content_type, length), None if it is not one."""
    fields = line.rstrip(b"\r").split(b" ")
    if len(fields) < 5:
        return None
    length = _parse_length(fields[-1])
    if length is None:
        return None
    if fields[-3].isdigit() and len(fields[-3]) >= 12:  # v1: url ip date type length
        url_fields, date, ctype = fields[:-4], fields[-3], fields[-2]
    elif len(fields) >= 10 and fields[-8].isdigit() and len(fields[-8]) >= 12:  # v2
        url_fields, date, ctype = fields[:-9], fields[-8], fields[-7]
    else:
        return None
    if not url_fields or b":" not in url_fields[0]:
        return None
    url = b" ".join(url_fields).decode("utf-8", "replace")  # ARC URLs may hold spaces
    return url, date.decode("ascii", "replace"), ctype.decode("latin-1"), length


class _Reader:
    def __init__(self, stream: BinaryIO, want_types: set[str] | None, block_limit: BlockLimit | None) -> None:
        self.s = _Stream(stream)
        self.want = want_types
        self.limit = block_limit
        self.drain = block_limit is not None  # bytes read past what a record keeps are dropped at once
        self.anchor = 0  # where the record being read starts (its offset is computed from there)
        # (where the kept head ends, bytes the limit keeps): a Content-Length that is too short makes
        # the block longer than the head copied, and the search for its end holds the bytes after it
        self.hold: tuple[int, int] | None = None
        self.arc: bool | None = None  # decided by the first record

    def errors(self) -> Iterator[RecordError]:
        if self.s.errors:
            errs, self.s.errors = self.s.errors, []
            yield from errs

    def records(self) -> Iterator[ArchiveRecord | RecordError]:
        s = self.s
        while True:
            yield from self.errors()
            # skip separators / NUL padding
            while True:
                if not s.fill(1):
                    break
                buf = s.buf
                i = s.rpos
                n = len(buf)
                while i < n and buf[i] in _SKIPPABLE:
                    i += 1
                s.rpos = i
                if i < n:
                    break
            if len(s.buf) - s.rpos == 0:
                yield from self.errors()
                if s.next_segment():
                    continue
                return
            s.compact()
            s.fill(16)
            head = bytes(s.buf[s.rpos : s.rpos + 16])
            if head.startswith(b"WARC/"):
                if self.arc is None:
                    self.arc = False
                yield from self._warc()
            elif self.arc is not False and self._arc_line() is not None:
                self.arc = True
                yield from self._arc()
            else:
                yield from self._junk()

    # -- helpers on the decompressed buffer
    def _find_next_header(self, start: int, until: int | None = None) -> tuple[int | None, bool]:
        """Read on from ``start`` (absolute), looking for the first record header after it.

        until=None: up to the first header found -> (its position, False); (None, False) when there is
        none within _RESYNC_LIMIT bytes of ``start`` or before the end of the data.
        until=N (a block's declared end; only when draining): up to N whatever is found -> (the first
        header found after ``start`` in the bytes dropped on the way, whether the data reaches N).
        The bytes from that header on are kept so that a resync can start there, at most
        _RESYNC_LIMIT of them: a header that far before the declared end is taken for payload and
        the search goes on after it. When draining, every other byte read is dropped as soon as it
        has been searched; bytes still held are not searched here (a resync searches them).
        """
        s = self.s
        found, scanned, ended = None, start, False
        while True:
            if until is not None and (s.end >= until or ended):
                # what is still held is searched again if the block does not end at `until`
                return found, s.end >= until
            # a header line may straddle what is decoded so far: search up to _MAX_HEADER short of it
            to = s.end if ended else s.end - _MAX_HEADER
            if found is None and to > scanned:
                found = self._header_in(start, scanned, to)
                scanned = to
            if until is None:
                if found is not None or ended or s.end - start > _RESYNC_LIMIT:
                    return found, False
            elif found is not None and s.end - found > _RESYNC_LIMIT:
                scanned, found = max(found + 1, s.end - _RESYNC_LIMIT), None
                continue
            if self.drain:
                floor = found - 4 if found is not None else scanned - 16
                if until is None and self.hold is not None:
                    floor = min(floor, self.hold[0])
                s.discard(floor, self.anchor)
            ended = not s._more()

    def _header_in(self, start: int, frm: int, to: int) -> int | None:
        """The first record header starting in the decoded bytes [frm, to) after ``start`` (absolute).

        A gzip member start that begins with a header comes first: it is a record start in
        per-record files, even without a newline before it. Else the first header line: ``WARC/x.y``
        at a line start, or a complete, well-formed ARC header line.
        """
        s = self.s
        frm = max(frm, s.base)
        for u in s.member_starts(start):
            if frm <= u < to and self._header_at(u - s.base):
                return u
        buf, lo, hi = s.buf, frm - s.base, to - s.base
        if self.arc:
            for m in _ARC_SEARCH.finditer(buf, lo):
                if m.start() >= hi:
                    return None
                j = m.start() + 1
                nl = buf.find(b"\n", j, j + _MAX_HEADER)
                if nl >= 0 and _parse_arc_header(bytes(buf[j:nl])) is not None:
                    return s.base + j
            return None
        i = lo
        while True:  # bytes.find, not a regex: a drained block of hundreds of MiB is searched at memchr speed
            j = buf.find(b"WARC/", i, hi + 5)
            if j < 0 or j >= hi:
                return None
            if (j == 0 or buf[j - 1] == 0x0A) and _WARC_LINE.match(buf, j):
                return s.base + j
            i = j + 1

    def _header_at(self, i: int) -> bool:
        s = self.s
        if self.arc:
            nl = s.buf.find(b"\n", i, i + _MAX_HEADER)
            return nl >= 0 and _parse_arc_header(bytes(s.buf[i:nl])) is not None
        return _WARC_LINE.match(s.buf, i) is not None

    def _arc_line(self) -> tuple[str, str, str, int] | None:
        s = self.s
        nl = s.buf.find(b"\n", s.rpos, s.rpos + _MAX_HEADER)
        while nl < 0 and len(s.buf) - s.rpos < _MAX_HEADER and s._more():
            nl = s.buf.find(b"\n", s.rpos, s.rpos + _MAX_HEADER)
        if nl < 0:
            return None
        return _parse_arc_header(bytes(s.buf[s.rpos : nl]))

    def _junk(self) -> Iterator[RecordError]:
        s = self.s
        start = s.pos
        coff = s.span(start, start + 1)[0]
        preview = bytes(s.buf[s.rpos : s.rpos + 40])
        self.anchor, self.hold = start, None
        nxt, _ = self._find_next_header(start + 1)
        if nxt is None:
            # nothing readable up to the end of the segment: skip it all
            while s._more():
                s.rpos = len(s.buf)
                s.compact()
            end = s.end
            s.rpos = len(s.buf)
            yield RecordError(
                coff, f"{end - start} bytes that are not a record header ({preview!r}...) up to the end of data"
            )
            return
        s.rpos = nxt - s.base
        yield RecordError(coff, f"skipped {nxt - start} bytes that are not a record header ({preview!r}...)")

    def _after_block(self, block_end: int) -> tuple[bool, int]:
        """Is the next record (or the end) right after block_end? Returns (ok, next_pos)."""
        s = self.s
        i = block_end - s.base
        while True:
            if i >= len(s.buf) and not s.fill(i - s.rpos + 1):
                return True, s.end  # end of segment
            b = s.buf[i]
            if b in _SKIPPABLE:
                i += 1
                continue
            break
        s.fill(i - s.rpos + 16)
        if s.base + i in s.member_starts(block_end - 1):
            # the declared length ends where a gzip member ends: trust it even if the next header is damaged
            return True, s.base + i
        if self.arc:
            nl = s.buf.find(b"\n", i, i + _MAX_HEADER)
            while nl < 0 and len(s.buf) - i < _MAX_HEADER and s._more():
                nl = s.buf.find(b"\n", i, i + _MAX_HEADER)
            ok = nl >= 0 and _parse_arc_header(bytes(s.buf[i:nl])) is not None
        else:
            ok = _WARC_LINE.match(s.buf, i) is not None
        return ok, s.base + i

    def _head(self, rtype: str, ctype: str, block_start: int, declared: int | None) -> bytes | None:
        """With a block_limit: the first bytes of the block that the limit keeps (None without one).

        The limit sees the record type, its Content-Type and up to _MAX_HEADER first bytes of the
        block (enough for an HTTP header); what it does not keep is drained by _block_bounds.
        """
        if self.limit is None:
            return None
        s = self.s
        peek_n = _MAX_HEADER if declared is None else min(_MAX_HEADER, declared)
        s.fill(block_start + peek_n - s.pos)
        lo = block_start - s.base
        peek = bytes(s.buf[lo : lo + peek_n])
        keep = max(0, int(self.limit(rtype, ctype, peek)))
        # without a length the block ends at the next header, searched for up to _RESYNC_LIMIT bytes on
        want = min(keep, _RESYNC_LIMIT if declared is None else declared)
        if want <= len(peek):
            head = peek[:want]
        else:
            s.fill(block_start + want - s.pos)
            head = bytes(s.buf[lo : lo + want])
        # a head shorter than the limit (a Content-Length that may be too short) may need the bytes after it
        self.hold = (block_start + len(head), keep) if keep > len(head) else None
        return head

    def _block_bounds(self, block_start: int, declared: int | None, what: str) -> tuple[int, int, list[str]]:
        """Decide where the block really ends: (block_end, next_pos, error messages)."""
        s = self.s
        errors: list[str] = []
        found = None
        if declared is not None:
            block_end = block_start + declared
            if self.drain:
                found, have = self._find_next_header(block_start, block_end)
            else:
                have = s.fill(block_end - s.pos)
            if have:
                ok, nxt = self._after_block(block_end)
                if ok:
                    return block_end, nxt, errors
        # wrong or missing length: the block runs up to the next header (or the end of the data)
        nxt = found if found is not None else self._find_next_header(block_start)[0]
        if nxt is None:
            end = s.end
            # the data ends inside the record: keep what is there
            if declared is not None and block_start + declared > end and end - block_start <= _RESYNC_LIMIT:
                errors.append(f"truncated {what}: {declared} block bytes declared, only {end - block_start} present")
                return end, end, errors
            nxt = end
        cut = nxt - s.base
        lo = max(block_start - s.base, 0)
        k = 0
        while cut > lo and k < 4 and s.buf[cut - 1] in b"\r\n":  # the separator is not part of the block
            cut -= 1
            k += 1
        block_end = s.base + cut
        if declared is None:
            errors.append(f"{what} without a valid Content-Length: block taken up to the next record")
        else:
            errors.append(
                f"{what}: Content-Length {declared} does not match the data; block resynchronised to "
                f"{block_end - block_start} bytes"
            )
        return block_end, nxt, errors

    def _block(self, head: bytes | None, block_start: int, block_end: int) -> bytes:
        """The block as the record carries it: the kept head (cut at the block's end), or the whole block."""
        s = self.s
        if head is None:
            return bytes(s.buf[block_start - s.base : block_end - s.base])
        if self.hold is None:
            return head[: block_end - block_start]
        held, keep = self.hold
        end = min(block_end, block_start + keep)
        if end <= held or held < s.base:
            return head[: block_end - block_start]
        return head + bytes(s.buf[held - s.base : end - s.base])  # the block ran past its Content-Length

    def _warc(self) -> Iterator[ArchiveRecord | RecordError]:
        s = self.s
        start = s.pos
        m = _HEADER_END.search(s.buf, s.rpos, s.rpos + _MAX_HEADER)
        while m is None and len(s.buf) - s.rpos < _MAX_HEADER and s._more():
            m = _HEADER_END.search(s.buf, s.rpos, s.rpos + _MAX_HEADER)
        if m is None:
            coff = s.span(start, start + 1)[0]
            if len(s.buf) - s.rpos < _MAX_HEADER:  # the data ends inside the header
                s.rpos = len(s.buf)
                yield RecordError(coff, "truncated WARC header at the end of the data: record skipped")
            else:
                s.rpos += 1
                yield RecordError(coff, "WARC header without an end (no blank line): record skipped")
            return
        lines = bytes(s.buf[s.rpos : m.start()]).split(b"\n")
        block_start = s.base + m.end()
        fields: dict[bytes, bytes] = {}
        name = b""
        for raw in lines[1:]:
            line = raw.rstrip(b"\r")
            if line[:1] in (b" ", b"\t") and name:  # folded continuation line
                fields[name] += b" " + line.strip()
                continue
            key, sep, value = line.partition(b":")
            if sep:
                name = key.strip().lower()
                fields.setdefault(name, value.strip())
        rtype = fields.get(b"warc-type", b"").decode("latin-1").lower() or "unknown"
        ctype = fields.get(b"content-type", b"").decode("latin-1")
        declared = _parse_length(fields.get(b"content-length", b""))
        wanted = self.want is None or rtype in self.want
        self.anchor, self.hold = start, None
        head = self._head(rtype, ctype, block_start, declared) if wanted else b""
        block_end, nxt, errors = self._block_bounds(block_start, declared, f"{rtype} record")
        span = s.span(start, nxt)
        if wanted:
            uri = fields.get(b"warc-target-uri")
            yield ArchiveRecord(
                rtype,
                _clean_uri(uri.decode("utf-8", "replace")) if uri is not None else None,
                _parse_date(fields.get(b"warc-date", b"").decode("latin-1")),
                *span[:2], ctype, self._block(head, block_start, block_end), span[2], block_end - block_start,
            )
        for msg in errors:
            yield RecordError(span[0], msg)
        s.rpos = nxt - s.base

    def _arc(self) -> Iterator[ArchiveRecord | RecordError]:
        s = self.s
        start = s.pos
        nl = s.buf.find(b"\n", s.rpos)
        url, date, ctype, declared = _parse_arc_header(bytes(s.buf[s.rpos : nl]))
        block_start = s.base + nl + 1
        s.fill(block_start + min(declared, 5) - s.pos)
        lo = block_start - s.base
        if url.startswith("filedesc:"):
            rtype = "warcinfo"
        elif s.buf[lo : lo + min(declared, 5)] == b"HTTP/":
            rtype = "response"
        else:
            rtype = "resource"
        wanted = self.want is None or rtype in self.want
        self.anchor, self.hold = start, None
        head = self._head(rtype, ctype, block_start, declared) if wanted else b""
        block_end, nxt, errors = self._block_bounds(block_start, declared, "ARC record")
        span = s.span(start, nxt)
        if wanted:
            yield ArchiveRecord(rtype, url or None, _parse_date(date), *span[:2], ctype,
                                self._block(head, block_start, block_end), span[2], block_end - block_start)
        for msg in errors:
            yield RecordError(span[0], msg)
        s.rpos = nxt - s.base


def iter_archive(
    stream: BinaryIO, source_uri: str, want_types: set[str] | None = None, block_limit: BlockLimit | None = None,
) -> Iterator[ArchiveRecord | RecordError]:
    """Yield the records of one WARC/ARC file, and RecordErrors for what cannot be read.

    ``want_types`` (lower-case record types) skips the other records without copying their blocks:
    they are not yielded at all. ``block_limit(record_type, content_type, first_bytes) -> n``
    keeps the first n bytes of each block (``first_bytes``: up to 64 KiB of it, enough for an HTTP
    header) and drains the rest, so that memory is bounded by what the limit keeps, never by the
    input; ``ArchiveRecord.block_length`` still gives the whole block's length. Without it every
    block is held whole. ``source_uri`` only labels log messages. Never raises on bad input; see
    the module docstring for offsets and the tolerance rules.
    """
    reader = _Reader(stream, want_types, block_limit)
    n_err = 0
    try:
        for item in reader.records():
            if isinstance(item, RecordError):
                n_err += 1
            yield item
        yield from reader.errors()
    except Exception as exc:  # a reader bug must not kill the Spark task: one error row instead
        logger.exception("unexpected failure reading %s", source_uri)
        yield RecordError(reader.s.pos, f"unexpected reader failure: {type(exc).__name__}: {exc}", ends_file=True)
    if n_err:
        logger.info("%s: %d record errors", source_uri, n_err)
