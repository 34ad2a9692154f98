"""A query image's size from its header, checked before anything decodes it.

INPUT  -> the bytes of a query image (a request's base64 `image`, or what its `image_url` fetched) and the
          server's serve.max_query_pixels
OUTPUT -> None when the image is within the bound, or one that no stored format opens (the Searcher then
          refuses it with its own message); ApiError(413) naming its size when it is over

Why here and not Pillow's bomb guard: the Searcher decodes with embed's bound (89 Mpx, about 300 MB once
decoded), which is right for one Spark task but not for a service taking requests by the dozen, where a
PNG of a few kilobytes can say 89 Mpx. The header is read with the download stage's opener (no pixel
decoded, Pillow's process-wide Image.MAX_IMAGE_PIXELS neither read nor set), and the canvas of a WebP is
read before its decoder is created, as embed does.
"""

from __future__ import annotations

from laion_spark.serve.api import ApiError


def image_size(data: bytes) -> tuple[int, int] | None:
    """Image bytes -> (width, height) from the header (of the canvas where the format allocates one first),
    or None when no stored format (JPEG, PNG, WebP) opens them."""
    from PIL import Image

    from laion_spark.download.image import STORED_FORMATS, canvas_size, open_image, sniff_format

    fmt = sniff_format(data[:16])
    if fmt is not None and fmt not in STORED_FORMATS:
        return None  # a GIF, an icon: the Searcher refuses those unparsed
    size = canvas_size(data, fmt)
    if size is not None:
        return size
    try:
        return open_image(data, sorted(STORED_FORMATS)).size
    except Image.DecompressionBombError as exc:  # a WebP without the chunk canvas_size reads: Pillow's own check
        raise ApiError(413, f"the query image is refused before decoding: {exc}") from None
    except Exception:  # noqa: BLE001 - not an image a stored format opens: the Searcher says why
        return None


def check_pixels(data: bytes, max_pixels: int) -> None:
    """Query image bytes -> None, or ApiError(413) when its header says more than max_pixels pixels."""
    size = image_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        width, height = size
        raise ApiError(413, f"the query image is {width}x{height} = {width * height} pixels; this server decodes "
                       f"at most {max_pixels} (serve.max_query_pixels): send a smaller copy (CLIP looks at a few "
                       "hundred pixels a side)")
