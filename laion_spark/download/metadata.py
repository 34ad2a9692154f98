"""Metadata out of an image file, pixels untouched: what a stored-as-downloaded image must not carry.

INPUT  -> the bytes of a JPEG, PNG or WebP file and its Pillow format name
OUTPUT -> the same file without EXIF (GPS included), XMP, IPTC, comments and text chunks, every byte of
          pixel data unchanged; the input itself when nothing goes; None when the structure does not
          parse (the caller then re-encodes, which drops metadata too)

Why: download's pass-through path (resize_mode=no, an upright RGB image) stores the downloaded bytes,
and EXIF is not ours to republish (a phone's photo carries where it was taken). Walking the segments
is exact and costs no re-encode, so the pixels and their hashes' meaning stay the same.
"""

from __future__ import annotations

import re
import struct

# strip_metadata: what a stored-as-downloaded file keeps. JPEG: every segment that is not APPn / COM,
# and of those APP0 (JFIF), APP2 ICC_PROFILE and APP14 (Adobe: its transform flag says whether the
# data is RGB or YCbCr); APP1 (EXIF, XMP), APP13 (IPTC / Photoshop), the other APPn (vendor blocks:
# Ducky's copyright text, FlashPix, JUMBF) and COM go. PNG: the critical chunks and the ancillary ones
# that change how the pixels look or are laid out; eXIf, tEXt / zTXt / iTXt (XMP, ImageMagick's "Raw
# profile type exif"), tIME and private chunks go. WebP: the chunks of the container spec that hold
# image data or colour; EXIF, XMP and unknown chunks go (and their VP8X flags). Decoders ignore what
# goes, so the pixels stay the same.
_JPEG_KEPT_APPS = {0xE0: b"", 0xE2: b"ICC_PROFILE\x00", 0xEE: b""}  # APPn kept -> its payload's prefix
_JPEG_METADATA = frozenset({*range(0xE0, 0xF0), 0xFE})  # APP0..15, COM
_JPEG_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0..7: markers without a length field
# the marker that ends entropy-coded data: FF00 is a data byte, RSTn and TEM belong to the scan
_JPEG_SCAN_END = re.compile(rb"\xff+([^\x00\x01\xd0-\xd7\xff])")
_PNG_KEPT_ANCILLARY = frozenset({b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"cICP", b"mDCV",
                                 b"cLLI", b"bKGD", b"pHYs", b"hIST", b"sPLT", b"acTL", b"fcTL", b"fdAT"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_WEBP_KEPT = frozenset({b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ICCP", b"ANIM", b"ANMF"})
_WEBP_METADATA_FLAGS = 0x08 | 0x04  # VP8X flags: EXIF, XMP



def strip_metadata(body: bytes, fmt: str) -> bytes | None:
    """A JPEG / PNG / WebP file + its Pillow format -> the same file without its metadata (what goes:
    see the comment above _JPEG_KEPT_APPS), every byte of pixel data unchanged; the body itself
    when nothing goes; None when its segment / chunk structure does not parse (or another format)."""
    strip = {"JPEG": _strip_jpeg, "PNG": _strip_png, "WEBP": _strip_webp}.get(fmt)
    try:
        parts = strip(body) if strip is not None else None
    except (IndexError, ValueError, struct.error):  # a length field pointing past the end, read short
        return None
    if parts is None:
        return None
    out = b"".join(parts)
    return body if out == body else out


def _strip_jpeg(body: bytes) -> list | None:
    """JPEG -> its kept pieces, SOI to EOI (what follows EOI goes too: phone trailers, appended files)."""
    if body[:2] != b"\xff\xd8":
        return None
    parts, pos, in_scan = [body[:2]], 2, False
    while True:
        if in_scan:
            found = _JPEG_SCAN_END.search(body, pos)
            if found is None:
                return None
            parts.append(body[pos:found.start()])
            start, marker = found.start(), found[1][0]
            pos = found.end()
        else:
            while body[pos:pos + 2] == b"\xff\xff":
                pos += 1  # fill bytes before a marker
            if body[pos] != 0xFF:
                return None
            start, marker = pos, body[pos + 1]
            pos += 2
        if marker == 0xD9:  # EOI
            parts.append(b"\xff\xd9")
            return parts
        if marker in _JPEG_NO_LENGTH:
            parts.append(body[start:pos])
            continue
        if marker == 0xD8:
            return None
        end = pos + struct.unpack_from(">H", body, pos)[0]
        if end > len(body) or end < pos + 2:
            return None
        segment = body[pos - 2:end]
        prefix = _JPEG_KEPT_APPS.get(marker, None if marker in _JPEG_METADATA else b"")
        if prefix is not None and segment[4:].startswith(prefix):
            parts.append(segment)
        in_scan = in_scan or marker == 0xDA
        pos = end


def _strip_png(body: bytes) -> list | None:
    """PNG -> its kept chunks, signature to IEND (what follows IEND goes)."""
    if not body.startswith(_PNG_SIGNATURE):
        return None
    parts, pos = [_PNG_SIGNATURE], len(_PNG_SIGNATURE)
    while pos + 12 <= len(body):
        length, kind = struct.unpack_from(">I4s", body, pos)
        end = pos + 12 + length
        if end > len(body):
            return None
        if kind[0] & 0x20 == 0 or kind in _PNG_KEPT_ANCILLARY:  # upper-case first letter: critical
            parts.append(body[pos:end])
        if kind == b"IEND":
            return parts
        pos = end
    return None


def _strip_webp(body: bytes) -> list | None:
    """WebP -> RIFF header with the new size, then its kept chunks (what follows the RIFF size goes)."""
    if body[:4] != b"RIFF" or body[8:12] != b"WEBP":
        return None
    riff_end = 8 + struct.unpack_from("<I", body, 4)[0]
    if riff_end > len(body):
        return None
    chunks, pos = [], 12
    while pos < riff_end:
        kind, size = struct.unpack_from("<4sI", body, pos)
        end = pos + 8 + size + (size & 1)  # chunks are padded to an even size
        if end > riff_end:
            return None
        if kind in _WEBP_KEPT:
            chunk = body[pos:end]
            if kind == b"VP8X":  # no longer announces the EXIF / XMP chunks it had
                chunk = chunk[:8] + bytes([chunk[8] & ~_WEBP_METADATA_FLAGS & 0xFF]) + chunk[9:]
            chunks.append(chunk)
        pos = end
    return [b"RIFF", struct.pack("<I", 4 + sum(map(len, chunks))), b"WEBP", *chunks]
