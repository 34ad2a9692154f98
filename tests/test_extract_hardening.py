"""Input values that meet a conversion (dates, lengths, UTF-8, Arrow types) must cost a value, never the job.

Each case is checked in the row logic (process_file, no Spark) and, where the conversion is the
Arrow/pandas one of mapInPandas, through Spark too; expectations are written out by hand.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest
from pyspark.sql import functions as F
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from laion_spark import schemas as S
from laion_spark.config import ExtractConfig
from laion_spark.extract.http import parse_http_response
from laion_spark.extract.process import process_file
from laion_spark.extract.records import ArchiveRecord, RecordError, iter_archive
from laion_spark.extract.transform import extract_candidates

ALT = "A photograph of a lighthouse on the coast"

# (WARC-Date as written, crawl_time expected); the page of record i is http://example.com/<i>
DATES = [
    ("2024-05-18T01:02:03Z", datetime(2024, 5, 18, 1, 2, 3, tzinfo=UTC)),
    ("9999-12-31T00:00:00Z", None),  # pandas datetime64[ns] ends in 2262
    ("0001-01-01T00:00:00Z", None),  # ... and starts in 1677
    ("9999-12-31T23:00:00-05:00", None),  # no UTC datetime at all (OverflowError)
    ("0001-01-01T00:30:00+01:00", None),  # the same below year 1
    ("2262-04-12T00:00:00Z", None),  # one day past datetime64[ns]
    ("1677-09-21T00:00:00Z", None),  # one day before it
    ("2262-04-10T12:00:00Z", datetime(2262, 4, 10, 12, tzinfo=UTC)),  # still representable
    ("1999-13-45T99:00:00Z", None),  # no date at all
    ("2020-01-02T03:04:05Z", datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)),  # after the odd ones: read too
]


def _page(i: int) -> bytes:
    return f"<html><body><img src='/img/{i}.jpg' alt='{ALT} {i}'></body></html>".encode()


def _write_warc(path, dates: list[str]) -> None:
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for i, date in enumerate(dates):
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
            rec = writer.create_warc_record(f"http://example.com/{i}", "response", payload=io.BytesIO(_page(i)),
                                            http_headers=http, warc_headers_dict={"WARC-Date": date})
            writer.write_record(rec)


def _wat_record(page: str, images: list[dict]) -> bytes:
    doc = {"Envelope": {
        "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": page},
        "Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": {"Links": images}}},
    }}
    return json.dumps(doc).encode()  # ensure_ascii: a lone surrogate is written as a \\udXXX escape


def _write_wat(path, blocks: list[tuple[str, bytes]]) -> None:
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for uri, block in blocks:
            rec = writer.create_warc_record(uri, "metadata", payload=io.BytesIO(block),
                                            warc_content_type="application/json",
                                            warc_headers_dict={"WARC-Date": "2024-05-18T01:02:03Z"})
            writer.write_record(rec)


@pytest.fixture()
def dated_warc(tmp_path):
    path = tmp_path / "dates.warc.gz"
    _write_warc(path, [d for d, _ in DATES])
    return path


@pytest.fixture()
def surrogate_wat(tmp_path):
    path = tmp_path / "surrogates.warc.wat.gz"
    _write_wat(path, [
        ("http://example.com/s", _wat_record("http://example.com/s", [
            {"path": "IMG@/src", "url": "/a.jpg", "alt": "broken \ud800 pair in the alt text"},
            {"path": "IMG@/src", "url": "/b\udfff.jpg", "alt": "a lone low surrogate in the URL"},
            {"path": "IMG@/src", "url": "/c.jpg", "alt": "a proper pair \ud83d\ude00 stays one emoji"},
        ])),
        ("http://example.com/t", _wat_record("http://example.com/t\udc80", [
            {"path": "IMG@/src", "url": "/d.jpg", "alt": "page URL with a surrogate"},
        ])),
    ])
    return path


# the candidates the surrogate WAT gives: (url, text, page_url); '%EF%BF%BD' nowhere: the URL is
# not re-encoded by extract, U+FFFD is stored as a character
SURROGATE_CANDIDATES = [
    ("http://example.com/a.jpg", "broken \ufffd pair in the alt text", "http://example.com/s"),
    ("http://example.com/b\ufffd.jpg", "a lone low surrogate in the URL", "http://example.com/s"),
    ("http://example.com/c.jpg", "a proper pair \U0001f600 stays one emoji", "http://example.com/s"),
    ("http://example.com/d.jpg", "page URL with a surrogate", "http://example.com/t\ufffd"),
]


def _rows(path) -> dict[str, list]:
    out: dict[str, list] = {"candidate": [], "error": [], "stats": []}
    for row in process_file(str(path), ExtractConfig()):
        out[row.kind].append(row)
    return out


def test_out_of_range_dates_give_null_crawl_time_rows(dated_warc) -> None:
    rows = _rows(dated_warc)
    assert rows["error"] == []
    got = [(r.page_url, r.url, r.text, r.crawl_time) for r in rows["candidate"]]
    assert got == [(f"http://example.com/{i}", f"http://example.com/img/{i}.jpg", f"{ALT} {i}", want)
                   for i, (_, want) in enumerate(DATES)]
    assert json.loads(rows["stats"][0].counts)["candidates"] == len(DATES)


def test_out_of_range_dates_through_spark(spark, dated_warc) -> None:
    paths = spark.createDataFrame([(str(dated_warc),)], f"{S.SOURCE_URI} string")
    out = extract_candidates(paths, ExtractConfig())
    got = sorted((r.page_url, r.crawl_time) for r in out.candidates.select(S.PAGE_URL, S.CRAWL_TIME).collect())
    # the session time zone is UTC (conftest): collected timestamps are naive UTC
    want = sorted((f"http://example.com/{i}", w.replace(tzinfo=None) if w else None) for i, (_, w) in enumerate(DATES))
    assert got == want
    assert out.errors.count() == 0


def test_lone_surrogates_become_replacement_characters(surrogate_wat) -> None:
    rows = _rows(surrogate_wat)
    assert rows["error"] == []
    assert [(r.url, r.text, r.page_url) for r in rows["candidate"]] == SURROGATE_CANDIDATES
    for r in rows["candidate"]:
        for value in (r.url, r.text, r.page_url):
            value.encode("utf-8")  # what Arrow does; raised UnicodeEncodeError before
    assert all(r.language and r.language_prob is not None for r in rows["candidate"])  # CLD3 ran on each


def test_lone_surrogates_through_spark(spark, surrogate_wat, dated_warc) -> None:
    # one partition for both files: the surrogate rows used to fail the batch that also held the others
    paths = spark.createDataFrame([(0, str(surrogate_wat)), (0, str(dated_warc))], f"task int, {S.SOURCE_URI} string")
    out = extract_candidates(paths, ExtractConfig(), num_partitions=1)
    got = (out.candidates.filter(F.col(S.SOURCE_URI) == str(surrogate_wat))
           .select(S.URL, S.TEXT, S.PAGE_URL).collect())
    assert sorted(tuple(r) for r in got) == sorted(SURROGATE_CANDIDATES)
    assert out.candidates.filter(F.col(S.SOURCE_URI) == str(dated_warc)).count() == len(DATES)


def _plain_record(rtype: str, length: bytes, block: bytes) -> bytes:
    head = b"WARC/1.0\r\nWARC-Type: " + rtype.encode() + b"\r\nContent-Length: " + length
    return head + b"\r\n\r\n" + block + b"\r\n\r\n"


@pytest.mark.parametrize("length", [b"+2", b"1_0", b"-2", b" 0x2", b"9" * 30, b"9" * 5000, b"\xd9\xa3"])
def test_content_length_that_is_no_length_is_resynchronised(length) -> None:
    """int() takes '+2' and '1_0' and raises on 5,000 digits; none is a length a writer wrote."""
    data = (_plain_record("resource", b"2", b"ok") + _plain_record("resource", length, b"xy")
            + _plain_record("metadata", b"5", b"after"))
    items = list(iter_archive(io.BytesIO(data), "t"))
    records = [(i.record_type, i.block) for i in items if isinstance(i, ArchiveRecord)]
    assert records == [("resource", b"ok"), ("resource", b"xy"), ("metadata", b"after")]
    errors = [i.error for i in items if isinstance(i, RecordError)]
    assert errors == ["resource record without a valid Content-Length: block taken up to the next record"]


def test_huge_but_well_formed_content_length_keeps_what_is_there() -> None:
    data = _plain_record("resource", b"2", b"ok") + _plain_record("resource", b"999999999999999999", b"tail")
    items = list(iter_archive(io.BytesIO(data), "t"))
    # a truncated last record: the bytes that are there, separator included, and an error
    assert [(i.record_type, i.block) for i in items if isinstance(i, ArchiveRecord)] == [
        ("resource", b"ok"), ("resource", b"tail\r\n\r\n")]
    assert [i.error for i in items if isinstance(i, RecordError)] == [
        "truncated resource record: 999999999999999999 block bytes declared, only 8 present"]


@pytest.mark.parametrize("size", [b"-5", b"+5", b"0x5", b"5_0", b"f" * 17])
def test_chunk_size_that_is_no_size_keeps_the_raw_body(size) -> None:
    body = size + b"\r\nhello\r\n0\r\n\r\n"
    block = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    assert parse_http_response(block).body == body


def test_chunk_size_past_the_data_is_a_truncated_last_chunk() -> None:
    block = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 16 + b"\r\nhello"
    assert parse_http_response(block).body == b"hello"


def test_arc_length_field_must_be_digits() -> None:
    good = b"http://example.com/a 1.2.3.4 20080430204825 text/html 2\nok\n"
    for length in (b"+2", b"1_0", b"9" * 5000):
        bad = b"http://example.com/b 1.2.3.4 20080430204825 text/html " + length + b"\nxy\n"
        items = list(iter_archive(io.BytesIO(good + bad + good), "t"))
        records = [(i.target_uri, i.block) for i in items if isinstance(i, ArchiveRecord)]
        # the bad header line is no ARC header: it is part of the record before it, with an error
        assert records[0][0] == "http://example.com/a" and records[-1] == ("http://example.com/a", b"ok"), records
        assert any(isinstance(i, RecordError) for i in items)
