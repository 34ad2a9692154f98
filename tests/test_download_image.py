"""download image checks: process_image on the real corpus images and on generated ones.

Expectations come from outside the code under test: ../shared/corpora/images/IMAGE_FACTS.tsv
(what Pillow 13.0.0 made of each file), MANIFEST.tsv (sha256), the geometry img2dataset's
resizer.py + albumentations document (written out by hand below), and pixels drawn by
tests/images.py whose colours are known.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import resource
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile, JpegImagePlugin

from laion_spark.config import DownloadConfig
from laion_spark.download import image as image_module
from laion_spark.download.image import gif_canvas_size, process_image
from laion_spark.download.resize import plan_resize
from tests import images as G
from tests.corpora import require

PILLOW_DEFAULT_LIMIT = 1024 * 1024 * 1024 // 4 // 3  # Image.MAX_IMAGE_PIXELS as Pillow ships it (89,478,485)
EVERY_STATUS = {"success", "not_image", "unsupported_format", "too_small", "too_many_pixels", "decode_error"}


def config(**overrides) -> DownloadConfig:
    """Test config: LAION's defaults, but no minimum byte count (generated images are tiny)."""
    return DownloadConfig(**{"min_image_bytes": 0, **overrides})


def pixels(result) -> np.ndarray:
    """The stored image of a success -> RGB array (asserting it is a real RGB image of the stated size)."""
    assert result.status == "success", result
    im = Image.open(io.BytesIO(result.image))
    assert im.mode == "RGB"
    assert im.size == (result.width, result.height)
    return np.asarray(im).astype(int)


def near(actual, expected, tol: int = 2) -> bool:
    return all(abs(int(a) - int(e)) <= tol for a, e in zip(actual, expected))


# --------------------------------------------------------------------------------------------
# every image of the corpus, expected status derived from IMAGE_FACTS.tsv alone
# --------------------------------------------------------------------------------------------

# magic column -> the format name Pillow reads it as. svg / jxl / isobmff:heic / unknown are not
# formats Pillow 13 reads (the facts show UnidentifiedImageError for all of them), except files
# Pillow identifies without magic bytes (TGA), which have pillow_format set.
MAGIC_FORMAT = {
    "png": "png", "jpeg": "jpeg", "gif": "gif", "bmp": "bmp", "tiff": "tiff", "webp": "webp",
    "isobmff:avif": "avif", "isobmff:avis": "avif", "jpeg2000": "jpeg2000", "psd": "psd", "icns": "icns",
}
ALL_FORMATS = ("jpeg", "png", "webp", "gif", "bmp", "tiff", "ico", "cur", "icns", "avif", "jpeg2000", "psd",
               "tga")
# Icon containers are refused whatever allowed_formats says: Pillow decodes their embedded frames
# (ICO inside Image.open) with sizes no header check of ours sees (image.CONTAINER_FORMATS).
CONTAINERS = {"ico", "cur", "icns"}
# The facts say "ok" for these four PNGs, but a plain Image.open() + load() raises on each (checked
# in test_getexif_artifacts_really_fail_to_load): the facts script called getexif() first, which
# for a PNG runs load(); that raised, and the script's own load() then found the tiles consumed
# and returned a half-decoded image without error. For us they are decode_error.
GETEXIF_ARTIFACTS = {
    "images/pillow/broken_data_stream.png",  # "unrecognized data stream contents"
    "images/pillow/truncated_end_chunk.png",  # "Truncated File Read" (LOAD_TRUNCATED_IMAGES is False)
    "images/image-size/valid/png/sample_fried.png",  # Apple CgBI PNG: not zlib data
    "images/pillow/apng/chunk_no_fctl.png",  # "APNG contains frame sequence errors"
}


