"""One HTML payload (bytes + HTTP Content-Type) -> decoded text, and the page's `<img>` + alt candidates.

INPUT  -> the raw HTTP body of one page, its Content-Type header (or None), the page URL
OUTPUT -> `decode_html`: (text, Python codec name); `parse_page`: `PageImages` with the raw
          (src, alt) of every `<img>` a browser with scripting off would build, the first
          `<base href>` and the page's Creative Commons licence URL

Charset order follows the WHATWG "encoding sniffing" algorithm (BOM, transport header, `<meta>`
prescan, WHATWG label mapping) with one pragmatic twist: bytes that are valid UTF-8 are decoded
as UTF-8 whatever a header or `<meta>` declares (UTF-16 aside); only bytes that are not valid
UTF-8 use the declared charset, or, when none is declared, charset-normalizer's detection. Parsing is done
by lexbor (selectolax), an HTML5 tree builder like the browsers' own: comments and `<script>`
contents never yield images, `<noscript>` contents are parsed as markup (scripting off), broken
markup is repaired the way a browser repairs it.
"""

from __future__ import annotations

import codecs
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from selectolax.lexbor import LexborHTMLParser

from laion_spark.extract.license import LICENSE_LINKS_CSS, page_license

logger = logging.getLogger(__name__)

# WHATWG label -> Python codec where they differ (encoding.spec.whatwg.org, "Encodings" table).
# Browsers decode "latin1"/"ascii" pages as windows-1252 and "gb2312" as the gb18030 superset;
# decoding the way the browser did is what gives the text the page author saw.
_WHATWG_LABELS = {
    "unicode-1-1-utf-8": "utf-8", "unicode11utf8": "utf-8", "unicode20utf8": "utf-8",
    "utf8": "utf-8", "x-unicode20utf8": "utf-8",
    "ansi_x3.4-1968": "cp1252", "ascii": "cp1252", "us-ascii": "cp1252", "cp819": "cp1252",
    "csisolatin1": "cp1252", "ibm819": "cp1252", "iso-8859-1": "cp1252", "iso-ir-100": "cp1252",
    "iso8859-1": "cp1252", "iso88591": "cp1252", "iso_8859-1": "cp1252", "iso_8859-1:1987": "cp1252",
    "l1": "cp1252", "latin1": "cp1252", "x-cp1252": "cp1252",
    "iso-8859-9": "cp1254", "iso8859-9": "cp1254", "iso88599": "cp1254", "latin5": "cp1254",
    "l5": "cp1254", "csisolatin5": "cp1254", "iso-ir-148": "cp1254", "iso_8859-9": "cp1254",
    "tis-620": "cp874", "iso-8859-11": "cp874", "iso8859-11": "cp874", "iso885911": "cp874",
    "dos-874": "cp874", "windows-874": "cp874",
    "chinese": "gb18030", "csgb2312": "gb18030", "csiso58gb231280": "gb18030", "gb2312": "gb18030",
    "gb_2312": "gb18030", "gb_2312-80": "gb18030", "gbk": "gb18030", "iso-ir-58": "gb18030",
    "x-gbk": "gb18030", "gb18030": "gb18030",
    "big5": "big5hkscs", "big5-hkscs": "big5hkscs", "cn-big5": "big5hkscs", "csbig5": "big5hkscs",
    "x-x-big5": "big5hkscs",
    "csshiftjis": "cp932", "ms932": "cp932", "ms_kanji": "cp932", "shift-jis": "cp932",
    "shift_jis": "cp932", "sjis": "cp932", "windows-31j": "cp932", "x-sjis": "cp932",
    "cseuckr": "cp949", "csksc56011987": "cp949", "euc-kr": "cp949", "iso-ir-149": "cp949",
    "korean": "cp949", "ks_c_5601-1987": "cp949", "ks_c_5601-1989": "cp949", "ksc5601": "cp949",
    "ksc_5601": "cp949", "windows-949": "cp949",
    "iso-8859-8-i": "iso8859-8", "csiso88598i": "iso8859-8", "logical": "iso8859-8",
    "x-mac-cyrillic": "mac-cyrillic", "x-mac-ukrainian": "mac-cyrillic",
    "macintosh": "mac-roman", "x-mac-roman": "mac-roman", "mac": "mac-roman", "csmacintosh": "mac-roman",
    "utf-16": "utf-16-le", "ucs-2": "utf-16-le", "unicode": "utf-16-le", "csunicode": "utf-16-le",
    "iso-10646-ucs-2": "utf-16-le", "unicodefeff": "utf-16-le", "utf-16le": "utf-16-le",
    "utf-16be": "utf-16-be", "unicodefffe": "utf-16-be",
}
# WHATWG maps these to the "replacement" decoder (an XSS hazard); treated as "not declared".
_REPLACEMENT_LABELS = frozenset(
    {"csiso2022kr", "hz-gb-2312", "iso-2022-cn", "iso-2022-cn-ext", "iso-2022-kr", "replacement"}
)
# UTF-32 is not a WHATWG encoding, but its BOM is unambiguous and must be tested before UTF-16's.
_BOMS = (
    (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"),
)

_CHARSET_PARAM = re.compile(rb"""charset\s*=\s*["']?\s*([^\s"';,>]+)""", re.IGNORECASE)
_LABEL = re.compile(r"[a-z0-9._:()-]+")
_PRESCAN_BYTES = 4096

_LAZY_SRC_ATTRS = ("data-src", "data-lazy-src", "data-original", "data-lazy", "data-url")
_LAZY_SRCSET_ATTRS = ("srcset", "data-srcset", "data-lazy-srcset")


@dataclass(frozen=True)
class ImageLink:
    """One `<img>` as the parser saw it: attribute values with entities unescaped, not yet resolved."""

    src: str
    alt: str


@dataclass(frozen=True)
class PageImages:
    """The `<img>` candidates of one page plus what resolving and licensing them needs."""

    images: list[ImageLink] = field(default_factory=list)
    base_href: str | None = None
    license: str | None = None
    # parse_page(..., lazy_license=True) leaves the search to license_url(): the extract job asks
    # only for pages that keep a candidate (the search walks the page's links)
    find_license: Callable[[], str | None] | None = field(default=None, repr=False, compare=False)

    def license_url(self) -> str | None:
        """The page's licence URL: `license`, or the deferred search's result (run on each call)."""
        return self.find_license() if self.find_license is not None else self.license


def normalize_charset(label: str | bytes | None) -> str | None:
    """A charset label (any case, quotes, whitespace) -> Python codec name, or None if unusable."""
    if not label:
        return None
    if isinstance(label, bytes):
        label = label.decode("ascii", "replace")
    label = label.strip().lower()
    # Python's codec lookup forgives stray punctuation ('iso8859-2"'); WHATWG labels don't.
    if not _LABEL.fullmatch(label) or label in _REPLACEMENT_LABELS:
        return None
    codec = _WHATWG_LABELS.get(label, label)
    try:
        return codecs.lookup(codec).name
    except LookupError:
        return None


def _charset_from_content_type(content_type: str | None) -> str | None:
    if not content_type:
        return None
    match = _CHARSET_PARAM.search(content_type.encode("latin-1", "replace"))
    return normalize_charset(match.group(1)) if match else None


_SPACE = b" \t\n\f\r"


def _get_attribute(buf: bytes, pos: int) -> tuple[bytes, bytes, int] | None:
    """WHATWG prescan "get an attribute": (lower-cased name, value, next position) or None at '>'."""
    end = len(buf)
    while pos < end and buf[pos] in b" \t\n\f\r/":
        pos += 1
    if pos >= end or buf[pos] == 0x3E:  # '>'
        return None
    start = pos
    pos += 1  # the first character may be '=' and still belongs to the name
    while pos < end and buf[pos] not in b"= \t\n\f\r/>":
        pos += 1
    name = buf[start:pos].lower()
    while pos < end and buf[pos] in _SPACE:
        pos += 1
    if pos >= end or buf[pos] != 0x3D:  # no '=': an attribute without value
        return name, b"", pos
    pos += 1
    while pos < end and buf[pos] in _SPACE:
        pos += 1
    if pos < end and buf[pos] in b"\"'":
        close = buf.find(buf[pos:pos + 1], pos + 1)
        if close < 0:
            return name, buf[pos + 1:].lower(), end
        return name, buf[pos + 1:close].lower(), close + 1
    start = pos
    while pos < end and buf[pos] not in b" \t\n\f\r>":
        pos += 1
    return name, buf[start:pos].lower(), pos


def _charset_from_content(content: bytes) -> bytes | None:
    """WHATWG "extract a character encoding from a meta element" (the http-equiv content value)."""
    pos = 0
    while True:
        pos = content.find(b"charset", pos)
        if pos < 0:
            return None
        pos += 7
        while pos < len(content) and content[pos] in _SPACE:
            pos += 1
        if pos < len(content) and content[pos] == 0x3D:
            break
    pos += 1
    while pos < len(content) and content[pos] in _SPACE:
        pos += 1
    if pos >= len(content):
        return None
    if content[pos] in b"\"'":
        close = content.find(content[pos:pos + 1], pos + 1)
        return content[pos + 1:close] if close > 0 else None
    return re.split(rb"[\s;]", content[pos:], maxsplit=1)[0] or None


def _meta_charset(attrs: dict[bytes, bytes]) -> str | None:
    label = attrs.get(b"charset")
    if label is None:
        if attrs.get(b"http-equiv") != b"content-type" or b"content" not in attrs:
            return None
        label = _charset_from_content(attrs[b"content"])
    codec = normalize_charset(label)
    # A page can't declare itself UTF-16 in markup it wrote in an ASCII-compatible way.
    if codec is not None and codec.startswith(("utf-16", "utf-32")):
        return "utf-8"
    return codec


def prescan_charset(body: bytes) -> str | None:
    """WHATWG "prescan a byte stream to determine its encoding" over the first few KB."""
    buf = body[:_PRESCAN_BYTES]
    end = len(buf)
    pos = buf.find(b"<")
    while 0 <= pos < end:
        if buf.startswith(b"<!--", pos):
            close = buf.find(b"-->", pos + 2)
            if close < 0:
                return None
            pos = close + 2  # at the comment's '>': the search below starts after it
        elif buf[pos:pos + 5].lower() == b"<meta" and pos + 5 < end and buf[pos + 5] in b" \t\n\f\r/":
            pos += 5
            attrs: dict[bytes, bytes] = {}
            while (attr := _get_attribute(buf, pos)) is not None:
                name, value, pos = attr
                attrs.setdefault(name, value)  # the first of two same-named attributes wins
            if buf.find(b">", pos) < 0:  # the tag runs past the data: the prescan gives up
                return None
            codec = _meta_charset(attrs)
            if codec is not None:
                return codec
        elif pos + 1 < end and (chr(buf[pos + 1]).isalpha() or (
                buf[pos + 1] == 0x2F and pos + 2 < end and chr(buf[pos + 2]).isalpha())):
            # any other tag: its attributes are skipped as attributes, so a quoted '>' doesn't end it
            pos += 1
            while pos < end and buf[pos] not in b" \t\n\f\r>":
                pos += 1
            while (attr := _get_attribute(buf, pos)) is not None:
                pos = attr[2]
        elif buf.startswith((b"<!", b"</", b"<?"), pos):
            close = buf.find(b">", pos + 1)
            if close < 0:
                return None
            pos = close
        pos = buf.find(b"<", pos + 1)
    return None


def _detect(body: bytes) -> str:
    """Undeclared, not UTF-8: statistical detection (slow, but only for a small share of pages)."""
    # Imported lazily: most pages never get here.
    from charset_normalizer import from_bytes

    best = from_bytes(body[:65536]).best()
    codec = normalize_charset(best.encoding) if best is not None else None
    return codec or "cp1252"


def _sniff(body: bytes, content_type: str | None) -> tuple[str, str, int]:
    """(text, codec, BOM length) of one body; see the module docstring for the order."""
    for bom, codec in _BOMS:
        if body.startswith(bom):
            return body[len(bom):].decode(codec, "replace"), codec, len(bom)
    declared = _charset_from_content_type(content_type) or prescan_charset(body)
    if declared is not None and declared.startswith(("utf-16", "utf-32")):
        return body.decode(declared, "replace"), declared, 0  # ASCII in UTF-16 is "valid UTF-8" too
    # Valid UTF-8 beats any declared legacy charset: real legacy text with non-ASCII bytes is
    # almost never valid UTF-8, while UTF-8 pages that declare gb2312 or iso-8859-1 (templates,
    # server defaults) are common. Pure ASCII decodes the same either way.
    try:
        return body.decode("utf-8"), "utf-8", 0
    except UnicodeDecodeError:
        pass
    if declared is None:
        declared = _detect(body)
        if declared == "utf-8":  # the detector liked UTF-8 despite the invalid bytes
            declared = "cp1252"
    try:
        return body.decode(declared), declared, 0
    except UnicodeDecodeError:
        if declared != "utf-8":
            logger.debug("bytes invalid in declared charset %s; decoding with replacement", declared)
        return body.decode(declared, "replace"), declared, 0


def decode_html(body: bytes, content_type: str | None) -> tuple[str, str]:
    """Text of an HTML body and the Python codec name used; never raises on bad bytes."""
    text, codec, _ = _sniff(body, content_type)
    return text, codec


def _lazy_src(attrs: dict) -> str:
    for name in _LAZY_SRC_ATTRS:
        value = (attrs.get(name) or "").strip()
        if value and not value.lower().startswith("data:"):
            return value
    for name in _LAZY_SRCSET_ATTRS:
        value = (attrs.get(name) or "").strip()
        if value:
            # srcset parsing rules: a candidate's URL runs to the first whitespace, trailing commas
            # removed ("a.jpg 1x, b.jpg 2x" and "a.jpg,b.jpg" both start with a.jpg).
            first = value.split(None, 1)[0].rstrip(",")
            if first and not first.lower().startswith("data:"):
                return first
    return ""


def _find_license(tree: LexborHTMLParser, page_url: str, base_href: str | None) -> str | None:
    # only links with a rel or a creativecommons.org href can qualify: let lexbor pick them (in
    # document order) instead of walking every link of the page in Python; license.py decides
    links = ((node.attributes.get("href") or "", node.attributes.get("rel")) for node in tree.css(LICENSE_LINKS_CSS))
    return page_license(links, page_url, base_href)


def _needs_decode(body: bytes, content_type: str | None) -> bool:
    """True when byte-level checks for ASCII markup cannot be trusted (UTF-16/32 pages)."""
    if body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_BE)):
        return True
    declared = _charset_from_content_type(content_type)
    return declared is not None and declared.startswith(("utf-16", "utf-32"))


