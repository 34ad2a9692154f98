"""extract.html: charset decoding and `<img>` extraction, on hand-written pages and the shared corpora."""

import html5lib
import pytest

from laion_spark.extract.html import (
    ImageLink,
    PageImages,
    decode_html,
    normalize_charset,
    parse_page,
    prescan_charset,
)
from laion_spark.extract.rules import CandidateRules, page_candidates
from tests.corpora import html_facts, require

PAGE = "http://example.com/dir/page.html"


def imgs(body: bytes | str, content_type: str | None = "text/html", lazy: bool = False) -> list[tuple[str, str]]:
    if isinstance(body, str):
        body = body.encode("utf-8")
    return [(i.src, i.alt) for i in parse_page(body, content_type, PAGE, lazy_attributes=lazy).images]


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize(("label", "codec"), [
    ("ISO-8859-1", "cp1252"), ("latin1", "cp1252"), ("US-ASCII", "cp1252"), ("gb2312", "gb18030"),
    ("GBK", "gb18030"), ("Shift_JIS", "cp932"), ("euc-kr", "cp949"), ("utf8", "utf-8"),
    (" UTF-8 ", "utf-8"), ("windows-1251", "cp1251"), ("iso-8859-9", "cp1254"), ("tis-620", "cp874"),
    ("big5", "big5hkscs"), ("x-unknown", None), ("iso-2022-kr", None), ('utf-8"', None), ("", None),
])
def test_normalize_charset(label, codec):
    assert normalize_charset(label) == codec


def test_decode_utf8_undeclared():
    assert decode_html("<p>Grüße</p>".encode(), None) == ("<p>Grüße</p>", "utf-8")


def test_decode_bom_beats_header_and_meta():
    body = b"\xef\xbb\xbf<meta charset=latin1><p>\xc3\xa9</p>"
    assert decode_html(body, "text/html; charset=windows-1251") == ("<meta charset=latin1><p>é</p>", "utf-8")
    body16 = "\ufeff<p>é</p>".encode("utf-16-le")
    assert decode_html(body16, None) == ("<p>é</p>", "utf-16-le")


def test_decode_http_header_beats_meta():
    body = "<meta charset=utf-8><p>Привет</p>".encode("cp1251")
    assert decode_html(body, 'text/html; charset="windows-1251"') == ("<meta charset=utf-8><p>Привет</p>", "cp1251")


def test_decode_meta_charset_and_http_equiv():
    body = "<meta charset='iso-8859-1'><p>Größe</p>".encode("latin-1")
    assert decode_html(body, "text/html") == ("<meta charset='iso-8859-1'><p>Größe</p>", "cp1252")
    body = '<META HTTP-EQUIV="Content-Type" CONTENT="text/html; charset=Shift_JIS"><p>日本</p>'.encode("cp932")
    assert decode_html(body, None)[1] == "cp932"
    assert decode_html(body, None)[0].endswith("<p>日本</p>")


def test_meta_in_comment_is_ignored():
    assert prescan_charset(b"<!-- <meta charset=koi8-r> --><meta charset=windows-1251>") == "cp1251"
    assert prescan_charset(b"<p title='<meta charset=koi8-r>'><meta charset=windows-1251>") == "cp1251"


def test_declared_gb2312_but_utf8_bytes_decode_as_utf8():
    body = "<meta charset=gb2312><img src=a.jpg alt='腾讯科技新闻'>".encode()
    assert decode_html(body, None)[1] == "utf-8"
    assert decode_html(body, "text/html; charset=gb2312")[1] == "utf-8"
    assert imgs(body, None) == [("a.jpg", "腾讯科技新闻")]


def test_declared_gb2312_that_is_gb2312_decodes_as_gb18030():
    body = "<meta charset=gb2312><p>腾讯科技新闻</p>".encode("gb2312")
    assert decode_html(body, None) == ("<meta charset=gb2312><p>腾讯科技新闻</p>", "gb18030")


