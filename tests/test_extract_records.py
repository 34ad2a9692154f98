"""iter_archive on generated WARCs (offsets checked by re-reading byte ranges) and on every corpora file."""

from __future__ import annotations

import gzip
import io
import re
import zlib
from collections import Counter
from datetime import UTC, datetime

import pytest
from corpora import require, warc_facts
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from laion_spark.extract.records import ArchiveRecord, RecordError, iter_archive

PAGES = [(f"http://example.com/p{i}", f"<html><img src='a{i}.jpg' alt='pic {i}'></html>" * (i + 1)) for i in range(5)]


def _make_warc(gz: bool) -> bytes:
    out = io.BytesIO()
    writer = WARCWriter(out, gzip=gz)
    writer.write_record(writer.create_warcinfo_record("gen.warc", {"software": "test"}))
    for url, html in PAGES:
        http = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
        rec = writer.create_warc_record(url, "response", payload=io.BytesIO(html.encode()), http_headers=http)
        writer.write_record(rec)
    return out.getvalue()


class _NonSeekable(io.RawIOBase):
    """A stream that only reads forward, in small pieces, like an HTTP body."""

    def __init__(self, data: bytes, piece: int = 777) -> None:
        self._data, self._pos, self._piece = data, 0, piece

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._piece if n < 0 else min(n, self._piece)
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk


def _read_all(data: bytes, **kw) -> list[ArchiveRecord | RecordError]:
    return list(iter_archive(_NonSeekable(data), "test", **kw))


@pytest.mark.parametrize("gz", [True, False])
def test_generated_offsets_reread_alone(gz: bool) -> None:
    data = _make_warc(gz)
    items = _read_all(data)
    assert not [i for i in items if isinstance(i, RecordError)]
    responses = [i for i in items if i.record_type == "response"]
    assert [r.target_uri for r in responses] == [u for u, _ in PAGES]
    assert [i.record_type for i in items][0] == "warcinfo"
    for rec in items:
        piece = data[rec.offset : rec.offset + rec.length]
        if gz:
            assert gzip.decompress(piece).startswith(b"WARC/1.0")  # exactly one whole member
        alone = _read_all(piece)
        assert len(alone) == 1 and isinstance(alone[0], ArchiveRecord)
        assert alone[0].block == rec.block and alone[0].record_type == rec.record_type
        assert alone[0].offset == 0 and alone[0].length == rec.length
    # records tile the file: each one starts where the previous one ended
    assert [r.offset for r in items[1:]] == [r.offset + r.length for r in items[:-1]]
    assert items[-1].offset + items[-1].length == len(data)
    body = responses[2].block
    assert body.startswith(b"HTTP/1.1 200 OK") and body.endswith(PAGES[2][1].encode())
    assert responses[0].date is not None and responses[0].date.tzinfo is UTC
    assert responses[0].content_type == "application/http; msgtype=response"


def test_want_types_skips_others() -> None:
    items = _read_all(_make_warc(True), want_types={"response"})
    assert [i.record_type for i in items] == ["response"] * len(PAGES)


def test_whole_file_gzip_inner_offsets() -> None:
    plain = _make_warc(False)
    data = gzip.compress(plain)  # one member for the whole file
    items = _read_all(data)
    assert not [i for i in items if isinstance(i, RecordError)]
    assert [i.block for i in items] == [i.block for i in _read_all(plain)]
    plain_offsets = [i.offset for i in _read_all(plain)]
    for rec, plain_offset in zip(items, plain_offsets, strict=True):
        assert rec.offset == 0  # the only member
        assert rec.inner_offset == plain_offset
        # streaming gunzip of the range yields the record at inner_offset
        out = zlib.decompressobj(31).decompress(data[rec.offset : rec.offset + rec.length])
        assert out[rec.inner_offset :].startswith(b"WARC/1.0")
        assert rec.block in out[rec.inner_offset :]


