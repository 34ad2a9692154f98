"""extract.rules: alt cleaning, URL resolution, LAION drop rules, per-page candidates."""

from collections import Counter
from types import SimpleNamespace

import pytest

from laion_spark.extract.html import ImageLink, PageImages, parse_page
from laion_spark.extract.rules import (
    DROP_REASONS,
    CandidateRules,
    check_candidate,
    clean_alt,
    page_candidates,
    resolve_url,
)

RULES = SimpleNamespace(
    min_alt_chars=5, max_alt_chars=2000, max_url_chars=2000,
    allowed_schemes=("http", "https"), denied_extensions=(".svg", ".gif"),
)
PAGE = "http://example.com/dir/page.html?x=1"


@pytest.mark.parametrize(("raw", "expected"), [
    ("  a red  car ", "a red car"),
    ("a\n\tred\r\ncar", "a red car"),
    ("a\u00a0red\u3000car\u2009x", "a red car x"),
    ("Tom &amp; Jerry", "Tom & Jerry"),          # double-escaped in the page: parser left "&amp;"
    ("caf&eacute; &#233; &#xE9;", "café é é"),
    ("a&nbsp;&nbsp;b", "a b"),                    # an unescaped NBSP is whitespace too
    ("AT&T R&D", "AT&T R&D"),                     # no complete reference: unchanged
    ("&amp;amp;", "&amp;"),                       # unescaped once more only, not to a fixpoint
])
def test_clean_alt(raw, expected):
    assert clean_alt(raw, 2000) == expected


def test_clean_alt_cuts_to_max_chars():
    assert clean_alt("abcdef ghij", 7) == "abcdef"
    assert clean_alt("x" * 3000, 2000) == "x" * 2000


@pytest.mark.parametrize(("src", "base_href", "expected"), [
    ("img/a.jpg", None, "http://example.com/dir/img/a.jpg"),
    ("/a.jpg", None, "http://example.com/a.jpg"),
    ("../a.jpg", None, "http://example.com/a.jpg"),
    ("//cdn.Example.ORG/a.jpg", None, "http://cdn.example.org/a.jpg"),
    ("?q=2", None, "http://example.com/dir/page.html?q=2"),
    ("  a.jpg\n", None, "http://example.com/dir/a.jpg"),
    ("a\n.jpg", None, "http://example.com/dir/a.jpg"),  # newlines inside are removed as browsers do
    ("a.jpg#frag", None, "http://example.com/dir/a.jpg"),
    ("a.jpg?w=1&h=2#frag", None, "http://example.com/dir/a.jpg?w=1&h=2"),
    ("HTTPS://Img.Example.com/A.JPG", None, "https://img.example.com/A.JPG"),  # path case kept
    ("http://User:Pw@Host.COM/a.jpg", None, "http://User:Pw@host.com/a.jpg"),
    ("a.jpg", "http://other.org/base/", "http://other.org/base/a.jpg"),
    ("a.jpg", "base/", "http://example.com/dir/base/a.jpg"),
    ("a.jpg", "/", "http://example.com/a.jpg"),
    ("a.jpg", ".", "http://example.com/dir/a.jpg"),
    ("a.jpg", "", "http://example.com/dir/a.jpg"),
    ("/a.jpg", "https://www.BMJV.de/", "https://www.bmjv.de/a.jpg"),
    ("data:image/png;base64,AAAA", None, "data:image/png;base64,AAAA"),
])
def test_resolve_url(src, base_href, expected):
    assert resolve_url(src, PAGE, base_href) == expected


def test_resolve_url_broken_ipv6_raises_value_error():
    with pytest.raises(ValueError):
        resolve_url("http://[::1/a.jpg", PAGE, None)


@pytest.mark.parametrize(("url", "text", "reason"), [
    ("http://e.com/a.jpg", "a red car", None),
    ("https://e.com/a.png?x=.gif", "a red car", None),       # the query is not the extension
    ("", "a red car", "empty_src"),
    ("data:image/png;base64,AAAA", "a red car", "bad_scheme"),
    ("javascript:void(0)", "a red car", "bad_scheme"),
    ("ftp://e.com/a.jpg", "a red car", "bad_scheme"),
    ("http:///a.jpg", "a red car", "invalid_url"),
    ("http://e.com/a.SVG", "a red car", "denied_extension"),
    ("http://e.com/a.gif?x=1", "a red car", "denied_extension"),
    ("http://e.com/a.jpg", "abcd", "alt_too_short"),
    ("http://e.com/a.jpg", "abcde", None),
    ("http://e.com/" + "a" * 1987, "a red car", None),        # 13 + 1987 = exactly 2000 characters
    ("http://e.com/" + "a" * 1988, "a red car", "url_too_long"),
])
def test_check_candidate(url, text, reason):
    assert check_candidate(url, text, RULES) == reason
    assert reason is None or reason in DROP_REASONS


def test_check_candidate_takes_rules_from_any_object():
    lenient = CandidateRules(min_alt_chars=1, denied_extensions=(), allowed_schemes=("http", "https", "ftp"))
    assert check_candidate("ftp://e.com/a.gif", "x", lenient) is None


def test_page_candidates_counts_every_image_once():
    page = PageImages(images=[
        ImageLink("a.jpg", "  A red &amp; blue car "),
        ImageLink("a.jpg", "A red & blue car"),          # duplicate kept: dedupe is a later stage
        ImageLink("data:image/gif;base64,R0", "placeholder"),
        ImageLink("icon.svg", "an icon here"),
        ImageLink("b.jpg", "tiny"),
        ImageLink("http://[::1/x.jpg", "broken ipv6 host"),
        ImageLink("//cdn.example.com/c.jpg#f", "third picture"),
    ], base_href="/static/")
    kept, dropped = page_candidates(page, PAGE, RULES)
    assert kept == [
        ("http://example.com/static/a.jpg", "A red & blue car"),
        ("http://example.com/static/a.jpg", "A red & blue car"),
        ("http://cdn.example.com/c.jpg", "third picture"),
    ]
    assert dropped == Counter(bad_scheme=1, denied_extension=1, alt_too_short=1, invalid_url=1)
    assert len(kept) + sum(dropped.values()) == len(page.images)


def test_parse_then_candidates_end_to_end():
    body = (
        b"<html><head><base href='http://img.example.net/p/'></head><body>"
        b"<img src=cat.jpg alt='A grey cat sleeping'>"
        b"<img src=dog.gif alt='A dog jumping high'>"
        b"<img src='data:image/png;base64,AA' data-src=lazy.jpg alt='Lazy loaded photo'>"
        b"</body></html>"
    )
    kept, dropped = page_candidates(parse_page(body, "text/html", PAGE), PAGE, RULES)
    assert kept == [("http://img.example.net/p/cat.jpg", "A grey cat sleeping")]
    assert dropped == Counter(denied_extension=1, bad_scheme=1)
    kept, dropped = page_candidates(parse_page(body, "text/html", PAGE, lazy_attributes=True), PAGE, RULES)
    assert kept[-1] == ("http://img.example.net/p/lazy.jpg", "Lazy loaded photo")