def test_undeclared_legacy_bytes_are_detected():
    text = "<p>" + "Москва — столица России, крупнейший по численности населения город страны. " * 5 + "</p>"
    decoded, codec = decode_html(text.encode("cp1251"), None)
    assert codec == "cp1251"
    assert decoded == text


def test_decode_never_raises_on_garbage():
    text, codec = decode_html(b"<p>\xff\xfe\x00\x81\x8d garbage \xc3</p>", "text/html; charset=utf-8")
    assert codec == "utf-8" and "\ufffd" in text


def test_parse_non_utf8_page_gives_unicode_alt():
    body = "<meta charset=iso-8859-1><img src=a.jpg alt='Schüler in Erfurt'>".encode("latin-1")
    assert imgs(body, None) == [("a.jpg", "Schüler in Erfurt")]
    body16 = "\ufeff<img src=a.jpg alt='Schüler in Erfurt'>".encode("utf-16-le")
    assert imgs(body16, None) == [("a.jpg", "Schüler in Erfurt")]


# ---------------------------------------------------------------- extraction


def test_basic_relative_and_document_order():
    page = "<img src='b/1.jpg' alt='one'><p><img alt=\"two\" src=\"/2.png\"></p><img src=3.jpg alt=three>"
    assert imgs(page) == [("b/1.jpg", "one"), ("/2.png", "two"), ("3.jpg", "three")]


def test_entities_in_alt_are_unescaped_once():
    page = "<img src=a.jpg alt='Tom &amp; Jerry &eacute;t&#233; &#x263A; &amp;amp;'>"
    assert imgs(page) == [("a.jpg", "Tom & Jerry été ☺ &amp;")]


def test_src_entities_unescaped_and_raw_spacing_kept():
    assert imgs("<img src='a.jpg?x=1&amp;y=2' alt='  two  spaces '>") == [("a.jpg?x=1&y=2", "  two  spaces ")]


def test_comments_script_template_style_are_ignored():
    page = (
        "<!-- <img src=c.jpg alt='in comment'> -->"
        "<script>document.write('<img src=s.jpg alt=\"in script\">')</script>"
        "<style>/* <img src=st.jpg alt=style> */</style>"
        "<textarea><img src=t.jpg alt='in textarea'></textarea>"
        "<img src=real.jpg alt='real one'>"
    )
    assert imgs(page) == [("real.jpg", "real one")]


def test_noscript_images_count():
    page = (
        "<img src=data:image/gif;base64,R0 data-src=x.jpg alt='lazy'>"
        "<noscript><img src=x.jpg alt='fallback'></noscript>"
    )
    assert imgs(page) == [("data:image/gif;base64,R0", "lazy"), ("x.jpg", "fallback")]
    assert imgs("<head><noscript><img src=h.jpg alt='in head'></noscript></head>") == [("h.jpg", "in head")]


def test_broken_markup():
    page = (
        "<div><p><img alt=foo src=x.jpg><img src=y.jpg alt=bar/>"  # unquoted; '/' is part of the value
        "<p>text<img\nsrc=w.jpg\nALT=Upper>"
        "<IMAGE SRC=v.jpg ALT='image tag'>"  # the parser renames <image> to <img>
        "<img src=a.jpg src=b.jpg alt=dup alt=second>"  # the first of a duplicated attribute wins
    )
    assert imgs(page) == [
        ("x.jpg", "foo"), ("y.jpg", "bar/"), ("w.jpg", "Upper"), ("v.jpg", "image tag"), ("a.jpg", "dup"),
    ]


def test_unclosed_quote_swallows_markup_like_a_browser():
    page = "<img src='z.jpg' alt='unclosed quote><p>text<img src=w.jpg alt=x>"
    # The alt value runs to the end of the document: the tag never closes, the img is never built.
    assert imgs(page) == []
    assert imgs(page + "'>after") == [("z.jpg", "unclosed quote><p>text<img src=w.jpg alt=x>")]


