"""One archive file -> candidate rows, error rows and one stats row (plain Python, no Spark).

INPUT  -> a file URI (WARC / ARC / WAT, any fsspec filesystem) and an ExtractConfig
OUTPUT -> an iterator of `ExtractRow`s: kind 'candidate' (a CANDIDATES row), 'error'
          (an EXTRACT_ERRORS row) and, last, exactly one 'stats' row with the file's counts
          (records read, HTML pages, drops per LAION rule, failed records); nothing raises
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from laion_spark.extract.html import ImageLink, PageImages, parse_page
from laion_spark.extract.http import parse_http_response
from laion_spark.extract.language import detect_language
from laion_spark.extract.records import RecordError, iter_archive
from laion_spark.extract.remote import open_uri
from laion_spark.extract.rules import page_candidates, resolve_url
from laion_spark.extract.wat import wat_page_links

log = logging.getLogger(__name__)

WANTED_TYPES = frozenset({"response", "metadata"})


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


def _error(uri: str, offset: int | None, message: str) -> ExtractRow:
    return ExtractRow(kind="error", source_uri=uri, source_offset=offset, error=message)


def _mime(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _page_from_response(record, cfg, counts: Counter) -> tuple[PageImages | None, str | None]:
    """A WARC/ARC response record -> (images of its HTML page, page URL), or (None, None)."""
    if not record.block.startswith(b"HTTP/"):
        counts["records_not_http"] += 1
        return None, None
    response = parse_http_response(record.block)
    content_type = response.headers.get("content-type")
    if _mime(content_type) not in cfg.html_content_types:
        counts["records_not_html"] += 1
        return None, None
    counts["html_pages"] += 1
    page_url = record.target_uri or ""
    body = response.body[: cfg.max_html_bytes]
    return parse_page(body, content_type, page_url, lazy_attributes=cfg.lazy_attributes), page_url


def _page_from_wat(record, counts: Counter) -> tuple[PageImages | None, str | None]:
    """A WAT metadata record -> (images the crawler saw in its page, page URL), or (None, None)."""
    if _mime(record.content_type) != "application/json":
        counts["records_not_wat_json"] += 1
        return None, None
    wat = wat_page_links(record.block)
    if wat is None:
        counts["wat_records_not_html"] += 1
        return None, None
    counts["html_pages"] += 1
    page_url = wat.target_uri or record.target_uri or ""
    license_url = resolve_url(wat.license_href, page_url, wat.base_href) if wat.license_href else None
    # WAT leaves `alt` out when the tag has none: like parse_page, only imgs with an alt count
    images = [ImageLink(src=src, alt=alt) for src, alt in wat.images if alt and alt.strip() and src]
    return PageImages(images=images, base_href=wat.base_href, license=license_url), page_url


def process_file(uri: str, cfg) -> Iterator[ExtractRow]:
    """File URI + ExtractConfig -> candidate and error rows, then one stats row."""
    counts: Counter = Counter({"files": 1})
    try:
        stream = open_uri(uri, retries=cfg.retries, backoff_s=cfg.retry_backoff_s)
    except Exception as exc:  # noqa: BLE001 - an unopenable input is an error row, not a failed job
        counts["files_failed"] += 1
        counts["record_errors"] += 1
        yield _error(uri, None, f"cannot open: {type(exc).__name__}: {exc}")
        yield ExtractRow(kind="stats", source_uri=uri, counts=json.dumps(dict(counts)))
        return
    try:
        with stream:
            yield from _process_records(stream, uri, cfg, counts)
    except Exception as exc:  # noqa: BLE001 - reader bug or I/O failure mid-file: keep what came before
        log.warning("extract: %s failed: %s", uri, exc)
        counts["files_failed"] += 1
        counts["record_errors"] += 1
        yield _error(uri, None, f"file failed: {type(exc).__name__}: {exc}")
    yield ExtractRow(kind="stats", source_uri=uri, counts=json.dumps(dict(counts)))


def _process_records(stream, uri: str, cfg, counts: Counter) -> Iterator[ExtractRow]:
    file_failed = False
    for record in iter_archive(stream, uri):
        if isinstance(record, RecordError):
            counts["record_errors"] += 1
            file_failed = True
            yield _error(uri, record.offset, record.error)
            continue
        counts["records"] += 1
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
        except Exception as exc:  # noqa: BLE001 - one bad page costs that page only
            counts["record_errors"] += 1
            yield _error(uri, record.offset, f"{type(exc).__name__}: {exc}")
            continue
        for reason, n in drops.items():
            counts[f"dropped_{reason}"] += n
        counts["images_seen"] += len(kept) + sum(drops.values())
        for url, text in kept:
            language, prob = detect_language(text)
            counts["candidates"] += 1
            yield ExtractRow(
                kind="candidate",
                source_uri=uri,
                source_offset=record.offset,
                source_length=record.length,
                url=url,
                text=text,
                page_url=page_url,
                language=language,
                language_prob=prob,
                license=page.license,
                crawl_time=record.date,
            )
    if file_failed:
        counts["files_with_errors"] += 1
