"""WARC -> WAT: Common Crawl's metadata records (JSON envelope), written with Python's html.parser, not extract's.

INPUT  -> a WARC file URI (read with warcio, which also undoes chunked transfer and gzip/deflate
          content encoding) and the URI of the WAT file to write
OUTPUT -> a gzip WAT file (one member per record): a warcinfo record, then one `metadata` record
          (Content-Type application/json, WARC-Target-URI the page, WARC-Refers-To the response)
          per response record, holding the envelope ia-web-commons writes:
          Envelope -> WARC-Header-Metadata, Payload-Metadata -> HTTP-Response-Metadata
          -> HTML-Metadata -> Head (Title, Base, Metas, Link, Scripts) and Links
          ({"path": "IMG@/src", "url", "alt", "title"}, {"path": "A@/href", "url", "text", "rel"}, ...)

The page is read by the standard library's HTML tokenizer (html.parser), on purpose a different
parser from the one extract uses (lexbor via selectolax), so the WAT path and the WARC path of
extract are checked against each other (tests/test_wat_equivalence.py); and one that every Python
has, so the demo runs from a plain install, without the test-only lxml. Conventions follow ia-web-commons'
ExtractingParseObserver: attribute values with character references decoded, an `alt` key only
when the attribute is there, anchor text trimmed and cut to 128 characters, `<link>` in Head.Link.
Two deliberate differences: Head.Base is the first `<base href>` (the HTML standard; ia-web-commons
keeps the last), and WARC-Date is the response's date (a real WAT carries its extraction date),
so the output depends on the input only.
"""

from __future__ import annotations

import codecs
import io
import json
import logging
import re
import uuid
from html.parser import HTMLParser

log = logging.getLogger(__name__)