def test_empty_whitespace_missing_alt_and_src_skipped():
    page = (
        "<img src=a.jpg alt=''><img src=b.jpg alt='  \n '><img src=c.jpg><img alt='no src'>"
        "<img src='' alt='empty src'><img src='  ' alt='blank src'><img src=ok.jpg alt=ok>"
    )
    assert imgs(page) == [("ok.jpg", "ok")]


def test_data_and_javascript_src_kept_raw_then_dropped_by_rules():
    page = "<img src='data:image/png;base64,AAAA' alt='inline image'><img src='javascript:void(0)' alt='script link'>"
    assert imgs(page) == [("data:image/png;base64,AAAA", "inline image"), ("javascript:void(0)", "script link")]
    kept, dropped = page_candidates(parse_page(page.encode(), None, PAGE), PAGE, CandidateRules())
    assert kept == [] and dropped == {"bad_scheme": 2}


def test_lazy_attributes_only_when_enabled():
    page = (
        "<img data-src=lazy1.jpg alt='lazy one'>"
        "<img src='data:image/gif;base64,R0' data-lazy-src=lazy2.jpg alt='lazy two'>"
        "<img src='' data-original=lazy3.jpg alt='lazy three'>"
        "<img data-srcset='s1.jpg 1x, s2.jpg 2x' alt='lazy srcset'>"
        "<img srcset='w320.jpg 320w, w640.jpg 640w' alt='srcset only'>"
        "<img src=real.jpg data-src=other.jpg alt='real wins'>"
    )
    assert imgs(page) == [("data:image/gif;base64,R0", "lazy two"), ("real.jpg", "real wins")]
    assert imgs(page, lazy=True) == [
        ("lazy1.jpg", "lazy one"), ("lazy2.jpg", "lazy two"), ("lazy3.jpg", "lazy three"),
        ("s1.jpg", "lazy srcset"), ("w320.jpg", "srcset only"), ("real.jpg", "real wins"),
    ]


def test_base_href_first_one_wins():
    page = "<head><base target=_blank><base href='/static/'><base href='http://x.org/'></head><img src=a.jpg alt=alpha>"
    assert parse_page(page.encode(), None, PAGE).base_href == "/static/"
    assert parse_page(b"<img src=a.jpg alt=alpha>", None, PAGE).base_href is None


@pytest.mark.parametrize(("markup", "expected"), [
    ("<link rel=license href='https://creativecommons.org/licenses/by/4.0/'>",
     "https://creativecommons.org/licenses/by/4.0/"),
    ("<a rel='external License' href='/terms'>terms</a>", "http://example.com/terms"),
    ("<a href='//creativecommons.org/publicdomain/zero/1.0/#x'>CC0</a>",
     "http://creativecommons.org/publicdomain/zero/1.0/"),
    ("<a href='https://creativecommons.org/about/'>about CC</a>", None),  # not a licence
    ("<a href='#license' rel=license>see below</a>", None),                # in-page anchor
    ("<!-- <a rel=license href=/c> -->", None),
    ("<a href='http://creativecommons.org/licenses/by-sa/3.0/'>a</a><link rel=license href=/second>",
     "http://creativecommons.org/licenses/by-sa/3.0/"),
])
def test_license(markup, expected):
    page = f"<html><body><img src=a.jpg alt='some image'>{markup}</body></html>"
    assert parse_page(page.encode(), None, PAGE).license == expected
    # deferred (the extract job's way): nothing found at parse time, the same URL when asked
    lazy = parse_page(page.encode(), None, PAGE, lazy_license=True)
    assert lazy.license is None
    assert lazy.license_url() == expected


def test_license_resolved_against_base_href():
    page = "<base href='https://cdn.example.org/x/'><img src=a.jpg alt=alpha><a rel=license href=lic.html>l</a>"
    assert parse_page(page.encode(), None, PAGE).license == "https://cdn.example.org/x/lic.html"


def test_no_candidates_returns_empty_page():
    empty = PageImages()
    assert parse_page(b"<p>no images here, license</p>", None, PAGE) == empty
    assert parse_page(b"<img src=a.jpg>", None, PAGE) == empty  # no alt anywhere: no parse
    assert parse_page(b"", None, PAGE) == empty
    assert parse_page(b"\x00\xff<img", "text/html; charset=utf-16", PAGE) == empty


