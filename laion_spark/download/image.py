"""One downloaded body -> checked, decoded, upright, resized and re-encoded image (no Spark).

INPUT  -> the downloaded bytes and a DownloadConfig (allowed_formats, min_image_bytes,
          min_image_side, max_pixels, image_size, resize_mode, resize_only_if_bigger,
          encode_format, encode_quality, keep_exif)
OUTPUT -> an ImageResult: a status of schemas.DOWNLOAD_STATUSES (success, not_image,
          unsupported_format, too_small, too_many_pixels, decode_error), the stored image and
          its size, the original's format / size / byte count, and sha256 / md5 / sha1 of the body

Order of the checks, each one cheaper than the next:
1. sniff: the magic-byte checks of Pillow's plugins name the format; one outside allowed_formats
   (or an icon container, see CONTAINER_FORMATS) -> unsupported_format, without Pillow parsing
   it. Then open_image (Image.open without Pillow's process-wide bomb check), limited to the
   allowed plugins, reads the header only. Bytes no plugin
   claims -> not_image; a header that an allowed format's plugin recognised but cannot read
   (a PNG with a broken IHDR) -> decode_error (too_small when under min_image_bytes).
2. header size: width * height > max_pixels -> too_many_pixels, never decoded; then
   len(body) < min_image_bytes or shorter side < min_image_side -> too_small.
3. decode (a truncated or corrupt file is a decode_error: ImageFile.LOAD_TRUNCATED_IMAGES stays
   False), first frame of an animation, JPEGs decoded at 1/2 .. 1/8 scale when the resize
   allows it; every mode -> RGB, alpha composited on white (img2dataset's matting); EXIF
   orientation applied; resize (laion_spark.download.resize: img2dataset's geometry).
4. encode to encode_format; with nothing to change (same format, RGB, upright, single frame,
   no resize) the downloaded bytes are stored as they are, less their metadata (strip_metadata:
   EXIF with its GPS block, XMP, IPTC, comments, text chunks) unless keep_exif; the pixel data is
   copied byte for byte. A file whose segment or chunk structure does not parse is re-encoded.

Sizes: `original_width` / `original_height` are the upright size (EXIF orientation applied,
so they agree with `width` / `height` in orientation) for a decoded image; for a row refused
after Image.open but before decoding (too_many_pixels, too_small, a failed decode) they are the
header's size as stored, since reading the orientation can mean decoding (PNG eXIf); None when
the magic bytes or Image.open already decided.
`original_format` is Pillow's format name in lower case ("jpeg", "png", "webp", "gif", "mpo",
...). An MPO (a camera JPEG with a multi-picture index, frame 0 a plain JPEG) counts as "jpeg"
for allowed_formats; "jpg" in allowed_formats means "jpeg".
"""

from __future__ import annotations

import hashlib
import io
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFile

from laion_spark.download.metadata import strip_metadata
from laion_spark.download.resize import Plan, crop_and_pad, plan_resize, resample_filter

if TYPE_CHECKING:
    from laion_spark.config import DownloadConfig

# Our own header check (max_pixels, before any decoding) is the decompression-bomb guard, and
# Pillow's process-wide one (Image.MAX_IMAGE_PIXELS: a warning above 89 Mpx, an error above 179 Mpx,
# inside Image.open) is left to the host process: its value is the host's setting (a notebook's, a
# shared cluster's), so it is neither changed nor saved and restored (process_image runs in 32
# threads: a save/restore of a module global races). open_image() is Image.open's plugin loop
# without the open-time check, so that our max_pixels decides, with the header's size known.
# Without that check Image.open must itself allocate nothing pixel-sized. Audited for JPEG/MPO,
# PNG/APNG, WebP (libwebp validates the canvas against the frames), BMP and TIFF (header parsing
# only); GIF fills a frame-0 "dispose" canvas inside open, so its canvas is checked before open
# (gif_canvas_size); ICO / CUR / ICNS decode embedded frames of unchecked size: CONTAINER_FORMATS.
# A few plugins still call Pillow's check themselves (WebP's and GIF's open, TIFF's load), against
# the host's limit: a DecompressionBombError from them is a too_many_pixels row.

