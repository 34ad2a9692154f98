"""parse_http_response on hand-made messages and on the real quirky responses of the corpora."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
from corpora import require

from laion_spark.extract.http import parse_http_response
from laion_spark.extract.records import ArchiveRecord, iter_archive

HTML = b"<html><body><img src='a.jpg' alt='x'></body></html>"


def _response(rel: str) -> bytes:
    with (require("warc") / rel).open("rb") as handle:
        for item in iter_archive(handle, rel):
            if isinstance(item, ArchiveRecord) and item.record_type == "response":
                return item.block
    raise AssertionError(f"no response record in {rel}")


def test_plain_crlf_and_repeated_headers() -> None:
    block = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n\r\n" + HTML
    r = parse_http_response(block)
    assert r.status == 200 and r.body == HTML
    assert r.headers == {"content-type": "text/html", "set-cookie": "a=1, b=2"}


def test_lf_only_missing_reason_latin1_and_no_blank_line() -> None:
    r = parse_http_response(b"HTTP/1.0 404\nX-Name: caf\xe9\n\n" + HTML)
    assert r.status == 404 and r.headers["x-name"] == "caf\u00e9" and r.body == HTML
    r = parse_http_response(b"HTTP/1.1 204 No Content\r\nServer: x\r\n")
    assert r.status == 204 and r.headers == {"server": "x"} and r.body == b""
    assert parse_http_response(b"not http at all").status is None


@pytest.mark.parametrize(
    ("coding", "encode"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some servers send it
        ("br", brotli.compress),
    ],
)
def test_content_encodings(coding: str, encode) -> None:
    block = f"HTTP/1.1 200 OK\r\nContent-Encoding: {coding}\r\n\r\n".encode() + encode(HTML)
    assert parse_http_response(block).body == HTML


def test_chunked_gzip_and_broken_fallbacks() -> None:
    payload = gzip.compress(HTML)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (payload[:10], payload[10:])) + b"0\r\nX-T: 1\r\n\r\n"
    block = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n" + chunked
    assert parse_http_response(block).body == HTML
    # broken gzip: raw body kept, nothing raised
    block = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\n" + HTML
    assert parse_http_response(block).body == HTML
    # broken chunk framing: raw body kept
    block = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc"
    assert parse_http_response(block).body == b"zz\r\nabc"


def test_corpora_chunked_with_trailers() -> None:
    r = parse_http_response(_response("ipwb/baconIpsum_chunked_httpTrailors.warc"))
    assert r.status == 200 and r.body.startswith(b"<html>") and r.body.rstrip().endswith(b"</html>")
    assert b"\r\n0\r\n" not in r.body


def test_corpora_bad_chunked_falls_back_to_raw() -> None:
    r = parse_http_response(_response("warcat/bad_http_chunked_content.warc"))
    assert r.status == 200 and r.body.startswith(b"3\r\naa")


@pytest.mark.parametrize("kind", ["brotli", "gzip", "none"])
def test_corpora_transfer_compression(kind: str) -> None:
    r = parse_http_response(_response(f"ukwa-webarchive-discovery/transfer_compression_{kind}.warc.gz"))
    assert r.status == 200 and r.body.startswith(b"<html>") and b"Simple page" in r.body


def test_corpora_iana_chunked_and_not_utf8_header() -> None:
    r = parse_http_response(_response("warcio/example-iana.org-chunked.warc"))
    assert r.body.startswith(b"<!doctype html>") and r.body.rstrip().endswith(b"</html>")
    r = parse_http_response(_response("warcat/not_utf8_http_header.warc"))
    assert r.status == 200 and r.headers["x-somthing"] == "\xff\xff\xff"


def test_corpora_arc_and_odd_line_ends() -> None:
    r = parse_http_response(_response("warcio/example.arc"))
    assert r.status == 200 and r.headers["content-type"].startswith("text/html")
    r = parse_http_response(_response("pywb/missing-status-text.warc"))
    assert r.status == 302 and r.headers["location"] == "http://www.iana.org/badst"
