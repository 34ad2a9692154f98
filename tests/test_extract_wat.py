"""wat_page_links on Common Crawl WAT JSON: a synthetic HTML response record and the real whirlwind WAT."""

from __future__ import annotations

import json

import pytest
from corpora import require

from laion_spark.extract.license import page_license
from laion_spark.extract.records import ArchiveRecord, iter_archive
from laion_spark.extract.wat import WatPage, wat_page_links


def _wat(html_meta: dict | None, uri: str = "<https://example.org/page>") -> bytes:
    payload: dict = {"Actual-Content-Type": "application/http; msgtype=response"}
    if html_meta is not None:
        payload["HTTP-Response-Metadata"] = {
            "Response-Message": {"Status": "200"},
            "Headers": {"Content-Type": "text/html; charset=utf-8"},
            "HTML-Metadata": html_meta,
        }
    doc = {
        "Container": {"Filename": "x.warc.gz", "Offset": "0"},
        "Envelope": {
            "Format": "WARC",
            "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": uri},
            "Payload-Metadata": payload,
        },
    }
    return json.dumps(doc).encode()


def test_images_base_and_rel_license() -> None:
    block = _wat(
        {
            "Head": {"Title": "t", "Base": "https://cdn.example.org/"},
            "Links": [
                {"path": "IMG@/src", "url": "a.jpg", "alt": "A cat"},
                {"path": "IMG@/src", "url": "b.png"},
                {"path": "IMG@/data-src", "url": "lazy.jpg"},
                {"path": "A@/href", "url": "/about", "text": "About"},
                {"path": "A@/href", "url": "https://creativecommons.org/licenses/by/4.0/"},
                {"path": "LINK@/href", "url": "/licence.html", "rel": "license"},
                {"path": "IMG@/src"},
            ],
        }
    )
    page = wat_page_links(block)
    assert page == WatPage(
        target_uri="https://example.org/page",
        base_href="https://cdn.example.org/",
        images=[("a.jpg", "A cat"), ("b.png", None)],
        # the links that may name the licence, in document order (license.page_license picks)
        license_links=[("https://creativecommons.org/licenses/by/4.0/", None), ("/licence.html", "license")],
        content_type="text/html; charset=utf-8",
    )
    # the first licence link in document order, as parse_page does for the same HTML
    assert page_license(page.license_links, page.target_uri, page.base_href) == (
        "https://creativecommons.org/licenses/by/4.0/")


def test_creative_commons_link_without_rel() -> None:
    block = _wat({"Links": [{"path": "A@/href", "url": "http://creativecommons.org/publicdomain/zero/1.0/"}]})
    page = wat_page_links(block)
    assert page is not None and page_license(page.license_links, "http://example.org/", None) == (
        "http://creativecommons.org/publicdomain/zero/1.0/")
    assert page.base_href is None and page.images == []


def test_not_html_and_malformed() -> None:
    assert wat_page_links(_wat(None)) is None
    with pytest.raises(ValueError, match="not valid JSON"):
        wat_page_links(b"{not json")
    with pytest.raises(ValueError, match="Envelope"):
        wat_page_links(b"[1, 2]")


def test_real_whirlwind_wat_request_metadata() -> None:
    path = require("warc/commoncrawl-whirlwind") / "whirlwind.warc.wat.gz"
    with path.open("rb") as handle:
        metadata = [
            i for i in iter_archive(handle, str(path)) if isinstance(i, ArchiveRecord) and i.record_type == "metadata"
        ]
    assert len(metadata) == 1 and metadata[0].content_type == "application/json"
    # the only WAT record describes the *request*: no HTML metadata, so no page
    assert wat_page_links(metadata[0].block) is None