# Decode JPEGs at a reduced DCT scale no smaller than the resize target times this (Pillow's
# thumbnail() keeps the same 2x margin): the final area-average resize then has real pixels to
# average, so the result matches a full decode closely, at a fraction of the decode time.
JPEG_DRAFT_GAP = 2.0

_FORMAT_ALIASES = {"jpg": "jpeg", "tif": "tiff"}
# formats an allowed name also admits: an MPO's first frame is a JPEG
_ALSO_ADMITS = {"jpeg": ("mpo",)}
# encode_format -> (Pillow format name, Pillow formats whose bytes can be stored unchanged)
_ENCODERS = {"jpg": ("JPEG", ("JPEG",)), "webp": ("WEBP", ("WEBP",)), "png": ("PNG", ("PNG",))}
_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = (5, 6, 7, 8)
# what the download stage can store (encode_format, or a download kept as it is): what embed reads
STORED_FORMATS = frozenset(name.lower() for _, kept in _ENCODERS.values() for name in kept)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# Icon containers: Pillow sizes and decodes their embedded PNG/BMP frames inside Image.open()/load()
# (ICO even decodes in open), past any header check of ours, and with Pillow's check left out nothing
# else stops a bomb frame. Refused as unsupported_format even when listed in allowed_formats.
CONTAINER_FORMATS = frozenset({"ico", "cur", "icns"})
@dataclass
class ImageResult:
    """What process_image made of one body; every failure has an error_message."""

    status: str
    error_message: str | None = None
    image: bytes | None = None  # the stored bytes (re-encoded, or the download unchanged)
    image_format: str | None = None  # "jpg" | "webp" | "png": what `image` is
    width: int | None = None  # of `image`
    height: int | None = None
    original_width: int | None = None  # upright when decoded; as stored in the header otherwise
    original_height: int | None = None
    original_format: str | None = None  # Pillow's format, lower case: "jpeg", "png", "gif", "mpo", ...
    original_bytes: int | None = None
    sha256: str | None = None  # hex, of the downloaded body
    md5: str | None = None
    sha1: str | None = None


def normalize_formats(names) -> frozenset[str]:
    """allowed_formats as configured -> the lower-case Pillow format names they admit."""
    out = set()
    for name in names:
        key = _FORMAT_ALIASES.get(name.strip().lower(), name.strip().lower())
        out.add(key)
        out.update(_ALSO_ADMITS.get(key, ()))
    return frozenset(out)


def sniff_format(prefix: bytes) -> str | None:
    """Body -> the Pillow format whose magic-byte check accepts its first 16 bytes (lower case), or None.

    Cheaper than Image.open and parses nothing; it also tells a PNG with a broken header (the
    signature is there: decode_error) from an HTML page (not_image). Plugins without a magic
    check (TGA, ...) never match: Image.open decides for those, when they are allowed.
    """
    Image.init()
    for name in Image.ID:
        accept = Image.OPEN[name][1]
        if accept is None:
            continue
        try:
            if accept(prefix[:16]) is True:
                return name.lower()
        except Exception:  # noqa: BLE001 - a plugin's magic check on junk bytes
            continue
    return None


