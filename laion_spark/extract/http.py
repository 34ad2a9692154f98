"""HTTP response message bytes (a WARC response block or ARC record content) -> HttpResponse.

INPUT:  the raw HTTP/1.x response as archived: status line, headers, body; possibly LF-only line
        ends, a missing reason phrase, latin-1 header bytes, no blank line, a chunked body (with or
        without trailers, sometimes broken) and a gzip/deflate/brotli Content-Encoding.
OUTPUT: HttpResponse(status, headers, body): lower-case header names (repeats joined with ', '),
        the body with Transfer-Encoding: chunked and Content-Encoding undone where that works and
        left raw where it does not. Never raises.
"""

from __future__ import annotations

import logging
import re
import zlib
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

__all__ = ["HttpResponse", "parse_http_response"]

_HEADER_END = re.compile(rb"\r?\n\r*\n")
_STATUS = re.compile(rb"HTTP/\d(?:\.\d)?\s+(\d{3})")
_MAX_DECODED = 1 << 27  # decompressed body cap (128 MiB): a gzip bomb in one record must not OOM


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
        try:
            size = int(size_field, 16)
        except ValueError:
            return None
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


def _decompress(body: bytes, coding: str) -> bytes | None:
    try:
        if coding in ("gzip", "x-gzip"):
            d = zlib.decompressobj(47)  # gzip or zlib header, auto-detected
            out = d.decompress(body, _MAX_DECODED)
        elif coding == "deflate":
            try:  # "deflate" is zlib-wrapped per RFC, raw deflate in practice too
                d = zlib.decompressobj(15)
                out = d.decompress(body, _MAX_DECODED)
            except zlib.error:
                d = zlib.decompressobj(-15)
                out = d.decompress(body, _MAX_DECODED)
        elif coding == "br":
            import brotli

            out = brotli.decompress(body)
        else:
            return None
    except Exception as exc:  # noqa: BLE001  (any decoder failure means: keep the raw body)
        logger.debug("content-encoding %s not undone: %s", coding, exc)
        return None
    return out


def parse_http_response(block: bytes) -> HttpResponse:
    """Parse an archived HTTP response; see the module docstring."""
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
        decoded = _decompress(body, coding)
        if decoded is None:
            break  # already decoded by the archiver (ClueWeb09) or broken: keep what we have
        body = decoded
    return HttpResponse(status, headers, body)
