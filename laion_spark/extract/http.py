"""HTTP response message bytes (a WARC response block or ARC record content) -> HttpResponse.

INPUT:  the raw HTTP/1.x response as archived: status line, headers, body; possibly LF-only line
        ends, a missing reason phrase, latin-1 header bytes, no blank line, a chunked body (with or
        without trailers, sometimes broken) and a gzip/deflate/brotli Content-Encoding.
OUTPUT: HttpResponse(status, headers, body): lower-case header names (repeats joined with ', '),
        the body with Transfer-Encoding: chunked and Content-Encoding undone where that works and
        left raw where it does not, cut to the caller's ``max_body`` bytes (extract passes
        ``extract.max_html_bytes``: one cap for raw, gzip, deflate and brotli bodies, applied while
        decoding, so a decompression bomb never inflates past it). Never raises.
"""

from __future__ import annotations

import logging
import re
import zlib
from dataclasses import dataclass, field

from laion_spark.config import ExtractConfig

logger = logging.getLogger(__name__)

__all__ = ["HttpResponse", "http_head_length", "parse_http_response"]

_HEADER_END = re.compile(rb"\r?\n\r*\n")
_STATUS = re.compile(rb"HTTP/\d(?:\.\d)?\s+(\d{3})")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")  # int(x, 16) alone takes '-5', '+5', '0x5', '1_0'


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """An archived HTTP response; ``status`` is None when the status line cannot be read."""

    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def _dechunk(data: bytes) -> bytes | None:
    """Undo chunked transfer coding; None when the framing is broken (caller keeps the raw body)."""
    out = []
    pos = 0
    n = len(data)
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            # no terminating 0-chunk: accept what was decoded if anything (truncated captures)
            return b"".join(out) if out else None
        crlf = nl > pos and data[nl - 1] == 0x0D  # chunk data must end the way its size line did
        size_field = data[pos:nl].split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_field):
            return None  # a negative size would walk the position backwards
        size = int(size_field, 16)
        pos = nl + 1
        if size == 0:
            return b"".join(out)  # trailers after the last chunk are ignored
        if pos + size > n:
            out.append(data[pos:])
            return b"".join(out)  # truncated last chunk: keep what is there
        out.append(data[pos : pos + size])
        pos += size
        # each chunk ends with CRLF (LF tolerated)
        if crlf and data.startswith(b"\r\n", pos):
            pos += 2
        elif not crlf and data.startswith(b"\n", pos):
            pos += 1
        elif pos < n:
            return None


def _decompress(body: bytes, coding: str, cap: int) -> bytes | None:
    """One content-coding undone, at most ``cap`` output bytes (what is beyond is never produced).

    Each decoder stops at the cap by itself, so a bomb (a few KB that inflate to GBs) costs
    O(cap) time and memory: zlib through ``max_length``, brotli through ``output_buffer_limit``
    (brotli >= 1.1; an older brotli rejects the argument and the body is kept raw, never inflated
    without a limit).
    """
    try:
        if coding in ("gzip", "x-gzip"):
            return zlib.decompressobj(47).decompress(body, cap)  # gzip or zlib header, auto-detected
        if coding == "deflate":
            try:  # "deflate" is zlib-wrapped per RFC, raw deflate in practice too
                return zlib.decompressobj(15).decompress(body, cap)
            except zlib.error:
                return zlib.decompressobj(-15).decompress(body, cap)
        if coding == "br":
            import brotli

            # the limit stops the output buffer growing once it reaches the cap; it may end a
            # little past it, hence the cut
            return brotli.Decompressor().process(body, output_buffer_limit=cap)[:cap]
    except Exception as exc:  # noqa: BLE001  (any decoder failure means: keep the raw body)
        logger.debug("content-encoding %s not undone: %s", coding, exc)
    return None


def http_head_length(block: bytes) -> int | None:
    """The first bytes of an HTTP response -> the length of its status line and headers with the blank
    line after them (where the body starts); None when there is no blank line in them."""
    m = _HEADER_END.search(block)
    return m.end() if m is not None else None


def parse_http_response(block: bytes, max_body: int = ExtractConfig.max_html_bytes) -> HttpResponse:
    """Parse an archived HTTP response; the body is cut to ``max_body`` bytes (see the module docstring)."""
    m = _HEADER_END.search(block)
    if m is None:
        head, body = block, b""  # headers only, no blank line
    else:
        head, body = block[: m.start()], block[m.end() :]
    lines = head.split(b"\n")
    status_match = _STATUS.match(lines[0].strip()) if lines else None
    status = int(status_match.group(1)) if status_match else None
    headers: dict[str, str] = {}
    name = None
    for raw in lines[1:] if status_match or lines[0].startswith(b"HTTP/") else lines:
        line = raw.rstrip(b"\r")
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and name is not None:  # obsolete line folding
            headers[name] += " " + line.strip().decode("latin-1")
            continue
        key, sep, value = line.partition(b":")
        if not sep:
            continue
        name = key.strip().decode("latin-1").lower()
        text = value.strip().decode("latin-1")  # HTTP header bytes are latin-1 by definition
        headers[name] = f"{headers[name]}, {text}" if name in headers else text
    if "chunked" in headers.get("transfer-encoding", "").lower():
        decoded = _dechunk(body)
        if decoded is not None:
            body = decoded
    codings = [c.strip().lower() for c in headers.get("content-encoding", "").split(",") if c.strip()]
    for coding in reversed(codings):  # codings apply in order, so undo them last first
        if coding == "identity":
            continue
        decoded = _decompress(body, coding, max_body)
        if decoded is None:
            break  # already decoded by the archiver (ClueWeb09) or broken: keep what we have
        body = decoded
    return HttpResponse(status, headers, body[:max_body])