def process_image(body: bytes, cfg: DownloadConfig) -> ImageResult:
    """Downloaded bytes + DownloadConfig -> ImageResult (never raises for a bad image)."""
    result = ImageResult(status="decode_error", original_bytes=len(body))
    if not body:
        return _fail(result, "not_image", "empty body")
    result.sha256 = hashlib.sha256(body).hexdigest()
    result.md5 = hashlib.md5(body).hexdigest()
    result.sha1 = hashlib.sha1(body).hexdigest()
    allowed = normalize_formats(cfg.allowed_formats)
    magic = sniff_format(body)
    result.original_format = magic
    if magic is not None and (magic not in allowed or magic in CONTAINER_FORMATS):
        # decided on the magic bytes alone: Pillow never parses a format we would not keep
        return _fail(result, "unsupported_format", _not_allowed(magic, cfg))
    canvas = canvas_size(body, magic)
    if canvas and canvas[0] * canvas[1] > cfg.max_pixels:
        result.original_width, result.original_height = canvas
        return _fail(result, "too_many_pixels",
                     f"{canvas[0]}x{canvas[1]} = {canvas[0] * canvas[1]} pixels > max_pixels {cfg.max_pixels}")
    try:
        im = open_image(body, _pillow_formats(allowed))
    except Image.DecompressionBombError as exc:  # a plugin's own check, against the host's limit
        return _fail(result, "too_many_pixels", f"Pillow's Image.MAX_IMAGE_PIXELS of this process refused it: {exc}")
    except Exception as exc:  # noqa: BLE001 - UnidentifiedImageError, or a plugin choking on a header
        if magic is None:
            other = _identify_without_magic(body, allowed)
            if other is not None:
                result.original_format = other
                return _fail(result, "unsupported_format", _not_allowed(other, cfg))
            return _fail(result, "not_image", f"not an image Pillow reads; starts {body[:16]!r}")
        if len(body) < cfg.min_image_bytes:
            return _fail(result, "too_small", f"{len(body)} bytes < min_image_bytes {cfg.min_image_bytes}")
        return _fail(result, "decode_error", f"{type(exc).__name__}: {exc}")
    with im:
        fmt = (im.format or "").lower()
        result.original_format = fmt
        width, height = im.size
        result.original_width, result.original_height = width, height
        if fmt not in allowed or fmt in CONTAINER_FORMATS:
            return _fail(result, "unsupported_format", _not_allowed(fmt, cfg))
        if width * height > cfg.max_pixels:
            return _fail(result, "too_many_pixels",
                         f"{width}x{height} = {width * height} pixels > max_pixels {cfg.max_pixels}")
        if width < 1 or height < 1:
            return _fail(result, "decode_error", f"image has no pixels: {width}x{height}")
        if len(body) < cfg.min_image_bytes:
            return _fail(result, "too_small", f"{len(body)} bytes < min_image_bytes {cfg.min_image_bytes}")
        if min(width, height) < cfg.min_image_side:
            return _fail(result, "too_small",
                         f"{width}x{height}: shorter side < min_image_side {cfg.min_image_side}")
        try:
            return _decode_resize_encode(im, body, result, cfg)
        except Exception as exc:  # noqa: BLE001 - corrupt data fails in many ways; it is a row, never a crash
            return _fail(result, "decode_error", f"{type(exc).__name__}: {exc}")


def open_image(body: bytes, formats) -> ImageFile.ImageFile:
    """Bytes + Pillow plugin names -> the image, its header read and nothing decoded (Image.open's
    errors: UnidentifiedImageError when no plugin takes it).

    Image.open's own loop (Pillow 13, `_open_core`): each plugin's magic check on the first 16 bytes,
    then its factory; the errors a factory raises on a file of another format pass to the next
    plugin. What it leaves out is Image.open's decompression-bomb check, which reads the process-wide
    Image.MAX_IMAGE_PIXELS: the callers check the header's size against their own max_pixels right
    after, before any pixel is decoded, so the host's setting is neither needed nor touched.
    """
    Image.init()
    fp = io.BytesIO(body)
    prefix = body[:16]
    for name in formats:
        factory, accept = Image.OPEN[name.upper()]
        if accept is not None and accept(prefix) is not True:  # a str is a "possibly, but" warning: no
            continue
        fp.seek(0)
        try:
            return factory(fp, "")
        except (SyntaxError, IndexError, TypeError, struct.error):  # not this plugin's file, as in Image.open
            continue
    raise Image.UnidentifiedImageError(f"cannot identify image file (tried {', '.join(formats) or 'no format'})")


def canvas_size(body: bytes, fmt: str | None) -> tuple[int, int] | None:
    """Body + its sniffed format -> (w, h) of the canvas that opening it allocates or checks, read
    before any plugin runs (GIF: its dispose canvas; WebP: the size libwebp's decoder is created
    with, which Pillow's WebP open checks against the host's limit itself); None for other formats."""
    if fmt == "gif":
        return gif_canvas_size(body)
    if fmt == "webp":
        return webp_canvas_size(body)
    return None


