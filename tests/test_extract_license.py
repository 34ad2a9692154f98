"""One licence resolver: a WARC and its WAT twin give every page the same licence, and the right one.

The WARC is written here with pages whose links are the cases two resolvers used to answer
differently: a licence URL in mixed case (kept as written from WARC, lower-cased from WAT), links
that mention creativecommons.org without being a licence (a web.archive.org wrapper, a query
string: a licence through WAT, none through WARC), and around them rel=license links, in-page
anchors, protocol-relative and relative hrefs, a <base href> and a link that does not resolve. Its
WAT is written by laion_spark.demo.wat (Python's html.parser, not extract's lexbor), and extract
reads both; the expected licence of each page is written out by hand below.
"""

from __future__ import annotations

import io

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter
from wat_fixtures import warc_to_wat

from laion_spark.config import ExtractConfig
from laion_spark.extract.process import process_file

IMG = '<img src="/photo.jpg" alt="A photograph that is kept as a candidate">'

# page URL -> (links of the page, the licence a reader of the page would give it)
PAGES = {
    "http://a.example/mixed-case": (
        '<a href="HTTPS://CreativeCommons.ORG/licenses/by/4.0/">CC BY</a>',
        "https://creativecommons.org/licenses/by/4.0/"),
    "http://a.example/wayback": (
        '<a href="https://web.archive.org/web/2020/https://creativecommons.org/licenses/by/4.0/">old</a>', None),
    "http://a.example/query": (
        '<a href="https://share.example/?u=https://creativecommons.org/licenses/by-sa/4.0/">share</a>', None),
    "http://a.example/query-then-rel": (
        '<a href="https://share.example/?u=creativecommons.org/licenses/by/4.0/">share</a>'
        '<a rel="License" href="/terms#top">terms</a>', "http://a.example/terms"),
    "http://a.example/anchor-then-link": (
        '<a rel="license" href="#cc">see below</a>'
        '<a href="//creativecommons.org/publicdomain/zero/1.0/#deed">CC0</a>',
        "http://creativecommons.org/publicdomain/zero/1.0/"),
    "http://a.example/broken-then-base": (
        '<base href="https://cdn.example/docs/"><a rel="license" href="http://[::1/x">broken</a>'
        '<a rel="license nofollow" href="licence.html">licence</a>', "https://cdn.example/docs/licence.html"),
    "http://a.example/other-rel": ('<a rel="nofollow" href="https://creativecommons.org/about/">about</a>', None),
}


def _warc(path) -> None:
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for url, (links, _) in PAGES.items():
            body = f"<html><head><title>t</title></head><body>{links}{IMG}</body></html>".encode()
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body),
                                                          http_headers=http))


def _licences(uri: str) -> dict[str, str | None]:
    rows = [r for r in process_file(uri, ExtractConfig()) if r.kind != "stats"]
    assert all(r.kind == "candidate" for r in rows), [r.error for r in rows if r.kind == "error"]
    return {r.page_url: r.license for r in rows}


def test_warc_and_its_wat_give_each_page_the_same_licence(tmp_path) -> None:
    warc = tmp_path / "links.warc.gz"
    _warc(warc)
    wat = tmp_path / "links.warc.wat.gz"
    assert warc_to_wat(warc, wat) == len(PAGES)
    expected = {url: licence for url, (_, licence) in PAGES.items()}
    assert _licences(str(warc)) == expected
    assert _licences(str(wat)) == expected


@pytest.mark.parametrize(("href", "rel", "want"), [
    ("  HTTP://WWW.CreativeCommons.org/Licenses/BY-NC/3.0/\n", None, "http://www.creativecommons.org/Licenses/BY-NC/3.0/"),
    ("https://creativecommons.org.evil.example/licenses/by/4.0/", None, None),
    ("https://evil.example/creativecommons.org/licenses/by/4.0/", None, None),
    ("https://creativecommons.org/", None, None),
    ("https://creativecommons.org/", "license", "https://creativecommons.org/"),
    ("#licence", "license", None),
    ("", "license", None),
])
def test_one_link(href, rel, want) -> None:
    from laion_spark.extract.license import page_license

    assert page_license([(href, rel)], "http://page.example/p", None) == want