def test_tolerates_lf_missing_separators_junk_nul_and_wrong_length() -> None:
    rec = (
        b"WARC/1.0\nWARC-Type: response\nWARC-Target-URI: <http://a.b/x y>\n"
        b"WARC-Date: 2009-03-67T15:35:34-0700\nContent-Length: 5\n\nHELLO"
    )
    rec2 = (
        b"WARC/1.0\r\nWARC-Type: resource\r\nWARC-Date: 2020-01-02T03:04:05+01:00\r\n"
        b"Content-Length: 99\r\n\r\nshort\r\n\r\n"
    )
    rec3 = b"WARC/1.1\r\nWARC-Type: metadata\r\nContent-Length: 2\r\n\r\nok\r\n\r\n"
    data = rec + rec + b"\x00\x00\r\n" + b"garbage here\n" + rec2 + rec3
    items = _read_all(data)
    records = [i for i in items if isinstance(i, ArchiveRecord)]
    errors = [i for i in items if isinstance(i, RecordError)]
    assert [r.record_type for r in records] == ["response", "response", "resource", "metadata"]
    assert records[0].target_uri == "http://a.b/x y" and records[0].date is None
    assert records[0].block == b"HELLO"
    assert records[2].block == b"short"  # Content-Length 99 was wrong: cut at the next header
    assert records[2].date == datetime(2020, 1, 2, 2, 4, 5, tzinfo=UTC)
    assert records[3].block == b"ok"
    # junk after a record is taken as a too-short Content-Length: block extended, with an error
    assert records[1].block.startswith(b"HELLO") and b"garbage here" in records[1].block
    assert any("Content-Length 5 does not match" in e.error for e in errors)
    assert any("Content-Length 99" in e.error for e in errors)
    # junk before the first record is skipped with an error
    items = _read_all(b"garbage\n" + rec3)
    assert isinstance(items[0], RecordError) and "not a record header" in items[0].error
    assert isinstance(items[1], ArchiveRecord) and items[1].block == b"ok"


