"""embed's decode_image: stored bytes -> a decoded image, or a refusal that names the reason.

Expectations are stated here, not computed by the code under test: header bombs built by
tests/images.py with a known claimed size, images Pillow writes in formats download never stores,
and Pillow's own limit as Pillow ships it.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from laion_spark.download import image as image_module
from laion_spark.embed.encode import TOO_MANY_PIXELS, UNSUPPORTED_FORMAT, ImageRefused, decode_image
from tests import images as G


@pytest.mark.parametrize(("body", "size"), [
    (G.png_claiming(20000, 10000, color_type=0), "20000x10000 = 200000000"),
    (G.webp_claiming(20000, 15000), "20000x15000 = 300000000"),
])
def test_header_bombs_of_stored_formats_are_refused_before_decoding(body, size):
    with pytest.raises(ImageRefused) as refused:
        decode_image(body, max_pixels=89_478_484)
    assert refused.value.reason == TOO_MANY_PIXELS and size in str(refused.value)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "ICO"])
def test_formats_download_never_stores_are_refused_unparsed(fmt, monkeypatch):
    opened = []
    original = image_module.open_image
    monkeypatch.setattr(image_module, "open_image", lambda *a: opened.append(a) or original(*a))
    png = decode_image(G.make_image("PNG", (20, 10)))  # the spy sees what is opened
    assert png.size == (20, 10) and len(opened) == 1
    with pytest.raises(ImageRefused) as refused:
        decode_image(G.make_image(fmt, (32, 32)))
    assert refused.value.reason == UNSUPPORTED_FORMAT and fmt.lower() in str(refused.value)
    assert len(opened) == 1


def test_our_limit_decides_under_any_host_limit(monkeypatch):
    """A host that lowered Pillow's process-wide limit: Image.open refuses, embed's max_pixels decides."""
    body = G.make_image("PNG", (100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(body))
    assert decode_image(body, max_pixels=10_000).size == (100, 100)
    with pytest.raises(ImageRefused):
        decode_image(body, max_pixels=9_999)
    assert Image.MAX_IMAGE_PIXELS == 1_000


def test_bytes_no_magic_check_knows_are_a_decode_error():
    with pytest.raises(Image.UnidentifiedImageError):
        decode_image(b"<html>not an image</html>" * 4)
