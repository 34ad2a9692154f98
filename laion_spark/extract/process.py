"""One archive file -> candidate rows, error rows and one stats row (plain Python, no Spark).

INPUT  -> a file URI (WARC / ARC / WAT, any fsspec filesystem) and an ExtractConfig
OUTPUT -> an iterator of `ExtractRow`s: kind 'candidate' (a CANDIDATES row), 'error'
          (an EXTRACT_ERRORS row) and, last, exactly one 'stats' row with the file's counts
          (records read, HTML pages, drops per LAION rule, failed records) and, for a file that
          could not be read to its end, the reason in `error`; nothing raises

Memory is bounded by the settings, never by the input: the reader keeps of each record only what
is parsed (`record_bytes`): an HTTP header, the first `extract.max_html_bytes` of an HTML body, a
WAT JSON record up to the same size; every other block is drained as it is read.

A file is one of: read to its end (its damaged records are error rows, it counts in
`files_with_errors`), `failed` (it could not be opened: error row FILE_FAILED + reason) or
`incomplete` (reading stopped before its end, once the stream's retries ran out: error row
FILE_INCOMPLETE + reason; the rows before the stop are kept). extract.retry_from reruns the last two.

source_offset / source_length are null for a record that no byte range holds alone (a file gzipped as
a whole, or a gzip member holding several records, past its first): counted in
`candidates_without_offset`, never a range that would fetch another record.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from laion_spark.extract.html import ImageLink, PageImages, parse_page
from laion_spark.extract.http import http_head_length, parse_http_response
from laion_spark.extract.language import detect_language
from laion_spark.extract.license import page_license
from laion_spark.extract.records import BlockLimit, RecordError, iter_archive
from laion_spark.extract.remote import open_uri
from laion_spark.extract.rules import page_candidates
from laion_spark.extract.wat import wat_page_links

log = logging.getLogger(__name__)

WANTED_TYPES = frozenset({"response", "metadata"})
# the error of a file that could not be opened / that was not read to its end (errors table and stats row)
FILE_FAILED = "file failed: "
FILE_INCOMPLETE = "file incomplete: "


@dataclass
class ExtractRow:
    """One output row of the extract UDF; `kind` says which table it belongs to."""

    kind: str  # 'candidate' | 'error' | 'stats'
    source_uri: str
    source_offset: int | None = None
    source_length: int | None = None
    url: str | None = None
    text: str | None = None
    page_url: str | None = None
    language: str | None = None
    language_prob: float | None = None
    license: str | None = None
    crawl_time: datetime | None = None
    error: str | None = None
    counts: str | None = None  # JSON {reason: count}, on the stats row


# The instants a candidates row can hold: every later stage's pandas UDF (dedupe, download, export)
# receives crawl_time as pandas datetime64[ns], which ends at these; a WARC-Date of 9999-12-31 or
# 0001-01-01 outside them would raise OutOfBoundsDatetime while such a batch is built (outside any
# per-record guard) and fail the whole task. No crawl happened outside them, so such a date is
# "unparseable": null (DESIGN.md).
CRAWL_TIME_MIN = datetime(1677, 9, 22, tzinfo=UTC)
CRAWL_TIME_MAX = datetime(2262, 4, 11, tzinfo=UTC)
# Lone UTF-16 surrogates are valid in a Python str (a WAT's JSON "\ud800" escape gives one) but
# not in UTF-8: Arrow refuses to encode them (UnicodeEncodeError for the whole batch), and so does CLD3.
_SURROGATE = re.compile("[\ud800-\udfff]")


def crawl_time(date: datetime | None) -> datetime | None:
    """A record's WARC-Date -> the crawl_time stored: None when the table cannot hold it."""
    if date is None or not CRAWL_TIME_MIN <= date <= CRAWL_TIME_MAX:
        return None
    return date


def utf8_text(value: str | None) -> str | None:
    """A str as it can be stored (UTF-8): lone surrogates become U+FFFD, like any undecodable byte."""
    if value is None or value.isascii():
        return value
    return _SURROGATE.sub("\ufffd", value)


def _error(uri: str, offset: int | None, message: str) -> ExtractRow:
    return ExtractRow(kind="error", source_uri=uri, source_offset=offset, error=utf8_text(message))