def test_truncated_gzip_and_corrupt_member() -> None:
    data = _make_warc(True)
    items = _read_all(data)
    cut = data[: items[3].offset + items[3].length // 2]
    got = _read_all(cut)
    assert [i.record_type for i in got if isinstance(i, ArchiveRecord)][:3] == ["warcinfo", "response", "response"]
    assert any("truncated" in e.error for e in got if isinstance(e, RecordError))
    # damage the deflate data of record 2: record 2 is lost (with errors), the others survive
    bad = bytearray(data)
    mid = items[2].offset + 20
    bad[mid : mid + 8] = b"\xff" * 8
    got = _read_all(bytes(bad))
    uris = [i.target_uri for i in got if isinstance(i, ArchiveRecord) and i.record_type == "response"]
    assert PAGES[0][0] in uris and PAGES[4][0] in uris
    assert any(isinstance(i, RecordError) for i in got)


def _with_member_header(member: bytes, flags: int, extra: bytes) -> bytes:
    """The same deflate data and trailer behind a gzip header with other flags and optional fields."""
    return member[:3] + bytes([flags]) + member[4:10] + extra + member[10:]


@pytest.mark.parametrize("damage", ["name without its NUL", "truncated header", "extra field past the end"])
def test_damaged_member_header_is_stepped_over(damage: str) -> None:
    # found by tests/test_extract_fuzz.py: resync after a bad header at a gzip magic found the same magic
    # again, for ever; one damaged header must cost its member only
    data = _make_warc(True)
    items = _read_all(data)
    starts = [i.offset for i in items if isinstance(i, ArchiveRecord)] + [len(data)]
    member = data[starts[2] : starts[3]]
    if damage == "name without its NUL":
        bad = member[:3] + bytes([member[3] | 8]) + member[4:10] + b"x" * 20000  # FNAME never ends
    elif damage == "truncated header":
        bad = member[:6]
    else:
        bad = member[:3] + bytes([member[3] | 4]) + member[4:10] + b"\xff\xff" + b"y" * 100  # 64 KiB declared
    got = _read_all(data[: starts[2]] + bad + data[starts[3] :])
    uris = [i.target_uri for i in got if isinstance(i, ArchiveRecord) and i.record_type == "response"]
    assert uris == [PAGES[0][0]] + [url for url, _ in PAGES[2:]]
    assert [e.offset for e in got if isinstance(e, RecordError)][0] == starts[2]  # the error names the member


def test_gzip_member_with_a_64k_extra_field_is_read() -> None:
    # RFC 1952 allows FEXTRA up to 65535 bytes; such a member is valid and its record must be read
    data = _make_warc(True)
    items = _read_all(data)
    starts = [i.offset for i in items if isinstance(i, ArchiveRecord)] + [len(data)]
    member = data[starts[2] : starts[3]]
    big = _with_member_header(member, member[3] | 4, (60000).to_bytes(2, "little") + b"z" * 60000)
    got = _read_all(data[: starts[2]] + big + data[starts[3] :])
    assert not [e.error for e in got if isinstance(e, RecordError)]
    assert [i.target_uri for i in got if isinstance(i, ArchiveRecord) and i.record_type == "response"] == [
        url for url, _ in PAGES
    ]


def test_io_error_becomes_record_error() -> None:
    class Failing(_NonSeekable):
        def read(self, n: int = -1) -> bytes:
            if self._pos > 1000:
                raise OSError("connection reset by peer")
            return super().read(n)

    items = list(iter_archive(Failing(_make_warc(False)), "x"))
    errors = [i.error for i in items if isinstance(i, RecordError)]
    assert any("I/O error" in e and "connection reset" in e for e in errors), errors
    assert [i.record_type for i in items if isinstance(i, ArchiveRecord)][:2] == ["warcinfo", "response"]


# ---- every real file in the corpora -----------------------------------------------------------

# Files whose response count legitimately differs from WARC_FACTS.tsv's record_types column:
EXPECTED_RESPONSES = {
    # the facts walker could not parse it (every line ends in "\r\r\n"); it holds one response
    "warc/pywb/missing-status-text.warc": 1,
    # the facts script counts lz4 frames only: the file is warcfile.warc.gz's 50 records, one LZ4 frame
    # each (FastWARC's LZ4 WARCs); test_lz4_file_is_its_gzip_twin checks every record
    "warc/resiliparse/warcfile.warc.lz4": 16,
    # hand-damaged ARC: a duplicated record header is read as a third (HTTP) response record
    "warc/aut/badexample.arc.gz": 3,
    # bad CRCs + corrupt deflate: 4 HTTP records + 1 image survive (the facts list 4 HTTP 200 plus
    # records whose headers are damaged: ARC dates like "200602q5203613" cannot be parsed)
    "warc/webarchive-commons/cz-pagesinczech.arc.gz": 5,
}


def _expected_responses(row: dict[str, str]) -> int:
    types = dict(kv.split("=") for kv in row["record_types"].split()) if row["record_types"] else {}
    if row["format_versions"].startswith("ARC"):
        # ARC records have no type: an ARC "response" is a record holding an HTTP message
        return sum(int(kv.split("=")[1]) for kv in row["http_status"].split()) if row["http_status"] else 0
    return int(types.get("response", 0))


def _corpora_files() -> list[str]:
    try:
        return sorted(warc_facts())
    except BaseException:  # noqa: BLE001  (corpora absent: the test below skips with the reason)
        return ["<corpora absent>"]


@pytest.mark.parametrize("rel", _corpora_files())
def test_corpora_file(rel: str) -> None:
    facts = warc_facts()
    row = facts[rel]
    with (require() / rel).open("rb") as handle:
        items = list(iter_archive(handle, rel))
    records = [i for i in items if isinstance(i, ArchiveRecord)]
    errors = [i for i in items if isinstance(i, RecordError)]
    counts = Counter(r.record_type for r in records)
    expected = EXPECTED_RESPONSES.get(rel, _expected_responses(row))
    assert counts["response"] == expected, (counts, [e.error for e in errors])
    if row["compression"] == "gzip members=1" and "TRUNCATED" not in row["compression"]:
        # whole-file gzip is read in full: as many records as the facts list (when they list any)
        total = sum(int(kv.split("=")[1]) for kv in row["record_types"].split())
        if rel not in EXPECTED_RESPONSES and not row["parse_errors"]:
            assert len(records) == total, (counts, [e.error for e in errors])


def test_clueweb09_samples() -> None:
    for name in ("ClueWeb09_English_Sample.warc", "ClueWeb09_Chinese_Sample.warc"):
        with (require("warc/freequery-clueweb09") / name).open("rb") as handle:
            items = list(iter_archive(handle, name))
        responses = [i for i in items if isinstance(i, ArchiveRecord) and i.record_type == "response"]
        assert len(responses) == 100
        assert not [i for i in items if isinstance(i, RecordError)]
        assert all(r.block.startswith(b"HTTP/") for r in responses)
        assert responses[0].date is None  # "2009-03-67T15:35:34-0700" is no date


def _inflated_members(data: bytes) -> list[tuple[int, bytes]]:
    """Independent oracle: every gzip member start (magic + deflate method) whose raw deflate stream
    inflates to its end, CRC not checked -> [(compressed offset, inflated bytes)]."""
    out = []
    for m in re.finditer(b"\x1f\x8b\x08", data):
        start, flags = m.start(), data[m.start() + 3]
        n = start + 10
        if flags & 4:
            n += 2 + int.from_bytes(data[n : n + 2], "little")
        for bit in (8, 16):
            if flags & bit:
                n = data.index(b"\x00", n) + 1
        dec = zlib.decompressobj(-15)
        try:
            body = dec.decompress(data[n:])
        except zlib.error:
            continue
        if dec.eof:
            out.append((start, body))
    return out


def test_damaged_arc_keeps_every_member_that_inflates() -> None:
    # 7 of 9 members fail their CRC, two have mangled deflate data (corpora README): the records are
    # those of the members that inflate and begin with a well-formed ARC header line (URL, IP,
    # 14-digit date, type, length; two members have dates like 200602q5203613 and are no records)
    name = "webarchive-commons/cz-pagesinczech.arc.gz"
    data = (require("warc") / name).read_bytes()
    header = re.compile(rb"(\S+) \S+ \d{14} \S+ \d+\n")
    want = [(off, m.group(1).decode()) for off, body in _inflated_members(data) if (m := header.match(body))]
    assert len(want) >= 6
    items = list(iter_archive(io.BytesIO(data), name))
    got = [(i.offset, i.target_uri) for i in items if isinstance(i, ArchiveRecord)]
    assert got == want
    errors = [i.error for i in items if isinstance(i, RecordError)]
    assert sum("CRC" in e for e in errors) == 7 and sum("corrupt deflate" in e for e in errors) == 2


def test_truncated_member_keeps_its_record_with_what_inflates() -> None:
    name = "resiliparse/clipped.warc.gz"
    data = (require("warc") / name).read_bytes()
    with pytest.raises(EOFError):
        gzip.decompress(data)
    dec = zlib.decompressobj(31)
    inflated = dec.decompress(data)  # everything the truncated member gives
    head, _, block = inflated.partition(b"\r\n\r\n")
    uri = re.search(rb"WARC-Target-URI: (\S+)", head).group(1).decode()
    items = list(iter_archive(io.BytesIO(data), name))
    records = [i for i in items if isinstance(i, ArchiveRecord)]
    assert [(r.record_type, r.target_uri) for r in records] == [("response", uri)]
    assert records[0].block == block
    errors = [i.error for i in items if isinstance(i, RecordError)]
    assert any("truncated response record" in e for e in errors) and any("truncated gzip" in e for e in errors)


def _lz4_frames(data: bytes) -> list[bytes]:
    """Independent oracle: the lz4 package's decoding of each frame of a file."""
    import lz4.frame  # a test dependency (setup.py's "test" extra): the LZ4 path must run in CI

    out = []
    while data:
        dec = lz4.frame.LZ4FrameDecompressor()
        out.append(dec.decompress(data))
        data = dec.unused_data
    return out


def test_lz4_file_is_its_gzip_twin() -> None:
    """FastWARC's LZ4 WARC (one frame per record) gives the records of the same crawl in gzip, and each
    record's byte range is exactly its frame (it decodes alone to that record)."""
    root = require("warc/resiliparse")
    data = (root / "warcfile.warc.lz4").read_bytes()
    lz4_items = _read_all(data)
    gz_items = _read_all((root / "warcfile.warc.gz").read_bytes())
    assert not [i.error for i in lz4_items if isinstance(i, RecordError)]
    assert [(r.record_type, r.target_uri, r.date, r.block) for r in lz4_items] == [
        (r.record_type, r.target_uri, r.date, r.block) for r in gz_items]
    frames = _lz4_frames(data)
    assert len(frames) == len(lz4_items) == 50
    for rec, frame in zip(lz4_items, frames, strict=True):
        (alone,) = _lz4_frames(data[rec.offset : rec.offset + rec.length])
        assert alone == frame and alone.startswith(b"WARC/1.0") and rec.block in alone
    assert [r.offset for r in lz4_items[1:]] == [r.offset + r.length for r in lz4_items[:-1]]


def test_generated_lz4_per_record_and_cut() -> None:
    import lz4.frame

    plain_items = _read_all(_make_warc(False))
    plain = _make_warc(False)
    bounds = [(r.offset, r.offset + r.length) for r in plain_items]
    data = b"".join(lz4.frame.compress(plain[a:b]) for a, b in bounds)
    items = _read_all(data)
    assert [(r.record_type, r.block) for r in items] == [(r.record_type, r.block) for r in plain_items]
    # a file cut inside a frame keeps the records before it, and says so
    cut = _read_all(data[: items[3].offset + items[3].length // 2])
    assert [i.block for i in cut if isinstance(i, ArchiveRecord)][:3] == [r.block for r in plain_items[:3]]
    assert any("truncated lz4 frame" in e.error for e in cut if isinstance(e, RecordError))


def test_corpora_gzip_offsets_reread() -> None:
    """Per-record gzip files: each record's byte range parses alone to the same record."""
    path = require("warc") / "dolma/sample-0000.warc.gz"
    data = path.read_bytes()
    items = _read_all(data)
    for rec in items:
        assert rec.inner_offset == 0
        alone = _read_all(data[rec.offset : rec.offset + rec.length])
        assert len(alone) == 1 and alone[0].block == rec.block
    assert items[0].target_uri is not None or items[0].record_type == "warcinfo"
    assert all(not (r.target_uri or "").startswith("<") for r in items)  # angle brackets stripped
