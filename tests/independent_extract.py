"""An independent img/alt extraction for checking the product on real archives.

INPUT  -> one archive file path
OUTPUT -> Counter of (page_url, url, text) under the LAION default rules

Written apart from laion_spark on purpose: records are read with warcio (the product does not
use it for WARC), or, where warcio gives up, by splitting the plain bytes at `WARC/` header
lines; encodings are sniffed with html5lib's WHATWG prescan; pages are parsed with lxml
(libxml2) instead of lexbor; the rules are re-implemented here in a few lines.
"""

from __future__ import annotations

import gzip
import io
import re
import zlib
from collections import Counter
from urllib.parse import urljoin, urlsplit, urlunsplit

import lxml.html
from html5lib._inputstream import HTMLBinaryInputStream
from warcio.archiveiterator import ArchiveIterator

HTML_TYPES = ("text/html", "application/xhtml+xml")


def _decode(body: bytes, content_type: str) -> str:
    charset = None
    m = re.search(r"charset\s*=\s*[\"']?([\w.:-]+)", content_type or "", re.I)
    if m:
        charset = m.group(1)
    try:
        stream = HTMLBinaryInputStream(body, override_encoding=None, transport_encoding=charset)
        name = stream.charEncoding[0].name
    except Exception:  # noqa: BLE001
        name = "utf-8"
    if name in ("windows-1252", "cp1252") or not name:
        # html5lib's default when nothing is declared; most undeclared pages are UTF-8
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if name in ("gb2312", "gbk"):
        name = "gb18030"
    try:
        return body.decode(name)
    except (UnicodeDecodeError, LookupError):
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            return body.decode(name if name else "utf-8", errors="replace")


def _rules(page_url: str, base: str | None, src: str, alt: str):
    text = " ".join(alt.split())
    if len(text) < 5:
        return None
    text = text[:2000]
    root = urljoin(page_url, base.strip()) if base else page_url
    url = urljoin(root, src.strip())
    parts = urlsplit(url)
    url = urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, ""))
    if parts.scheme.lower() not in ("http", "https") or len(url) > 2000:
        return None
    if parts.path.lower().endswith((".svg", ".gif")):
        return None
    return url, text


def page_pairs(body: bytes, content_type: str, page_url: str) -> list[tuple[str, str]]:
    """HTML bytes -> [(url, text)] kept by the default rules."""
    if not body.strip():
        return []
    # lxml takes no str that starts with an XML declaration (XHTML pages): drop it
    text = re.sub(r"^\s*<\?xml[^>]*>", "", _decode(body, content_type))
    try:
        doc = lxml.html.document_fromstring(text)
    except Exception:  # noqa: BLE001  # lxml refuses some documents (e.g. only whitespace after decoding)
        return []
    bases = doc.xpath("//base[@href]")
    base = bases[0].get("href") if bases else None
    out = []
    for img in doc.iter("img"):
        src, alt = img.get("src"), img.get("alt")
        if not src or not src.strip() or alt is None:
            continue
        kept = _rules(page_url, base, src, alt)
        if kept:
            out.append(kept)
    return out


def _http_split(block: bytes) -> tuple[str, bytes] | None:
    """Raw HTTP response -> (content-type, body) with chunked/gzip undone where easy."""
    m = re.search(rb"\r?\n\r?\n", block)
    if not m or not block.startswith(b"HTTP/"):
        return None
    head, body = block[: m.start()].decode("latin-1"), block[m.end():]
    headers = {}
    for line in head.splitlines()[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        out, rest = b"", body
        while True:
            line, _, rest = rest.partition(b"\n")
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                out = body  # not really chunked: keep the raw body
                break
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size:].lstrip(b"\r\n")
        body = out
    if headers.get("content-encoding", "").lower() in ("gzip", "x-gzip"):
        try:
            body = zlib.decompress(body, 47)
        except zlib.error:
            pass
    return headers.get("content-type", ""), body


def _from_warcio(data: bytes):
    for rec in ArchiveIterator(io.BytesIO(data), arc2warc=True):
        if rec.rec_type != "response" or rec.http_headers is None:
            continue
        ctype = rec.http_headers.get_header("Content-Type") or ""
        if ctype.split(";")[0].strip().lower() not in HTML_TYPES:
            continue
        try:
            body = rec.content_stream().read()
        except Exception:  # noqa: BLE001
            continue
        yield rec.rec_headers.get_header("WARC-Target-URI").strip("<>"), ctype, body


def _from_split(data: bytes):
    """Plain WARC bytes whose lengths/separators are off (ClueWeb09): split at header lines."""
    starts = [m.start() for m in re.finditer(rb"(?m)^WARC/\d\.\d+\r?\n", data)]
    for a, b in zip(starts, starts[1:] + [len(data)]):
        chunk = data[a:b]
        m = re.search(rb"\r?\n\r?\n", chunk)
        if not m:
            continue
        head = chunk[: m.start()].decode("latin-1")
        if not re.search(r"(?mi)^WARC-Type:\s*response", head):
            continue
        uri = re.search(r"(?mi)^WARC-Target-URI:\s*(\S+)", head)
        http = _http_split(chunk[m.end():])
        if uri and http and http[0].split(";")[0].strip().lower() in HTML_TYPES:
            yield uri.group(1).strip("<>"), http[0], http[1].rstrip(b"\r\n")


def file_candidates(path: str) -> Counter:
    """Archive path -> Counter of (page_url, url, text)."""
    with open(path, "rb") as fh:
        raw = fh.read()
    data = raw
    if raw[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(raw)  # whole-file and per-record gzip both gunzip in full
        except (OSError, EOFError, zlib.error):
            data = raw  # damaged: let warcio stream what it can
    pages: list = []
    # warcio streams per-record gzip itself; whole-file gzip it refuses, so also try the
    # gunzipped bytes, and keep whichever reading found more pages
    for candidate_input in (raw, data) if data is not raw else (raw,):
        found = []
        try:
            for page in _from_warcio(candidate_input):  # keep what comes before a damaged member
                found.append(page)
        except Exception:  # noqa: BLE001
            pass
        if len(found) > len(pages):
            pages = found
    if b"WARC/0.18" in data[:20] or not pages:
        split = list(_from_split(data)) if data[:5] == b"WARC/" else []
        if len(split) > len(pages):
            pages = split
    out: Counter = Counter()
    for page_url, ctype, body in pages:
        for url, text in page_pairs(body, ctype, page_url):
            out[(page_url, url, text)] += 1
    return out
