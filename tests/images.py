"""Test helper: small generated images as encoded bytes, for the download tests.

INPUT  -> a format, a size, a Pillow mode and what to draw
OUTPUT -> bytes of that image (make_image, stripes, gradient16, animated, png_claiming, ...)

Everything is drawn with Pillow and numpy only, deterministically (no randomness without a seed),
so that tests can state what the pixels are without running the code under test.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)

# modes a solid colour is drawn in; the value is what each mode's fill colour is
_FILL = {
    "RGB": lambda rgb: rgb,
    "RGBA": lambda rgb: (*rgb, 255),
    "L": lambda rgb: rgb[0],
    "LA": lambda rgb: (rgb[0], 255),
    "1": lambda rgb: 255 if rgb[0] else 0,
    "CMYK": lambda rgb: (255 - rgb[0], 255 - rgb[1], 255 - rgb[2], 0),
    "I;16": lambda rgb: rgb[0] * 257,
}


def encode(im: Image.Image, fmt: str, **save) -> bytes:
    """Pillow image -> bytes in fmt (JPEG, PNG, WEBP, GIF, BMP, TIFF)."""
    out = io.BytesIO()
    im.save(out, fmt, **save)
    return out.getvalue()


def solid(size: tuple[int, int], mode: str = "RGB", rgb: tuple[int, int, int] = RED) -> Image.Image:
    """A one-colour image in `mode` (P: a palette image of that colour)."""
    if mode == "P":
        return Image.new("RGB", size, rgb).convert("P")
    return Image.new(mode, size, _FILL[mode](rgb))


def textured(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """An RGB photo stand-in: smooth gradients plus seeded noise (compresses like a photo, > 5 KB)."""
    w, h = size
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    base = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                           np.broadcast_to((x + y) / 2, (h, w, 1))], axis=2)
    noisy = base + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def make_image(fmt: str = "JPEG", size: tuple[int, int] = (64, 48), mode: str = "RGB",
               rgb: tuple[int, int, int] = RED, **save) -> bytes:
    """A solid-colour image of `mode`, encoded as `fmt`."""
    return encode(solid(size, mode, rgb), fmt, **save)


def stripes(size: tuple[int, int], colors=(RED, GREEN, BLUE), vertical: bool = True) -> Image.Image:
    """Equal bands of colours: left to right (vertical=True) or top to bottom."""
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    n = len(colors)
    for i, color in enumerate(colors):
        if vertical:
            arr[:, i * w // n:(i + 1) * w // n] = color
        else:
            arr[i * h // n:(i + 1) * h // n, :] = color
    return Image.fromarray(arr)


def gradient16(size: tuple[int, int]) -> Image.Image:
    """An I;16 image going from 0 (left) to 65535 (right)."""
    w, h = size
    row = np.linspace(0, 65535, w).round().astype(np.uint16)
    return Image.fromarray(np.broadcast_to(row, (h, w)).copy())


def animated(fmt: str, size: tuple[int, int], colors=(RED, BLUE)) -> bytes:
    """A multi-frame GIF / WebP / APNG, one solid colour per frame."""
    frames = [Image.new("RGB", size, c) for c in colors]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def with_orientation(im: Image.Image, orientation: int, fmt: str = "JPEG", **save) -> bytes:
    """An image saved with an EXIF Orientation tag (stored pixels unchanged)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(im, fmt, exif=exif.tobytes(), **save)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, color_type: int = 2) -> bytes:
    """A PNG whose (valid) IHDR says width x height but whose IDAT holds one row of zeros: a header
    bomb. Decoding it would allocate the whole claimed canvas before failing."""
    channels = {0: 1, 2: 3, 6: 4}[color_type]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + min(width, 4096) * channels))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def webp_claiming(width: int, height: int) -> bytes:
    """A WebP whose VP8X chunk claims a width x height canvas (RIFF, 'WEBP', VP8X: 4 bytes of flags
    and reserved bits, then 24-bit width-1 and height-1, per the WebP container spec) and holds no
    image data: a header bomb."""
    vp8x = b"VP8X" + (10).to_bytes(4, "little") + b"\x00" * 4 + (width - 1).to_bytes(3, "little") \
        + (height - 1).to_bytes(3, "little")
    return b"RIFF" + (4 + len(vp8x)).to_bytes(4, "little") + b"WEBP" + vp8x