def test_image_link_is_frozen():
    with pytest.raises(AttributeError):
        ImageLink("a", "b").src = "c"  # type: ignore[misc]


# ---------------------------------------------------------------- shared corpora (real pages)


def _read(rel: str) -> bytes:
    return (require() / rel).read_bytes()


def _html5lib_images(body: bytes) -> list[tuple[str, str]]:
    """Independent reference: html5lib (pure-Python HTML5 tree builder), scripting off, own sniffing."""
    # the raw bytes, decoded by html5lib itself (BOM, <meta> prescan, its default), except for the one
    # rule of ours written here again: bytes that are valid UTF-8 are UTF-8 whatever the page declares
    # (qq.html declares gb2312 and telegraph.html nothing, both are UTF-8; a browser shows mojibake)
    try:
        body.decode("utf-8")
        override = {"override_encoding": "utf-8"}
    except UnicodeDecodeError:
        override = {}
    tree = html5lib.parse(body, namespaceHTMLElements=False, **override)
    return [(e.get("src"), e.get("alt")) for e in tree.iter("img")
            if (e.get("alt") or "").strip() and (e.get("src") or "").strip()]


def test_corpora_counts_close_to_regex_facts():
    """HTML_FACTS counts `<img alt=...>` with regexes on raw bytes; the parser must agree up to the
    cases a regex gets wrong: imgs in comments/scripts (regex counts them, we don't) and imgs
    without src or with a whitespace-only alt (counted by the regex, skipped by us)."""
    facts = html_facts()
    assert len(facts) == 91
    for rel, row in facts.items():
        body = _read(rel)
        ours = parse_page(body, None, "http://example.com/", lazy_attributes=True).images
        regex = int(row["alt_nonempty"])
        assert len(ours) <= regex, rel
        # salon-1: 23 of its 33 alts sit on src-less imgs loaded by the site-specific
        # `data-source-standard` attribute (not one we read); the others are in markup a regex sees
        # and a parser does not (html5lib agrees with us: next test).
        # love-hina: 9 partner banners sit inside an HTML comment.
        allowed = {"html/readability/salon-1.html": 30, "html/trafilatura/love-hina.ch.0409.html": 9}
        assert regex - len(ours) <= allowed.get(rel, 2), (rel, regex, len(ours))


def test_corpora_match_html5lib_exactly():
    for rel in html_facts():
        body = _read(rel)
        ours = [(i.src, i.alt) for i in parse_page(body, None, "http://example.com/").images]
        assert ours == _html5lib_images(body), rel


def test_corpora_iso_8859_1_german_umlauts():
    body = _read("html/trafilatura/cdu-fraktion-erfurt.de.waldorfschule.html")
    assert decode_html(body, None)[1] == "cp1252"
    alts = [i.alt for i in parse_page(body, None, "http://www.cdu-fraktion-erfurt.de/").images]
    assert "CDU-Fraktion würdigt Forderungen des Erfurter Kindergipfels" in alts
    assert "Kein Elefantengedächtnis in der Verwaltung" in alts
    assert not any("\ufffd" in a or "Ã" in a for a in alts)


@pytest.mark.parametrize(("rel", "codec", "snippet"), [
    ("html/chardet/GB2312/_mozilla_bug171813_text.html", "gb18030", "搜狐在线"),
    ("html/chardet/EUC-JP/_mozilla_bug426271_text-euc-jp.html", "euc_jis_2004", "日本語"),
    ("html/chardet/windows-1251-russian/_chromium_windows-1251_with_no_encoding_specified.html", "cp1251", "МОСКВА"),
    ("html/chardet/SHIFT_JIS/_chromium_Shift-JIS_with_no_encoding_specified.html", "cp932", "衆院議院運営委員会"),
    ("html/chardet/UTF-16LE/plane1-utf-16le.html", "utf-16-le", "\U00010313"),
    ("html/chardet/utf-8/_chromium_UTF-8_with_no_encoding_specified.html", "utf-8", "麦蒂"),
])
def test_corpora_chardet_pages_decode_to_right_script(rel, codec, snippet):
    text, used = decode_html(_read(rel), None)
    # EUC-JP is declared in that page's <meta>; euc_jp and its superset euc_jis_2004 are both right.
    assert used == codec or (codec == "euc_jis_2004" and used == "euc_jp")
    assert snippet in text


