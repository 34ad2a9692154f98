"""One model batch: stored image bytes + alt texts -> L2-normalised CLIP embeddings and their cosine.

INPUT  -> a LoadedModel, up to embed.model_batch_size (image bytes, text) pairs, the autocast dtype
          name (None, fp16, bf16), optionally a thread pool for decoding and preprocessing
OUTPUT -> per row: image and text embedding (float32, unit length) and their cosine, or, for a row
          the model cannot take (no image, the stored image does not decode, no text), no
          embeddings and an error message "reason: detail"

No Spark here: this is the row logic the UDF maps over partitions, and what the tests call directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from laion_spark.config import MAX_PIXELS

# error_message prefixes (the job counts failures by them)
NO_IMAGE = "no_image"
IMAGE_DECODE_ERROR = "image_decode_error"
PREPROCESS_ERROR = "preprocess_error"
NO_TEXT = "no_text"
TOO_MANY_PIXELS = "too_many_pixels"
UNSUPPORTED_FORMAT = "unsupported_format"

_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}


@dataclass
class EmbeddedRows:
    """One model batch's results, row-aligned with its input."""

    image: list  # np.ndarray (float32, unit length) or None
    text: list
    similarity: list  # float or None
    errors: list  # None, or "reason: detail"


class ImageRefused(ValueError):
    """Stored bytes that are not decoded at all: `reason` is the error_message prefix."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS):
    """Stored image bytes -> a fully decoded Pillow image (raises what Pillow raises, or ImageRefused).

    Only the formats the download stage stores (JPEG, PNG, WebP: download/image.py STORED_FORMATS)
    are opened, with the download stage's own opener, which leaves Pillow's process-wide bomb guard
    (Image.MAX_IMAGE_PIXELS, the host's setting) out: an images table may come from elsewhere, so
    the size is checked here from the header before any pixel is decoded. Other formats (a GIF
    allocates its canvas inside open, icon containers decode frames of unchecked size) are refused
    from their magic bytes, unparsed. Bytes no magic check knows are tried as the stored formats,
    and fail as a decode error.
    """
    from PIL import Image

    from laion_spark.download.image import STORED_FORMATS, canvas_size, open_image, sniff_format

    fmt = sniff_format(data[:16])
    if fmt is not None and fmt not in STORED_FORMATS:
        raise ImageRefused(UNSUPPORTED_FORMAT, f"stored image is {fmt}; embed reads what download stores: "
                                               f"{', '.join(sorted(STORED_FORMATS))}")
    def check(size) -> None:
        if size and size[0] * size[1] > max_pixels:
            raise ImageRefused(TOO_MANY_PIXELS, f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels > "
                                                f"embed.max_pixels {max_pixels}")

    check(canvas_size(data, fmt))  # a WebP's canvas, before its decoder is created
    try:
        im = open_image(data, sorted(STORED_FORMATS))
    except Image.DecompressionBombError as exc:  # WebP's open checks against the host's limit itself
        raise ImageRefused(TOO_MANY_PIXELS, f"Pillow's Image.MAX_IMAGE_PIXELS of this process: {exc}") from None
    check(im.size)  # the header's size, before any pixel is decoded
    im.load()
    return im


def _prepare(preprocess, data, text, max_pixels: int):
    """(image bytes, text) -> (pixel tensor, None) or (None, error message)."""
    if data is None:
        return None, f"{NO_IMAGE}: the success row has no stored image"
    if text is None:
        return None, f"{NO_TEXT}: the row has no text"
    try:
        im = decode_image(bytes(data), max_pixels)
    except ImageRefused as exc:
        return None, f"{exc.reason}: {exc}"
    except Exception as exc:  # noqa: BLE001 - any decoder failure (OSError, SyntaxError, bomb, ...) is this row's
        return None, f"{IMAGE_DECODE_ERROR}: {type(exc).__name__}: {exc}"
    try:
        return preprocess(im), None
    except Exception as exc:  # noqa: BLE001 - an image mode the transform cannot take is this row's failure
        return None, f"{PREPROCESS_ERROR}: {type(exc).__name__}: {exc}"


def autocast_context(device: str, autocast: str | None):
    """torch device + autocast dtype name -> the context the towers run in."""
    import torch

    if autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu",
                          dtype=getattr(torch, _DTYPES[autocast]))


def embed_rows(loaded, images: Sequence, texts: Sequence, autocast: str | None = None, pool=None,
               trim_text: bool = True, max_pixels: int = MAX_PIXELS) -> EmbeddedRows:
    """LoadedModel + image bytes + texts (one model batch) -> EmbeddedRows.

    Images are decoded and preprocessed with the model's own preprocess (in `pool`'s threads when
    given: Pillow releases the GIL), texts tokenized with its tokenizer; both towers run once on the
    rows that can be embedded, under torch.inference_mode() and the autocast dtype; embeddings are
    normalised in float32. trim_text runs the text tower without the tokenizer's padding where that
    gives the same features (text.py). Images over max_pixels are refused before decoding.
    """
    import torch

    from laion_spark.embed.text import encode_text

    pairs = list(zip(images, texts))
    prepared = list(pool.map(lambda p: _prepare(loaded.preprocess, *p, max_pixels), pairs)) if pool is not None \
        else [_prepare(loaded.preprocess, *p, max_pixels) for p in pairs]
    n = len(pairs)
    out = EmbeddedRows([None] * n, [None] * n, [None] * n, [err for _, err in prepared])
    ok = [i for i, (pixels, _) in enumerate(prepared) if pixels is not None]
    if not ok:
        return out
    pixels = torch.stack([prepared[i][0] for i in ok])
    tokens = loaded.tokenizer([str(texts[i]) for i in ok])
    device = loaded.device
    if device.startswith("cuda"):
        pixels = pixels.pin_memory()
    with torch.inference_mode(), autocast_context(device, autocast):
        image = loaded.model.encode_image(pixels.to(device, non_blocking=True))
        text = encode_text(loaded.model, tokens.to(device, non_blocking=True), trim=trim_text)
    with torch.inference_mode():
        image = image.float()
        text = text.float()
        image = image / image.norm(dim=-1, keepdim=True)
        text = text / text.norm(dim=-1, keepdim=True)
        similarity = (image * text).sum(dim=-1)
    image_np = image.cpu().numpy().astype(np.float32, copy=False)
    text_np = text.cpu().numpy().astype(np.float32, copy=False)
    sim_np = similarity.cpu().numpy()
    for k, i in enumerate(ok):
        out.image[i] = image_np[k]
        out.text[i] = text_np[k]
        out.similarity[i] = float(sim_np[k])
    return out