def _utf8_for_parser(body: bytes, content_type: str | None) -> bytes:
    """The page re-encoded as UTF-8, which is what lexbor assumes for bytes whatever the page declares."""
    text, codec, bom = _sniff(body, content_type)
    if codec == "utf-8":
        return body[bom:]  # already UTF-8 (invalid sequences get U+FFFD from lexbor, as from Python)
    return text.encode("utf-8", "surrogatepass")


def _may_have_candidates(lowered: bytes) -> bool:
    """Cheap byte check: every candidate needs an `<img` (or `<image`, which the parser renames)
    with an `alt`; a page without both needs no decoding and no parsing. Plain `in` on lower-cased
    bytes: case-insensitive regexes cost more than the whole lexbor parse."""
    return (b"<img" in lowered or b"<image" in lowered) and b"alt" in lowered


def parse_page(body: bytes, content_type: str | None, page_url: str, lazy_attributes: bool = False,
               lazy_license: bool = False) -> PageImages:
    """Every `<img>` with non-empty src and alt (document order), first `<base href>`, CC licence URL
    (with lazy_license, found when PageImages.license_url() is called, not here)."""
    if _needs_decode(body, content_type):
        utf8 = _utf8_for_parser(body, content_type)
        lowered = utf8.lower()
        if not _may_have_candidates(lowered):
            return PageImages()
    else:
        lowered = body.lower()  # ASCII-compatible charsets: markup bytes are the same in all of them
        if not _may_have_candidates(lowered):
            return PageImages()
        utf8 = _utf8_for_parser(body, content_type)
    tree = LexborHTMLParser(utf8)
    images = []
    for node in tree.css("img"):
        attrs = node.attributes
        alt = attrs.get("alt")
        if not alt or not alt.strip():
            continue
        src = attrs.get("src") or ""
        if lazy_attributes and (not src.strip() or src.strip().lower().startswith("data:")):
            src = _lazy_src(attrs) or src
        if src.strip():
            images.append(ImageLink(src=src, alt=alt))
    if not images:
        return PageImages()
    base = tree.css_first("base[href]")
    base_href = base.attributes.get("href") if base is not None else None
    if not (b"license" in lowered or b"creativecommons.org" in lowered):
        return PageImages(images=images, base_href=base_href)
    if lazy_license:
        return PageImages(images=images, base_href=base_href,
                          find_license=lambda: _find_license(tree, page_url, base_href))
    return PageImages(images=images, base_href=base_href, license=_find_license(tree, page_url, base_href))