def test_corpora_qq_declares_gb2312_but_is_utf8():
    body = _read("html/readability/qq.html")
    assert decode_html(body, "text/html; charset=gb2312")[1] == "utf-8"
    alts = [i.alt for i in parse_page(body, None, "http://tech.qq.com/").images]
    assert "腾讯科技" in alts


def test_corpora_pixnet_base_href():
    body = _read("html/readability/pixnet.html")
    page = parse_page(body, None, "https://mirror.example.org/copy.html")
    assert page.base_href == "http://stevenhgm.pixnet.net/blog/post/39926056"
    kept, _ = page_candidates(page, "https://mirror.example.org/copy.html", CandidateRules(min_alt_chars=1,
                                                                                              denied_extensions=()))
    # `//s.pixfs.net/...` takes its scheme from the base (http), not from the https page URL.
    assert ("http://s.pixfs.net/blog/images/choc/avatar-neutral.png", "訪客") in kept
    assert not any(url.startswith("https://mirror.example.org") for url, _ in kept)


def test_corpora_lazy_images_only_with_lazy_attributes():
    page3 = _read("html/readability/lazy-image-3.html")
    assert parse_page(page3, None, PAGE).images == []
    lazy = parse_page(page3, None, PAGE, lazy_attributes=True).images
    assert [i.src.rsplit(".", 1)[-1] for i in lazy] == ["jpg", "png"]
    page2 = _read("html/readability/lazy-image-2.html")
    plain = parse_page(page2, None, PAGE).images
    assert len(plain) == 63 and all(i.src.startswith("data:") for i in plain)
    lazy = parse_page(page2, None, PAGE, lazy_attributes=True).images
    assert len(lazy) == 63 and not any(i.src.startswith("data:") for i in lazy)


def test_corpora_telegraph_noscript_images():
    body = _read("html/readability/telegraph.html")
    ours = [(i.src, i.alt) for i in parse_page(body, None, "https://www.telegraph.co.uk/").images]
    tree = html5lib.parse(decode_html(body, None)[0], namespaceHTMLElements=False)
    in_noscript = [(e.get("src"), e.get("alt")) for ns in tree.iter("noscript") for e in ns.iter("img")]
    assert len(in_noscript) == 23  # HTML_FACTS: 23 <noscript><img> fallbacks
    assert all(pair in ours for pair in in_noscript)
    assert len(ours) == 30  # 31 imgs, one without alt


def test_corpora_html5lib_encoding_sniffing_cases():
    """WHATWG prescan conformance (html5lib-tests encoding/*.dat); known, accepted differences below."""
    root = require("html/html5lib-tests/encoding")
    failures = []
    total = 0
    for dat in ("tests1.dat", "tests2.dat", "test-yahoo-jp.dat", "scripted/tests1.dat"):
        for block in (root / dat).read_bytes().split(b"#data\n")[1:]:
            data, _, rest = block.partition(b"\n#encoding\n")
            expected = normalize_charset(rest.strip().split(b"\n")[0].decode())
            got = prescan_charset(data) or "cp1252"  # the tests' default for "nothing found"
            total += 1
            if got != expected:
                failures.append(data[:30])
    # A BOM is handled before the prescan, in decode_html (2 cases); a <meta> after 8 KB of comment
    # or script is past our 4 KB window (3 cases): browsers catch those by re-parsing, which we
    # don't; scripted/tests1.dat builds its <meta> with document.write (needs a script engine).
    assert total == 83
    assert len(failures) == 6, failures