def webp_canvas_size(body: bytes) -> tuple[int, int] | None:
    """WebP bytes -> (w, h) from the RIFF header's first chunk (VP8 key frame, VP8L, or VP8X canvas),
    the fields Pillow 13's WebP plugin reads before creating its decoder; None when absent."""
    chunk = body[12:16]
    if chunk == b"VP8 " and len(body) >= 30 and body[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", body, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8X" and len(body) >= 30:
        return int.from_bytes(body[24:27], "little") + 1, int.from_bytes(body[27:30], "little") + 1
    if chunk == b"VP8L" and len(body) >= 25 and body[20] == 0x2F:
        bits = int.from_bytes(body[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def gif_canvas_size(body: bytes) -> tuple[int, int] | None:
    """GIF bytes -> (w, h) of the logical screen grown to cover the first frame, as Pillow's GIF open
    sizes it (and allocates its dispose canvas); the screen alone when no frame descriptor follows,
    None for bytes too short to hold a GIF header."""
    if len(body) < 13:
        return None
    width, height = struct.unpack_from("<HH", body, 6)
    flags = body[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # skip the global colour table
    while pos < len(body):
        if body[pos] == 0x21:  # extension: label, then data sub-blocks up to a 0 length
            pos += 2
            while pos < len(body) and body[pos]:
                pos += body[pos] + 1
            pos += 1
        elif body[pos] == 0x2C and pos + 9 <= len(body):  # first image descriptor
            left, top, frame_w, frame_h = struct.unpack_from("<HHHH", body, pos + 1)
            return max(width, left + frame_w), max(height, top + frame_h)
        else:
            break
    return width, height


def _pillow_formats(allowed: frozenset[str]) -> list[str]:
    """Allowed lower-case names -> the Pillow plugin names Image.open may try (an MPO opens via JPEG)."""
    Image.init()
    return [name for name in Image.ID if name.lower() in allowed or (name == "JPEG" and "mpo" in allowed)]


def _identify_without_magic(body: bytes, allowed: frozenset[str]) -> str | None:
    """Bytes no magic check claims -> the format of a not-allowed plugin without one (TGA, ...) that
    can read its header, or None. Header parsing only: nothing is decoded."""
    Image.init()
    formats = [name for name in Image.ID if Image.OPEN[name][1] is None and name.lower() not in allowed]
    try:
        with open_image(body, formats) as im:
            return (im.format or "").lower() or None
    except Exception:  # noqa: BLE001 - not one of those either
        return None


def _fail(result: ImageResult, status: str, message: str) -> ImageResult:
    result.status = status
    result.error_message = message
    return result


def _not_allowed(fmt: str, cfg) -> str:
    if fmt in CONTAINER_FORMATS:
        return f"format {fmt} holds images whose size is only known by decoding them: not supported"
    return f"format {fmt} not in allowed_formats ({', '.join(cfg.allowed_formats)})"


def _orientation(im: Image.Image) -> int:
    """EXIF (or XMP) orientation 1..8; a corrupt EXIF block counts as upright, it is no reason to fail."""
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - Pillow's EXIF parser on hostile bytes
        return 1
    return value if value in _TRANSPOSE else 1


def _decode_resize_encode(im: ImageFile.ImageFile, body: bytes, result: ImageResult, cfg) -> ImageResult:
    fmt = im.format
    raw_w, raw_h = im.size
    animated = bool(getattr(im, "is_animated", False))
    icc = im.info.get("icc_profile")
    box = None
    # EXIF orientation: read from the header (JPEG APP1, WebP EXIF chunk, TIFF IFD0; a TIFF's file is
    # closed after its pixels are read, so before load), except for PNG, whose eXIf chunk may come
    # after the pixel data: Pillow's PNG getexif() decodes first, so it is asked after load().
    orientation = _orientation(im) if fmt != "PNG" else 1
    plan = _plan(raw_w, raw_h, orientation, cfg)
    if fmt in ("JPEG", "MPO") and plan.resize and plan.downscale:
        # reduced DCT-scale decode, sized for the target in the stored frame (sides swapped for
        # 90-degree turns), never below it
        need_w, need_h = plan.resize if orientation not in _SWAPS_SIDES else plan.resize[::-1]
        drafted = im.draft(None, (int(need_w * JPEG_DRAFT_GAP), int(need_h * JPEG_DRAFT_GAP)))
        if drafted is not None:
            box = drafted[1]  # the full picture's extent in the reduced image's pixels
    im.load()
    if fmt == "PNG":
        orientation = _orientation(im)
        plan = _plan(raw_w, raw_h, orientation, cfg)
    upright_w, upright_h = plan.source
    result.original_width, result.original_height = upright_w, upright_h

    keep_bytes = (
        plan.identity and orientation == 1 and not animated and im.mode == "RGB"
        and "transparency" not in im.info and fmt in _ENCODERS[cfg.encode_format][1]
    )
    stored = (body if cfg.keep_exif else strip_metadata(body, fmt)) if keep_bytes else None
    if stored is not None:  # None: metadata that cannot be cut out losslessly, so re-encoded below
        result.image, result.image_format = stored, cfg.encode_format
        result.width, result.height = raw_w, raw_h
        result.status = "success"
        return result

    frame: Image.Image = im
    if frame.mode not in ("RGB", "L") or "transparency" in frame.info:
        frame = to_rgb(frame)  # RGB and L resize as they are (cheaper: L has one channel), the rest first become RGB
    if plan.resize:  # in the stored (not yet rotated) frame: rotating the small result is cheaper
        raw_size = plan.resize if orientation not in _SWAPS_SIDES else plan.resize[::-1]
        frame = frame.resize(raw_size, resample_filter(plan), box=box)
    if orientation != 1:
        frame = frame.transpose(_TRANSPOSE[orientation])
    if frame.mode != "RGB":
        frame = to_rgb(frame)
    frame = crop_and_pad(frame, plan)
    keep_icc = icc if isinstance(icc, bytes) and icc[16:20] == b"RGB " else None
    result.image = encode(frame, cfg.encode_format, cfg.encode_quality, keep_icc)
    result.image_format = cfg.encode_format
    result.width, result.height = frame.size
    result.status = "success"
    return result


def _plan(raw_w: int, raw_h: int, orientation: int, cfg) -> Plan:
    upright = (raw_h, raw_w) if orientation in _SWAPS_SIDES else (raw_w, raw_h)
    return plan_resize(*upright, cfg.image_size, cfg.resize_mode, cfg.resize_only_if_bigger)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: transparency composited on white, 16-bit scaled (not clipped) to 8-bit."""
    if im.mode == "RGB" and "transparency" not in im.info:
        return im
    if im.mode in _SIXTEEN_BIT:
        im = _sixteen_to_eight(im)
    if im.has_transparency_data:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))  # out = rgb * a + white * (1 - a), as img2dataset mats
        return out
    out = im.convert("RGB")
    out.info.pop("transparency", None)
    return out


def _sixteen_to_eight(im: Image.Image) -> Image.Image:
    """I;16* / I -> L by v * 255 / 65535 (rounded); Pillow's own convert clips everything over 255 to white.

    A tRNS grey key (16-bit PNG) becomes an alpha channel (LA), matched on the 16-bit values.
    """
    values = np.asarray(im)
    wide = np.clip(values.astype(np.int64), 0, 65535)
    grey = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))
    key = im.info.get("transparency")
    if isinstance(key, int):
        alpha = Image.fromarray(np.where(values == key, 0, 255).astype(np.uint8))
        grey = Image.merge("LA", (grey, alpha))
    return grey


def encode(im: Image.Image, encode_format: str, quality: int, icc_profile: bytes | None = None) -> bytes:
    """RGB image -> bytes in encode_format ("jpg" / "webp" at `quality`, "png" lossless).

    The RGB ICC profile of the download goes along (wide-gamut photos keep their colours); EXIF
    does not (its orientation has been applied, and its other fields are not ours to republish).
    """
    pillow_format = _ENCODERS[encode_format][0]
    options = {}
    if icc_profile:
        options["icc_profile"] = icc_profile
    if pillow_format in ("JPEG", "WEBP"):
        options["quality"] = min(int(quality), 100)
    out = io.BytesIO()
    im.info = {}  # no leftover transparency / exif / icc from the source frame
    im.save(out, pillow_format, **options)
    return out.getvalue()