def _mime(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def record_bytes(cfg) -> BlockLimit:
    """ExtractConfig -> the reader's block_limit: how much of each record's block is parsed.

    A response keeps its HTTP header, and the first max_html_bytes of its body when that is HTML
    (the body is cut there anyway); a WAT JSON record keeps up to max_html_bytes; nothing else is
    parsed, so nothing else is kept (its length is still read, and checked).
    """
    html_types = frozenset(cfg.html_content_types)
    cap = cfg.max_html_bytes

    def limit(record_type: str, content_type: str, head: bytes) -> int:
        if record_type == "response":
            if not head.startswith(b"HTTP/"):
                return 0  # counted as records_not_http
            n = http_head_length(head)
            if n is None:  # no end of the header in its first 64 KiB: parsed as a header alone, as before
                return len(head)
            mime = _mime(parse_http_response(head[:n]).headers.get("content-type"))
            return n + cap if mime in html_types else n
        if record_type == "metadata" and _mime(content_type) == "application/json":
            return cap
        return 0

    return limit


def _page_from_response(record, cfg, counts: Counter) -> tuple[PageImages | None, str | None]:
    """A WARC/ARC response record -> (images of its HTML page, page URL), or (None, None)."""
    if not record.block.startswith(b"HTTP/"):
        counts["records_not_http"] += 1
        return None, None
    # one cap for every body, raw or content-encoded: decoding stops there (bombs included)
    response = parse_http_response(record.block, max_body=cfg.max_html_bytes)
    content_type = response.headers.get("content-type")
    if _mime(content_type) not in cfg.html_content_types:
        counts["records_not_html"] += 1
        return None, None
    counts["html_pages"] += 1
    page_url = record.target_uri or ""
    page = parse_page(response.body, content_type, page_url, lazy_attributes=cfg.lazy_attributes, lazy_license=True)
    return page, page_url


def _page_from_wat(record, counts: Counter) -> tuple[PageImages | None, str | None]:
    """A WAT metadata record -> (images the crawler saw in its page, page URL), or (None, None)."""
    if _mime(record.content_type) != "application/json":
        counts["records_not_wat_json"] += 1
        return None, None
    if record.block_length is not None and record.block_length > len(record.block):
        raise ValueError(f"WAT record of {record.block_length} bytes is larger than extract.max_html_bytes "
                         f"({len(record.block)}): not parsed")
    wat = wat_page_links(record.block)
    if wat is None:
        counts["wat_records_not_html"] += 1
        return None, None
    counts["html_pages"] += 1
    page_url = wat.target_uri or record.target_uri or ""
    license_url = page_license(wat.license_links, page_url, wat.base_href)
    # WAT leaves `alt` out when the tag has none: like parse_page, only imgs with an alt count
    images = [ImageLink(src=src, alt=alt) for src, alt in wat.images if alt and alt.strip() and src]
    return PageImages(images=images, base_href=wat.base_href, license=license_url), page_url


def _candidate_rows(record, page: PageImages, page_url: str, kept, uri: str) -> Iterator[ExtractRow]:
    """Kept (url, text) pairs of one page -> candidate rows whose every value the table can hold."""
    page_url = utf8_text(page_url)
    # the licence search runs only for a page that keeps a candidate (most pages keep none)
    license_url = utf8_text(page.license_url()) if kept else None
    when = crawl_time(record.date)
    # a record that starts inside a gzip member (not at its start) has no byte range of its own: a
    # range request would return the member's first record, so no offset is better than that one
    offset, length = (record.offset, record.length) if record.inner_offset == 0 else (None, None)
    for url, text in kept:
        text = utf8_text(text)
        language, prob = detect_language(text)
        yield ExtractRow(
            kind="candidate",
            source_uri=uri,
            source_offset=offset,
            source_length=length,
            url=utf8_text(url),
            text=text,
            page_url=page_url,
            language=language,
            language_prob=prob,
            license=license_url,
            crawl_time=when,
        )


def process_file(uri: str, cfg) -> Iterator[ExtractRow]:
    """File URI + ExtractConfig -> candidate and error rows, then one stats row."""
    counts: Counter = Counter({"files": 1})
    try:
        stream = open_uri(uri, retries=cfg.retries, backoff_s=cfg.retry_backoff_s)
    except Exception as exc:  # noqa: BLE001 - an unopenable input is an error row, not a failed job
        counts["files_failed"] += 1
        counts["record_errors"] += 1
        reason = f"{FILE_FAILED}cannot open: {type(exc).__name__}: {exc}"
        yield _error(uri, None, reason)
        yield ExtractRow(kind="stats", source_uri=uri, counts=json.dumps(dict(counts)), error=utf8_text(reason))
        return
    stopped: list[str] = []  # why reading stopped before the end of the file, if it did
    try:
        with stream:
            yield from _process_records(stream, uri, cfg, counts, stopped)
    except Exception as exc:  # noqa: BLE001 - reader bug or I/O failure mid-file: keep what came before
        log.warning("extract: %s failed: %s", uri, exc)
        counts["record_errors"] += 1
        stopped.append(f"{FILE_INCOMPLETE}{type(exc).__name__}: {exc}")
        yield _error(uri, None, stopped[-1])
    if stopped:
        counts["files_incomplete"] += 1
        log.warning("extract: %s not read to its end: %s", uri, stopped[0])
    yield ExtractRow(kind="stats", source_uri=uri, counts=json.dumps(dict(counts)),
                     error=utf8_text(stopped[0]) if stopped else None)


def _process_records(stream, uri: str, cfg, counts: Counter, stopped: list[str]) -> Iterator[ExtractRow]:
    file_failed = False
    for record in iter_archive(stream, uri, block_limit=record_bytes(cfg)):
        if isinstance(record, RecordError):
            counts["record_errors"] += 1
            file_failed = True
            if record.ends_file:
                stopped.append(f"{FILE_INCOMPLETE}{record.error}")
            yield _error(uri, record.offset, stopped[-1] if record.ends_file else record.error)
            continue
        counts["records"] += 1
        if record.inner_offset:
            counts["records_without_offset"] += 1
        if record.record_type not in WANTED_TYPES:
            continue
        try:
            if record.record_type == "response":
                page, page_url = _page_from_response(record, cfg, counts)
            else:
                page, page_url = _page_from_wat(record, counts)
            if page is None:
                continue
            kept, drops = page_candidates(page, page_url, cfg)
            # built inside the guard: language detection and text checks see input values too
            rows = list(_candidate_rows(record, page, page_url, kept, uri))
        except Exception as exc:  # noqa: BLE001 - one bad page costs that page only
            counts["record_errors"] += 1
            yield _error(uri, record.offset, f"{type(exc).__name__}: {exc}")
            continue
        for reason, n in drops.items():
            counts[f"dropped_{reason}"] += n
        counts["images_seen"] += len(kept) + sum(drops.values())
        counts["candidates"] += len(rows)
        if rows and rows[0].source_offset is None:
            counts["candidates_without_offset"] += len(rows)
        yield from rows
    if file_failed:
        counts["files_with_errors"] += 1