def _facts() -> list[dict[str, str]]:
    with (require("images") / "IMAGE_FACTS.tsv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _manifest_sha256() -> dict[str, str]:
    with (require() / "MANIFEST.tsv").open(newline="", encoding="utf-8") as handle:
        return {row["path"]: row["sha256"] for row in csv.DictReader(handle, delimiter="\t")}


def _format(row) -> str | None:
    """Lower-case format of a row: Pillow's when it opened the file, else what its magic bytes are."""
    if row["pillow_format"]:
        return row["pillow_format"].lower()
    if row["magic"] == "ico/cur":  # CUR and ICO share the layout; the type word tells them apart
        return "cur" if row["path"].endswith(".cur") else "ico"
    return MAGIC_FORMAT.get(row["magic"])


def _claimed_pixels(row) -> int | None:
    """Pixels the header claims: the size column, or the count in Pillow's DecompressionBombError."""
    bomb = re.search(r"DecompressionBombError: Image size \((\d+) pixels\)", row["pillow_13_0_0"])
    if bomb:
        return int(bomb.group(1))
    if row["size"]:
        w, h = row["size"].split("x")
        return int(w) * int(h)
    return None


def expected_status(row, cfg: DownloadConfig) -> str:
    """The status process_image must give a corpus row, from its facts and the config only."""
    fmt = _format(row)
    if fmt is None:
        return "not_image"
    allowed = set(cfg.allowed_formats)
    if "jpeg" in allowed:
        allowed.add("mpo")  # a multi-picture JPEG (camera) is a JPEG: frame 0 is a baseline JPEG
    if fmt not in allowed or fmt in CONTAINERS:
        return "unsupported_format"
    claimed = _claimed_pixels(row)
    if claimed is not None and claimed > cfg.max_pixels:
        return "too_many_pixels"
    if int(row["bytes"]) < cfg.min_image_bytes:
        return "too_small"
    if row["pillow_13_0_0"] == "ok" and row["path"] not in GETEXIF_ARTIFACTS:
        return "success"
    return "decode_error"  # open-error of a recognised format, or a load error


def _expected_size(row, cfg: DownloadConfig) -> tuple[int, int]:
    """Output size for keep_ratio_largest / border, restated from img2dataset + albumentations."""
    w, h = (int(v) for v in row["size"].split("x"))
    if row["exif_orientation"] in ("5", "6", "7", "8"):
        w, h = h, w
    if cfg.resize_mode == "border":
        return cfg.image_size, cfg.image_size
    scale = cfg.image_size / float(max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


CORPUS_CONFIGS = {
    "laion-defaults": DownloadConfig(),
    "every-format-small-output": DownloadConfig(
        allowed_formats=ALL_FORMATS, min_image_bytes=0, resize_mode="keep_ratio_largest", image_size=48,
        encode_format="png",
    ),
    "every-format-max-10k-pixels": DownloadConfig(allowed_formats=ALL_FORMATS, min_image_bytes=0, max_pixels=10_000),
}


# hostile TIFF / EXIF blocks make Pillow warn ("Tag data larger than file"): expected, not our concern
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", list(CORPUS_CONFIGS))
def test_every_corpus_image_gets_the_status_its_facts_imply(name):
    cfg = CORPUS_CONFIGS[name]
    rows = _facts()
    sha = _manifest_sha256()
    corpora = require()
    assert len(rows) == 678
    wrong, seen = [], set()
    for row in rows:
        body = (corpora / row["path"]).read_bytes()
        result = process_image(body, cfg)
        seen.add(result.status)
        expected = expected_status(row, cfg)
        problems = []
        if result.status != expected:
            problems.append(f"status {result.status} ({result.error_message}), expected {expected}")
        if result.status != "success" and not result.error_message:
            problems.append("failure without error_message")
        if result.sha256 != sha[row["path"]] or result.md5 != hashlib.md5(body).hexdigest():
            problems.append("hash differs from MANIFEST.tsv / md5")
        if result.original_bytes != int(row["bytes"]):
            problems.append(f"original_bytes {result.original_bytes}")
        if row["pillow_format"] and result.status not in ("not_image",) and \
                result.original_format != row["pillow_format"].lower():
            problems.append(f"original_format {result.original_format} != {row['pillow_format'].lower()}")
        if expected == "success" == result.status:
            size = (result.width, result.height)
            if size != _expected_size(row, cfg):
                problems.append(f"size {size}, expected {_expected_size(row, cfg)}")
            upright = tuple(int(v) for v in row["size"].split("x"))
            if row["exif_orientation"] in ("5", "6", "7", "8"):
                upright = upright[::-1]
            if (result.original_width, result.original_height) != upright:
                problems.append(f"original size {result.original_width}x{result.original_height} != {upright}")
            pixels(result)
        if problems:
            wrong.append(f"{row['path']}: " + "; ".join(problems))
    assert not wrong, f"{len(wrong)} rows differ:\n" + "\n".join(wrong)
    assert "success" in seen and len(seen) >= 4


def test_getexif_artifacts_really_fail_to_load():
    """The four facts rows overridden above: plain Pillow (open + load, nothing else) raises."""
    corpora = require()
    for path in sorted(GETEXIF_ARTIFACTS):
        with Image.open(corpora / path) as im, pytest.raises(Exception):  # noqa: B017
            im.load()


def test_corpus_covers_the_interesting_cases():
    """The derivation above is exercised: bombs, truncations, MPO, 16-bit, EXIF rotations, non-images."""
    rows = _facts()
    outcomes = " ".join(r["pillow_13_0_0"] for r in rows)
    assert "DecompressionBombError" in outcomes and "truncated" in outcomes
    assert {"MPO", "JPEG", "PNG", "WEBP", "GIF"} <= {r["pillow_format"] for r in rows}
    assert any(r["mode"] == "I;16" for r in rows) and any(r["mode"] == "CMYK" for r in rows)
    assert {"svg", "jxl", "isobmff:heic", "unknown"} <= {r["magic"] for r in rows}
    assert {"2", "5", "6", "7", "8"} <= {r["exif_orientation"] for r in rows}


# --------------------------------------------------------------------------------------------
# EXIF orientation: the recurser/exif-orientation-examples photos all come out upright
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Landscape", "Portrait"])
@pytest.mark.parametrize("number", range(9))
def test_exif_orientation_examples_come_out_upright(kind, number):
    folder = require("images/exif-orientation-examples")
    # reference: *_1 carries Orientation 1 (stored upright), shrunk with plain Pillow
    with Image.open(folder / f"{kind}_1.jpg") as ref_im:
        assert ref_im.getexif().get(0x0112) == 1
        target = (96, 64) if kind == "Landscape" else (64, 96)
        reference = np.asarray(ref_im.convert("RGB").resize(target, Image.Resampling.BOX)).astype(int)
    result = process_image((folder / f"{kind}_{number}.jpg").read_bytes(),
                           config(resize_mode="keep_ratio_largest", image_size=96, encode_format="png"))
    out = pixels(result)
    assert (result.width, result.height) == target  # landscape stays wider than tall, portrait taller
    assert (result.original_width, result.original_height) == ((1800, 1200) if kind == "Landscape" else (1200, 1800))
    assert np.abs(out - reference).mean() < 4
    # and a wrong orientation would be far off (so the comparison can fail)
    assert np.abs(out[::-1] - reference).mean() > 20
    if kind == "Landscape":  # the sky is in the top-left corner: light blue
        r, g, b = out[:21, :32].reshape(-1, 3).mean(axis=0)
        assert b > 200 and b > r + 40


def test_exif_orientation_on_generated_jpeg_and_webp():
    """Stored 60x30 with left red / right blue; Orientation 6 means rotate 90 degrees clockwise to view,
    so the upright picture is 30x60 with red on top and blue at the bottom."""
    stored = G.stripes((60, 30), colors=(G.RED, G.BLUE))
    for fmt in ("JPEG", "WEBP"):
        body = G.with_orientation(stored, 6, fmt, quality=95)
        result = process_image(body, config(resize_mode="no", encode_format="png"))
        out = pixels(result)
        assert (result.width, result.height) == (30, 60) == (result.original_width, result.original_height)
        assert near(out[5, 15], G.RED, 40) and near(out[55, 15], G.BLUE, 40), fmt


# --------------------------------------------------------------------------------------------
# generated images: formats x modes
# --------------------------------------------------------------------------------------------

GREY = (200, 200, 200)
MATRIX = [
    # (format, mode, drawn colour, colour expected in the output, tolerance)
    ("JPEG", "RGB", G.RED, G.RED, 6),
    ("JPEG", "L", GREY, GREY, 4),
    ("JPEG", "CMYK", G.RED, G.RED, 6),
    ("PNG", "RGB", G.GREEN, G.GREEN, 0),
    ("PNG", "RGBA", G.BLUE, G.BLUE, 0),
    ("PNG", "P", G.RED, G.RED, 0),
    ("PNG", "L", GREY, GREY, 0),
    ("PNG", "LA", GREY, GREY, 0),
    ("PNG", "I;16", GREY, GREY, 1),
    ("PNG", "1", G.WHITE, G.WHITE, 0),
    ("PNG", "1", (0, 0, 0), (0, 0, 0), 0),
    ("WEBP", "RGB", G.RED, G.RED, 8),
    ("WEBP", "RGBA", G.GREEN, G.GREEN, 8),
    ("GIF", "P", G.BLUE, G.BLUE, 0),
    ("BMP", "RGB", G.GREEN, G.GREEN, 0),
    ("BMP", "1", G.WHITE, G.WHITE, 0),
    ("BMP", "P", G.RED, G.RED, 0),
    ("TIFF", "RGB", G.RED, G.RED, 0),
    ("TIFF", "CMYK", G.BLUE, G.BLUE, 0),
    ("TIFF", "I;16", GREY, GREY, 1),
]


@pytest.mark.parametrize(("fmt", "mode", "drawn", "expected", "tol"), MATRIX,
                         ids=[f"{m[0]}-{m[1]}-{m[2]}" for m in MATRIX])
def test_every_format_and_mode_becomes_rgb(fmt, mode, drawn, expected, tol):
    body = G.make_image(fmt, (64, 48), mode, drawn)
    every = config(allowed_formats=("jpeg", "png", "webp", "gif", "bmp", "tiff"), encode_format="png")
    result = process_image(body, every)
    out = pixels(result)
    assert (result.width, result.height) == (256, 256)  # border: 256x192, padded 32 + 32 rows
    assert result.original_format == fmt.lower()
    assert (result.original_width, result.original_height) == (64, 48)
    assert near(out[128, 128], expected, tol)
    assert tuple(out[5, 5]) == G.WHITE and tuple(out[250, 250]) == G.WHITE
    assert near(out[40, 5], expected, tol)  # first content row is 32
    laion = process_image(body, DownloadConfig(min_image_bytes=0))
    assert laion.status == ("success" if fmt in ("JPEG", "PNG", "WEBP") else "unsupported_format")


def test_sixteen_bit_gradient_keeps_its_gradient():
    for fmt in ("PNG", "TIFF"):
        body = G.encode(G.gradient16((256, 8)), fmt)
        with Image.open(io.BytesIO(body)) as check:
            assert check.mode == "I;16"
        result = process_image(body, config(allowed_formats=("png", "tiff"), resize_mode="no", encode_format="png"))
        row = pixels(result)[4, :, 0]
        assert row[0] == 0 and row[-1] == 255, fmt
        assert np.all(np.diff(row) >= 0) and np.all(np.diff(row) <= 2), fmt
        assert abs(row.mean() - 127.5) < 1.5, fmt  # clipping would give ~254 (all white but the first pixel)


def test_sixteen_bit_grey_transparency_key_becomes_white():
    body = G.encode(G.gradient16((256, 4)), "PNG", transparency=65535)
    out = pixels(process_image(body, config(resize_mode="no", encode_format="png")))
    assert out[0, -1].tolist() == [255, 255, 255]  # the keyed pixel
    assert out[0, -2, 0] == 254 and out[0, 0, 0] == 0


def test_alpha_is_composited_on_white():
    half_red = Image.new("RGBA", (64, 64), (255, 0, 0, 128))
    out = pixels(process_image(G.encode(half_red, "PNG"), config(resize_mode="no", encode_format="png")))
    # img2dataset: alpha / 255 * rgb + 255 - alpha -> (255, 127, 127)
    assert near(out[10, 10], (255, 127, 127), 1)
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    assert tuple(pixels(process_image(G.encode(clear, "PNG"), config(resize_mode="no")))[10, 10]) == G.WHITE
    palette = Image.new("P", (64, 64), 3)
    palette.putpalette([0, 0, 0] * 256)
    out = pixels(process_image(G.encode(palette, "GIF", transparency=3),
                               config(allowed_formats=("gif",), resize_mode="no", encode_format="png")))
    assert tuple(out[10, 10]) == G.WHITE
    grey_alpha = Image.new("LA", (64, 64), (0, 64))  # black at alpha 64/255 -> 255 - 64 = 191
    out = pixels(process_image(G.encode(grey_alpha, "PNG"), config(resize_mode="no", encode_format="png")))
    assert near(out[10, 10], (191, 191, 191), 1)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animations_give_their_first_frame(fmt):
    body = G.animated(fmt, (64, 64), colors=(G.RED, G.BLUE))
    cfg = config(allowed_formats=("gif", "webp", "png"), resize_mode="no", encode_format="png")
    out = pixels(process_image(body, cfg))
    assert near(out[32, 32], G.RED, 8)


@pytest.mark.parametrize(("encode_format", "pillow_format"), [("jpg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
def test_encode_formats(encode_format, pillow_format):
    body = G.encode(G.textured((300, 200)), "PNG")
    result = process_image(body, config(encode_format=encode_format, encode_quality=90))
    assert result.image_format == encode_format
    with Image.open(io.BytesIO(result.image)) as im:
        assert im.format == pillow_format and im.size == (256, 256)
        assert "exif" not in im.info


def test_rgb_icc_profile_travels_with_the_image():
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    body = G.encode(G.textured((300, 200)), "JPEG", icc_profile=srgb)
    result = process_image(body, config())
    with Image.open(io.BytesIO(result.image)) as im:
        assert im.info.get("icc_profile") == srgb


# --------------------------------------------------------------------------------------------
# statuses before decoding
# --------------------------------------------------------------------------------------------


def test_not_images():
    result = process_image(b"", config())
    assert (result.status, result.error_message, result.sha256, result.original_bytes) == (
        "not_image", "empty body", None, 0)
    rng = np.random.default_rng(7)
    bodies = [
        b"<!DOCTYPE html><html><head><title>404</title></head><body>Not found</body></html>",
        b"just some text, definitely not pixels\n" * 20,
        b'{"error": "forbidden"}',
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n",
        *(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes() for _ in range(20)),
    ]
    for body in bodies:
        result = process_image(body, config(allowed_formats=ALL_FORMATS))
        assert result.status == "not_image", (body[:20], result)
        assert result.error_message and result.sha256 == hashlib.sha256(body).hexdigest()
        assert result.md5 == hashlib.md5(body).hexdigest() and result.image is None


def test_unsupported_formats_and_aliases():
    gif = G.make_image("GIF", (64, 64), "P")
    result = process_image(gif, config())
    assert (result.status, result.original_format) == ("unsupported_format", "gif")
    assert "gif" in result.error_message and "allowed_formats" in result.error_message
    jpeg = G.make_image("JPEG", (64, 64))
    assert process_image(jpeg, config(allowed_formats=("jpg",))).status == "success"
    assert process_image(jpeg, config(allowed_formats=("png",))).status == "unsupported_format"
    ico = G.make_image("ICO", (64, 64))
    assert process_image(ico, config(allowed_formats=("ico", "png"))).status == "unsupported_format"


def test_too_small():
    body = G.encode(G.textured((100, 100)), "JPEG")
    small = process_image(body, DownloadConfig(min_image_bytes=len(body) + 1))
    assert small.status == "too_small" and "min_image_bytes" in small.error_message
    assert (small.original_width, small.original_height, small.original_format) == (100, 100, "jpeg")
    assert process_image(body, DownloadConfig(min_image_bytes=len(body))).status == "success"
    narrow = G.make_image("PNG", (100, 40))
    assert process_image(narrow, config(min_image_side=41)).status == "too_small"
    assert process_image(narrow, config(min_image_side=40)).status == "success"


def test_header_bomb_is_refused_without_decoding(monkeypatch):
    loads = []
    original_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self) or original_load(self))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for width, height in ((20000, 20000), (100000, 100000), (2**31 - 1, 2**31 - 1)):
        body = G.png_claiming(width, height)
        assert len(body) < 10_000
        started = time.perf_counter()
        result = process_image(body, config())
        assert time.perf_counter() - started < 1.0
        assert result.status == "too_many_pixels", result
        assert (result.original_width, result.original_height) == (width, height)
        assert str(width * height) in result.error_message
    assert loads == []  # never decoded: the proof
    # coarse backstop (ru_maxrss is the process peak): a decode of the first claim alone would have
    # needed 20000 * 20000 * 4 bytes = 1.6 GB
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 100_000  # KiB


def test_gif_bomb_is_refused_before_pillow_opens_it(monkeypatch):
    """Pillow's GIF open fills a frame-sized dispose canvas: the canvas is checked before Image.open."""
    screen = b"GIF89a" + (65535).to_bytes(2, "little") * 2 + b"\x00\x00\x00"
    control = b"\x21\xf9\x04\x08\x00\x00\x00\x00"  # disposal method 2: restore to background
    frame = b"\x2c" + b"\x00\x00\x00\x00" + (65535).to_bytes(2, "little") * 2 + b"\x00\x02\x02\x4c\x01\x00\x3b"
    body = screen + control + frame
    assert gif_canvas_size(body) == (65535, 65535)
    opened = []
    original_open = image_module.open_image
    monkeypatch.setattr(image_module, "open_image", lambda *a, **k: opened.append(a) or original_open(*a, **k))
    # the spy sees opens: a small GIF is opened through it
    assert process_image(G.make_image("GIF", (40, 40)), config(allowed_formats=("gif",))).status == "success"
    assert len(opened) == 1
    opened.clear()
    result = process_image(body, config(allowed_formats=("gif",)))
    assert result.status == "too_many_pixels" and opened == []
    corpus = require("images/pillow")
    bomb = process_image((corpus / "decompression_bomb.gif").read_bytes(), config(allowed_formats=("gif",)))
    assert bomb.status == "too_many_pixels" and opened == []


def test_webp_canvas_is_checked_from_the_header_before_pillow_opens_it():
    """libwebp's decoder is created with the canvas size: it is read and checked before any plugin runs
    (Pillow's own check would raise without a size, or, as the host configured it, not at all)."""
    result = process_image(G.webp_claiming(20000, 15000), config(allowed_formats=("webp",)))
    assert result.status == "too_many_pixels", result
    assert "20000x15000 = 300000000 pixels" in result.error_message
    assert (result.original_width, result.original_height) == (20000, 15000)
    small = G.make_image("WEBP", (120, 90), lossless=True)
    assert process_image(small, config(allowed_formats=("webp",), max_pixels=120 * 90)).status == "success"
    assert process_image(small, config(allowed_formats=("webp",), max_pixels=120 * 90 - 1)).status == "too_many_pixels"


def test_our_limit_decides_not_pillows(monkeypatch):
    """Pillow's defaults warn above 89,478,485 pixels and refuse above twice that; max_pixels rules,
    and Pillow's process-wide limit is left as Pillow (or the host) set it."""
    assert Image.MAX_IMAGE_PIXELS == PILLOW_DEFAULT_LIMIT and ImageFile.LOAD_TRUNCATED_IMAGES is False
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        warned = process_image(G.png_claiming(12000, 8000, color_type=0), config(max_pixels=100_000_000))
        refused = process_image(G.png_claiming(20000, 10000, color_type=0), config(max_pixels=250_000_000))
    # both get past the size check and fail only on their one-row pixel data
    assert warned.status == refused.status == "decode_error"
    assert "truncated" in warned.error_message and "truncated" in refused.error_message
    assert process_image(G.make_image("PNG", (100, 100)), config(max_pixels=9_999)).status == "too_many_pixels"
    assert process_image(G.make_image("PNG", (100, 100)), config(max_pixels=10_000)).status == "success"
    # a host that lowered Pillow's limit: Image.open itself would now refuse the 10,000-pixel PNG
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(G.make_image("PNG", (100, 100))))
    assert process_image(G.make_image("PNG", (100, 100)), config(max_pixels=10_000)).status == "success"
    assert Image.MAX_IMAGE_PIXELS == 1_000


def test_truncated_and_corrupt_files_are_decode_errors():
    jpeg = G.encode(G.textured((400, 300)), "JPEG")
    png = G.encode(G.textured((400, 300)), "PNG")
    for body in (jpeg[: len(jpeg) * 6 // 10], png[: len(png) * 6 // 10]):
        for mode in ("no", "border"):
            result = process_image(body, config(resize_mode=mode))
            assert result.status == "decode_error" and "truncated" in result.error_message, result
            assert result.image is None and result.sha256 == hashlib.sha256(body).hexdigest()
    garbled = bytearray(png)
    garbled[len(png) // 2:len(png) // 2 + 64] = b"\xff" * 64
    result = process_image(bytes(garbled), config())
    assert result.status == "decode_error" and result.error_message
    broken_header = png[:16] + b"\x00" * 30  # PNG signature, IHDR cut
    assert process_image(broken_header, config()).status == "decode_error"
    assert process_image(broken_header, DownloadConfig()).status == "too_small"  # 46 bytes < 5 KB


# --------------------------------------------------------------------------------------------
# resize geometry (img2dataset 1.47 resizer.py + albumentations 1.x functional.py)
# --------------------------------------------------------------------------------------------

# (w, h, mode, only_if_bigger) -> output size, worked out by hand from the rules in resize.py's docstring
GEOMETRY = [
    (800, 400, "no", False, (800, 400)),
    (800, 400, "keep_ratio", False, (512, 256)),  # shorter side 400 -> 256, scale 0.64
    (800, 400, "keep_ratio_largest", False, (256, 128)),
    (800, 400, "center_crop", False, (256, 256)),
    (800, 400, "border", False, (256, 256)),
    (300, 900, "keep_ratio", False, (256, 768)),
    (300, 900, "keep_ratio_largest", False, (85, 256)),  # 300 * 256 / 900 = 85.33
    (300, 900, "center_crop", False, (256, 256)),
    (300, 900, "border", False, (256, 256)),
    (200, 100, "keep_ratio", False, (512, 256)),  # upscaled
    (200, 100, "keep_ratio_largest", False, (256, 128)),
    (200, 100, "border", False, (256, 256)),
    (200, 100, "center_crop", False, (256, 256)),
    (200, 100, "keep_ratio", True, (200, 100)),  # resize_only_if_bigger: untouched...
    (200, 100, "keep_ratio_largest", True, (200, 100)),
    (200, 100, "center_crop", True, (200, 100)),  # ... not cropped
    (200, 100, "border", True, (200, 100)),  # ... and not padded (img2dataset pads only what it resized)
    (300, 200, "keep_ratio", True, (300, 200)),  # shorter side 200 <= 256: not "bigger" for keep_ratio
    (300, 200, "border", True, (256, 256)),  # longer side 300 > 256: bigger for border (256x171 + pad)
    (300, 200, "keep_ratio_largest", True, (256, 171)),  # 200 * 256 / 300 = 170.67
    (512, 101, "keep_ratio_largest", False, (256, 50)),  # 50.5 rounds half to even: 50
    (512, 103, "keep_ratio_largest", False, (256, 52)),  # 51.5 -> 52
    (101, 512, "keep_ratio_largest", False, (50, 256)),
    (1000, 1, "keep_ratio_largest", False, (256, 1)),  # 0.256 rounds to 0: kept at 1 (OpenCV would fail)
    (256, 256, "border", True, (256, 256)),
]


@pytest.mark.parametrize(("w", "h", "mode", "only_if_bigger", "expected"), GEOMETRY,
                         ids=[f"{g[0]}x{g[1]}-{g[2]}-{g[3]}" for g in GEOMETRY])
def test_resize_geometry(w, h, mode, only_if_bigger, expected):
    assert plan_resize(w, h, 256, mode, only_if_bigger).output_size == expected
    body = G.make_image("PNG", (w, h), "RGB", G.GREEN)
    result = process_image(body, config(resize_mode=mode, resize_only_if_bigger=only_if_bigger, encode_format="png"))
    assert (result.width, result.height) == expected
    assert (result.original_width, result.original_height) == (w, h)


def test_border_pads_white_centred_with_the_odd_pixel_right_and_bottom():
    cfg = config(resize_mode="border", encode_format="png")
    wide = pixels(process_image(G.make_image("PNG", (800, 400), "RGB", G.RED), cfg))
    # 256x128 content: int((256 - 128) / 2.0) = 64 rows on top, 64 below
    assert (wide[:64] == 255).all() and (wide[192:] == 255).all()
    assert (wide[64:192] == G.RED).all()
    tall = pixels(process_image(G.make_image("PNG", (300, 900), "RGB", G.BLUE), cfg))
    # 85x256 content: int(171 / 2.0) = 85 columns left, 86 right
    assert (tall[:, :85] == 255).all() and (tall[:, 170:] == 255).all()
    assert (tall[:, 85:170] == G.BLUE).all()
    odd = pixels(process_image(G.make_image("PNG", (300, 200), "RGB", G.GREEN), cfg))
    # 256x171: 42 rows on top, 43 below
    assert (odd[:42] == 255).all() and (odd[42:213] == G.GREEN).all() and (odd[213:] == 255).all()


def test_center_crop_takes_the_centre():
    cfg = config(resize_mode="center_crop", encode_format="png")
    # 900x300 in thirds -> 768x256, crop x 256..512: exactly the middle (green) third
    wide = pixels(process_image(G.encode(G.stripes((900, 300)), "PNG"), cfg))
    assert wide.shape == (256, 256, 3)
    assert (np.abs(wide[:, 2:-2] - G.GREEN).max(axis=2) <= 2).all()
    tall = pixels(process_image(G.encode(G.stripes((300, 900), vertical=False), "PNG"), cfg))
    assert (np.abs(tall[2:-2] - G.GREEN).max(axis=2) <= 2).all()
    # a centred 2:1 crop of 4 columns: red | green | blue | white -> the middle two (green | blue)
    quarters = pixels(process_image(G.encode(G.stripes((1024, 512), (G.RED, G.GREEN, G.BLUE, G.WHITE)), "PNG"),
                                    cfg))
    assert near(quarters[128, 64], G.GREEN) and near(quarters[128, 192], G.BLUE)


def test_keep_ratio_keeps_the_whole_picture():
    out = pixels(process_image(G.encode(G.stripes((900, 300)), "PNG"),
                               config(resize_mode="keep_ratio", encode_format="png")))
    assert out.shape == (256, 768, 3)
    assert near(out[128, 100], G.RED) and near(out[128, 384], G.GREEN) and near(out[128, 660], G.BLUE)


# --------------------------------------------------------------------------------------------
# JPEG reduced-scale decoding
# --------------------------------------------------------------------------------------------


def _full_decode_reference(body: bytes, size: tuple[int, int], orientation: int = 1) -> np.ndarray:
    """The same picture with no draft: full decode, (EXIF turn), area-average resize, all in plain Pillow."""
    with Image.open(io.BytesIO(body)) as im:
        im = im.convert("RGB")
    if orientation == 6:
        im = im.transpose(Image.Transpose.ROTATE_270)
    return np.asarray(im.resize(size, Image.Resampling.BOX)).astype(int)


def _spy_drafts(monkeypatch) -> list:
    calls = []
    original = JpegImagePlugin.JpegImageFile.draft

    def draft(self, mode, size):
        before = self.size
        out = original(self, mode, size)
        calls.append((before, size, self.size))
        return out

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)
    return calls


def test_jpeg_draft_matches_a_full_decode(monkeypatch):
    calls = _spy_drafts(monkeypatch)
    picture = G.textured((1600, 1200), seed=3)
    body = G.encode(picture, "JPEG", quality=92)
    result = process_image(body, config(resize_mode="keep_ratio_largest", encode_format="png"))
    out = pixels(result)
    assert out.shape == (192, 256, 3) and (result.original_width, result.original_height) == (1600, 1200)
    assert len(calls) == 1
    full, requested, decoded = calls[0]
    assert full == (1600, 1200) and decoded[0] < 1600  # really decoded at reduced scale
    assert decoded[0] >= 256 and decoded[1] >= 192  # never below the target
    assert np.abs(out - _full_decode_reference(body, (256, 192))).mean() < 2.5


def test_jpeg_draft_accounts_for_a_quarter_turn(monkeypatch):
    calls = _spy_drafts(monkeypatch)
    stored = G.textured((1600, 1200), seed=4)
    body = G.with_orientation(stored, 6, quality=92)  # upright: 1200x1600
    result = process_image(body, config(resize_mode="keep_ratio_largest", encode_format="png"))
    out = pixels(result)
    assert (result.width, result.height) == (192, 256)
    assert (result.original_width, result.original_height) == (1200, 1600)
    (_, requested, decoded), = calls
    assert decoded[0] >= 256 and decoded[1] >= 192  # stored frame: the 256 goes to the stored width
    assert np.abs(out - _full_decode_reference(body, (192, 256), orientation=6)).mean() < 2.5


def test_no_draft_when_enlarging_or_keeping(monkeypatch):
    calls = _spy_drafts(monkeypatch)
    body = G.encode(G.textured((200, 150)), "JPEG")
    process_image(body, config(resize_mode="border"))
    process_image(G.encode(G.textured((1600, 1200)), "JPEG"), config(resize_mode="no"))
    assert calls == []


# --------------------------------------------------------------------------------------------
# storing the download unchanged
# --------------------------------------------------------------------------------------------


def test_resize_mode_no_stores_the_original_bytes_when_nothing_changes():
    jpeg = G.encode(G.textured((300, 200)), "JPEG")
    result = process_image(jpeg, config(resize_mode="no"))
    assert result.image == jpeg and (result.image_format, result.width, result.height) == ("jpg", 300, 200)
    png = G.encode(G.textured((300, 200)), "PNG")
    assert process_image(png, config(resize_mode="no", encode_format="png")).image == png


def test_resize_mode_no_re_encodes_when_something_changes():
    stored = G.textured((300, 200))
    cases = {
        "other format": (G.encode(stored, "PNG"), "jpg", (300, 200)),
        "rotated": (G.with_orientation(stored, 6), "jpg", (200, 300)),
        "grey": (G.encode(stored.convert("L"), "JPEG"), "jpg", (300, 200)),
        "alpha": (G.encode(stored.convert("RGBA"), "PNG"), "png", (300, 200)),
        "animated": (G.animated("PNG", (300, 200)), "png", (300, 200)),
    }
    for name, (body, fmt, size) in cases.items():
        result = process_image(body, config(resize_mode="no", encode_format=fmt))
        assert result.image != body, name
        assert (result.width, result.height) == size, name
        pixels(result)


# --------------------------------------------------------------------------------------------
# threads (the download pool calls process_image from many threads)
# --------------------------------------------------------------------------------------------


def test_process_image_is_thread_safe():
    bodies = [G.encode(G.textured((400 + 37 * i, 300 + 11 * i), seed=i), fmt)
              for i, fmt in enumerate(["JPEG", "PNG", "WEBP"] * 4)]
    bodies += [G.png_claiming(30000, 30000), b"<html></html>", G.make_image("GIF", (64, 64), "P")]
    cfg = config()
    sequential = [process_image(b, cfg) for b in bodies]
    with ThreadPoolExecutor(6) as pool:
        for _ in range(2):
            assert list(pool.map(lambda b: process_image(b, cfg), bodies)) == sequential
    assert {r.status for r in sequential} == {"success", "too_many_pixels", "not_image", "unsupported_format"}
    assert {r.status for r in sequential} <= EVERY_STATUS