HTML_TYPES = ("text/html", "application/xhtml+xml")
MAX_TEXT_LEN = 128  # ia-web-commons' cut for anchor texts
# WHATWG Encoding labels whose Python codec of the same name decodes differently from a browser
_WHATWG = {
    "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "iso-8859-1": "cp1252", "latin1": "cp1252",
    "us-ascii": "cp1252", "ascii": "cp1252", "shift_jis": "cp932", "sjis": "cp932", "euc-kr": "cp949",
    "big5": "big5hkscs", "iso-8859-9": "cp1254", "tis-620": "cp874",
}
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_HEADER_CHARSET = re.compile(r"""charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
# the tags whose URL attributes ia-web-commons lists in Links, besides A, AREA and IMG
_SRC_TAGS = {"iframe": ("src",), "frame": ("src",), "embed": ("src",), "source": ("src",),
             "video": ("src", "poster"), "audio": ("src",), "input": ("src", "formaction")}


def _codec(label: str | None) -> str | None:
    if not label:
        return None
    label = label.strip().lower()
    try:
        return codecs.lookup(_WHATWG.get(label, label)).name
    except LookupError:
        return None


def decode_body(body: bytes, content_type: str | None) -> str:
    """HTML bytes -> text: BOM, charset in the header, then a <meta> in the first 4 KB, then UTF-8."""
    if body.startswith(codecs.BOM_UTF8):
        return body[3:].decode("utf-8", "replace")
    match = _HEADER_CHARSET.search(content_type or "")
    declared = _codec(match.group(1)) if match else None
    if declared is None:
        meta = _META_CHARSET.search(body[:4096])
        declared = _codec(meta.group(1).decode("ascii")) if meta else None
        if declared and declared.startswith("utf-16"):  # a page cannot say so in ASCII markup
            declared = "utf-8"
    for codec in (declared, "utf-8"):
        if codec:
            try:
                return body.decode(codec)
            except UnicodeDecodeError:
                continue
    return body.decode(declared or "cp1252", "replace")


def _pairs(**values) -> dict:
    """ia-web-commons keeps an attribute only when it is present."""
    return {k.replace("_", "-"): v for k, v in values.items() if v is not None}


class _MetadataParser(HTMLParser):
    """The standard library's HTML tokenizer -> Head and Links as ia-web-commons lists them.

    Attribute values come with character references decoded (convert_charrefs); a valueless
    attribute is '' (as in a DOM); a repeated attribute keeps its first value (the HTML standard);
    <script> / <style> contents are text (never tags), comments are skipped, and <noscript>
    content is markup (no scripting, as LAION's crawler and lexbor with scripting off read it).
    A new <a> ends an open one (HTML's rule for nested anchors)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.head: dict = {}
        self.links: list = []
        self._title: list[str] | None = None  # text parts while inside the first <title>
        self._anchor: tuple[dict, list[str]] | None = None  # (link, text parts) while inside an <a>

    def handle_starttag(self, tag: str, attrs) -> None:
        values: dict[str, str] = {}
        for name, value in attrs:
            values.setdefault(name, "" if value is None else value)
        get = values.get
        head, links = self.head, self.links
        if tag == "title" and "Title" not in head and self._title is None:
            self._title = []
        elif tag == "base" and get("href") is not None and "Base" not in head:
            head["Base"] = get("href")
        elif tag == "meta":
            meta = _pairs(name=get("name"), rel=get("rel"), content=get("content"),
                          http_equiv=get("http-equiv"), property=get("property"))
            if meta:
                head.setdefault("Metas", []).append(meta)
        elif tag == "link" and get("href") is not None:
            head.setdefault("Link", []).append(
                {"path": "LINK@/href", "url": get("href"), **_pairs(rel=get("rel"), type=get("type"))})
        elif tag == "script" and get("src") is not None:
            head.setdefault("Scripts", []).append(
                {"path": "SCRIPT@/src", "url": get("src"), **_pairs(type=get("type"))})
        elif tag == "a":
            self._end_anchor()
            if get("href") is not None:
                link = {"path": "A@/href", "url": get("href"),
                        **_pairs(target=get("target"), alt=get("alt"), title=get("title"), rel=get("rel"),
                                 hreflang=get("hreflang"), type=get("type"))}
                links.append(link)
                self._anchor = (link, [])
        elif tag == "area" and get("href") is not None:
            links.append({"path": "AREA@/href", "url": get("href"), **_pairs(rel=get("rel"))})
        elif tag == "img":
            if get("src") is not None:
                links.append({"path": "IMG@/src", "url": get("src"), **_pairs(alt=get("alt"), title=get("title"))})
            if get("longdesc") is not None:
                links.append({"path": "IMG@/longdesc", "url": get("longdesc")})
        elif tag == "form" and get("action") is not None:
            links.append({"path": "FORM@/action", "url": get("action"),
                          **_pairs(target=get("target"), method=get("method"))})
        elif tag in _SRC_TAGS:
            for attr in _SRC_TAGS[tag]:
                if get(attr) is not None:
                    links.append({"path": f"{tag.upper()}@/{attr}", "url": get(attr)})

    def handle_data(self, data: str) -> None:
        if self._title is not None:
            self._title.append(data)
        if self._anchor is not None:
            self._anchor[1].append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._end_title()
        elif tag == "a":
            self._end_anchor()

    def _end_title(self) -> None:
        if self._title is not None:
            self.head["Title"] = " ".join("".join(self._title).split())[:MAX_TEXT_LEN]
            self._title = None

    def _end_anchor(self) -> None:
        if self._anchor is not None:
            link, parts = self._anchor
            text = " ".join("".join(parts).split())[:MAX_TEXT_LEN]
            if text:
                link["text"] = text
            self._anchor = None

    def finish(self) -> dict:
        self.close()
        self._end_title()  # an unclosed <title> or <a> ends with the document
        self._end_anchor()
        out: dict = {}
        if self.head:
            out["Head"] = self.head
        if self.links:
            out["Links"] = self.links
        return out


def html_metadata(text: str) -> dict:
    """Decoded HTML -> the WAT `HTML-Metadata` object (Head and Links), from the standard library's
    HTML tokenizer (html.parser)."""
    parser = _MetadataParser()
    parser.feed(text)
    return parser.finish()


def wat_envelope(record, container: dict) -> dict:
    """A warcio response record (content not yet read) -> the WAT JSON document for it."""
    warc_headers = dict(record.rec_headers.headers)
    payload = {"Actual-Content-Type": record.rec_headers.get_header("Content-Type") or ""}
    envelope = {
        "Format": "WARC",
        "WARC-Header-Metadata": warc_headers,
        "Payload-Metadata": payload,
    }
    http = record.http_headers
    if http is None:
        return {"Container": container, "Envelope": envelope}
    body = record.content_stream().read()  # chunked and gzip/deflate/br undone by warcio
    status, _, reason = (http.statusline or "").partition(" ")
    response = {
        "Response-Message": {"Version": http.protocol or "", "Status": status, "Reason": reason},
        "Headers": dict(http.headers),
        "Entity-Length": str(len(body)),
        "Entity-Trailing-Slop-Length": "0",
    }
    content_type = http.get_header("Content-Type")
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if mime in HTML_TYPES:
        response["HTML-Metadata"] = html_metadata(decode_body(body, content_type))
    payload["HTTP-Response-Metadata"] = response
    return {"Container": container, "Envelope": envelope}


def warc_to_wat(warc_uri: str, wat_uri: str) -> int:
    """Write the WAT of a WARC file -> the number of metadata records written.

    A WARC that cannot be read to its end (e.g. a truncated last member) gives the WAT of the
    records before the damage; a warning says where it stopped.
    """
    import fsspec
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed
    from warcio.warcwriter import WARCWriter

    from laion_spark.io import fsspec_uri

    out = io.BytesIO()
    writer = WARCWriter(out, gzip=True, warc_version="WARC/1.0")
    written = 0
    name = warc_uri.rstrip("/").rsplit("/", 1)[-1]
    with fsspec.open(fsspec_uri(warc_uri), "rb") as handle:
        records = ArchiveIterator(handle)
        info_written = False
        try:
            for record in records:
                if not info_written:
                    info_written = True
                    info = (f"Software-Info: laion-spark demo WAT writer (html.parser)\r\nWARC-Filename: {name}\r\n"
                            "format: WARC File Format 1.0\r\n").encode()
                    writer.write_record(writer.create_warc_record(
                        "", "warcinfo", payload=io.BytesIO(info), length=len(info),
                        warc_content_type="application/warc-fields",
                        warc_headers_dict={
                            "WARC-Date": record.rec_headers.get_header("WARC-Date") or "",
                            "WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'wat:' + name)}>",
                            "WARC-Filename": name.replace(".warc.gz", ".warc.wat.gz"),
                        }))
                if record.rec_type != "response":
                    continue
                container = {"Filename": name, "Compressed": name.endswith(".gz")}
                doc = wat_envelope(record, container)
                # only after the content is read: asking warcio for the offset skips the record's content
                container["Offset"] = str(records.get_record_offset())
                block = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
                response_id = record.rec_headers.get_header("WARC-Record-ID") or ""
                writer.write_record(writer.create_warc_record(
                    record.rec_headers.get_header("WARC-Target-URI") or "", "metadata",
                    payload=io.BytesIO(block), length=len(block), warc_content_type="application/json",
                    warc_headers_dict={
                        "WARC-Date": record.rec_headers.get_header("WARC-Date") or "",
                        "WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'wat:' + response_id)}>",
                        "WARC-Refers-To": response_id,
                    }))
                written += 1
        except (ArchiveLoadFailed, EOFError, OSError, ValueError) as exc:
            log.warning("warc_to_wat: %s unreadable after %d responses: %s", warc_uri, written, exc)
    with fsspec.open(fsspec_uri(wat_uri), "wb") as handle:
        handle.write(out.getvalue())
    return written
