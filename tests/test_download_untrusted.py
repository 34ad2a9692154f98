"""Download rows built from what a hostile server sends: header sizes no column holds, odd header bytes,
metadata in images stored as downloaded.

INPUT  -> bodies and raw responses served by a loopback FaultServer
OUTPUT -> assertions on the rows of RowDownloader / download_partition (the mapInPandas function), taken
          through Arrow with the images schema as Spark takes them, and on one real Spark job

Expectations come from the bytes each test writes (the size a header claims, the metadata put in a file,
the header bytes sent) and from the column types of schemas.DOWNLOAD_FIELDS, never from the code under
test. No URL leaves 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import io
import struct

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image, ImageCms, PngImagePlugin
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import StringType, StructField, StructType

from laion_spark import cli
from laion_spark import schemas as S
from laion_spark.config import DownloadConfig
from laion_spark.download.fetch import FetchResult
from laion_spark.download.metadata import strip_metadata
from laion_spark.download.task import RowDownloader, download_partition, fit_row
from tests import images as G
from tests.corpora import require
from tests.http_faults import FaultServer

FORMATS = ("jpeg", "png", "webp", "gif", "bmp", "tiff")
INT32_MAX = 2**31 - 1
OUT_NAMES = [S.URL, *S.DOWNLOAD_COLUMNS]
ARROW = to_arrow_schema(StructType([StructField(S.URL, StringType()), *S.DOWNLOAD_FIELDS]))


def config(**overrides) -> DownloadConfig:
    return DownloadConfig(**{"allowed_networks": ("127.0.0.1/32",), "min_image_bytes": 0, "retries": 0,
                             "threads": 4, "deadline_s": 10.0, "allowed_formats": FORMATS, **overrides})


def through_arrow(frame: pd.DataFrame) -> pd.DataFrame:
    """A task's output frame -> the same rows after Arrow with the images schema (what Spark's
    mapInPandas serializer does; it converts unsafely, as spark.sql.execution.pandas.convertToArrowArraySafely
    is false by default), back as pandas."""
    return pa.Table.from_pandas(frame, schema=ARROW, preserve_index=False, safe=False).to_pandas()


def run_task(urls: list[str], cfg=None, factory=RowDownloader) -> dict:
    """URLs -> {url: row as a dict} from one download task, checked to hold each URL exactly once and to
    pass through Arrow."""
    cfg = cfg or config()
    run = download_partition(cfg, OUT_NAMES, downloader_factory=factory)
    frames = list(run(iter([pd.DataFrame({S.URL: urls})])))
    frame = pd.concat(frames, ignore_index=True)
    assert sorted(frame[S.URL]) == sorted(urls)
    back = through_arrow(frame)
    return {row[S.URL]: row for row in back.to_dict("records")}


def value(v):
    """A frame cell -> None for a null, else the value."""
    return None if v is None or (not isinstance(v, (bytes, str)) and pd.isna(v)) else v


def raw_response(status: bytes, headers: bytes = b"", body: bytes = b"", length: int | None = None):
    """A FaultServer handler that writes these bytes as they are: the status line "HTTP/1.1 <status>",
    the header lines (each ending in CRLF), Content-Length (len(body) unless given) and the body."""
    data = (b"HTTP/1.1 %s\r\n%sContent-Length: %d\r\nConnection: close\r\n\r\n"
            % (status, headers, len(body) if length is None else length)) + body

    def handler(h):
        h.close_connection = True
        h.wfile.write(data)
        h.wfile.flush()
    return handler


# --------------------------------------------------------------------------------------------
# headers that claim sizes, written byte by byte after each format's spec
# --------------------------------------------------------------------------------------------


def bmp(width_field: int, height_field: int, pixels: bytes = b"\x00" * 64) -> bytes:
    """A BMP with a 40-byte BITMAPINFOHEADER, 24 bits per pixel, whose width / height fields hold these
    signed 32-bit values (a negative height means rows stored top-down)."""
    info = struct.pack("<IiiHHIIiiII", 40, width_field, height_field, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + len(pixels), 0, 0, 14 + len(info)) + info + pixels


def tiff(width: int, height: int, big: bool = False) -> bytes:
    """An 8-bit grey little-endian TIFF (BigTIFF with big=True: LONG8 fields) claiming width x height,
    with one byte of pixel data."""
    long_type, pack, count_fmt, head = (16, "<Q", "<HHQ", b"II+\x00" + struct.pack("<HHQ", 8, 0, 16)) if big \
        else (4, "<I", "<HHI", b"II*\x00" + struct.pack("<I", 8))
    entry = 20 if big else 12
    tags = [(256, long_type, width), (257, long_type, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
            (273, long_type, None), (277, 3, 1), (278, long_type, height), (279, long_type, 1)]
    ifd_start = len(head)
    data_at = ifd_start + (8 if big else 2) + entry * len(tags) + (8 if big else 4)
    out = head + struct.pack("<Q" if big else "<H", len(tags))
    for tag, kind, v in tags:
        v = data_at if v is None else v
        field = struct.pack(pack, v) if kind == long_type else struct.pack("<H", v).ljust(8 if big else 4, b"\x00")
        out += struct.pack(count_fmt, tag, kind, 1) + field
    return out + b"\x00" * (8 if big else 4) + b"\x00"


def gif(screen: tuple[int, int], frame: tuple[int, int, int, int]) -> bytes:
    """A GIF89a with a logical screen and one image descriptor (left, top, width, height)."""
    return (b"GIF89a" + struct.pack("<HHBBB", *screen, 0, 0, 0) + b"\x2c" + struct.pack("<HHHHB", *frame, 0)
            + b"\x02\x02\x44\x01\x00\x3b")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small baseline JPEG whose SOF0 says width x height (16-bit fields)."""
    body = bytearray(G.make_image("JPEG", (16, 16)))
    at = body.find(b"\xff\xc0")
    struct.pack_into(">HH", body, at + 5, height, width)
    return bytes(body)


# name -> (body, content type, the header's size (w, h) as each column can hold it: None where int32 cannot)
HEADER_SIZES = {
    # the file: a PNG IHDR is two uint32
    "png-4294967280x1": (G.png_claiming(4294967280, 1), "image/png", (None, 1)),
    "png-1x4294967295": (G.png_claiming(1, 4294967295), "image/png", (1, None)),
    "png-2pow31x1": (G.png_claiming(2**31, 1), "image/png", (None, 1)),
    "png-int32-max": (G.png_claiming(INT32_MAX, 1), "image/png", (INT32_MAX, 1)),
    # BMP fields are signed; Pillow reads the width unsigned (-1 -> 2**32 - 1) and a height of
    # -2**31 as 2**31 (only heights from -2**24 up count as top-down)
    "bmp-width-minus-1": (bmp(-1, 1), "image/bmp", (None, 1)),
    "bmp-height-minus-2pow31": (bmp(1, -(2**31)), "image/bmp", (1, None)),
    "bmp-top-down-2pow24": (bmp(16, -(2**24)), "image/bmp", (16, 2**24)),
    "tiff-2pow32-1": (tiff(2**32 - 1, 1), "image/tiff", (None, 1)),
    "bigtiff-2pow64-1": (tiff(2**64 - 1, 1, big=True), "image/tiff", (None, 1)),
    # 16-bit SOF, 16-bit GIF fields (the canvas grows to left + width), 24-bit WebP canvas: they fit
    "jpeg-sof-65535": (jpeg_claiming(65535, 65535), "image/jpeg", (65535, 65535)),
    "gif-131070": (gif((65535, 65535), (65535, 65535, 65535, 65535)), "image/gif", (131070, 131070)),
    "webp-vp8x-2pow24": (G.webp_claiming(2**24, 2**24), "image/webp", (2**24, 2**24)),
}


@pytest.fixture(scope="module")
def server():
    with FaultServer("127.0.0.1") as srv:
        yield srv


@pytest.mark.parametrize("name", list(HEADER_SIZES))
def test_header_sizes_no_column_holds_become_null_and_the_row_keeps_its_status(server, name):
    body, ctype, (width, height) = HEADER_SIZES[name]
    url = server.add_file(f"/size/{name}", body, ctype)
    row = run_task([url])[url]
    assert row["status"] == "too_many_pixels"
    assert (value(row["original_width"]), value(row["original_height"])) == (width, height)
    assert value(row["width"]) is None and value(row["height"]) is None and value(row["image"]) is None
    assert (row["http_status"], row["content_type"], row["original_bytes"]) == (200, ctype, len(body))
    assert row["sha256"] == hashlib.sha256(body).hexdigest()
    assert not row["retryable"]
    if width is None or height is None:  # the value the column lost is still told
        assert "changed to fit the column" in row["error_message"]


def test_every_header_size_in_one_task(server):
    """All of them in one task, as Spark runs a partition: one row each, none lost, none twice."""
    urls = {name: server.add_file(f"/size/{name}", body, ctype) for name, (body, ctype, _) in HEADER_SIZES.items()}
    rows = run_task(list(urls.values()))
    for name, (_, _, size) in HEADER_SIZES.items():
        row = rows[urls[name]]
        assert (row["status"], value(row["original_width"]), value(row["original_height"])) == \
            ("too_many_pixels", *size), name


def test_a_top_down_bmp_is_read_right_side_up(server):
    """A negative BMP height: rows stored top-down. Two rows of two pixels, BGR: red on top, blue below."""
    red, blue = bytes([0, 0, 255]) * 2 + b"\x00\x00", bytes([255, 0, 0]) * 2 + b"\x00\x00"
    url = server.add_file("/top-down.bmp", bmp(2, -2, red + blue), "image/bmp")
    row = run_task([url], config(resize_mode="no", encode_format="png"))[url]
    assert (row["status"], row["width"], row["height"], row["original_width"], row["original_height"]) == \
        ("success", 2, 2, 2, 2)
    stored = np.asarray(Image.open(io.BytesIO(row["image"])).convert("RGB"))
    assert stored[0].tolist() == [[255, 0, 0]] * 2 and stored[1].tolist() == [[0, 0, 255]] * 2


# --------------------------------------------------------------------------------------------
# HTTP header values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [2**63, 2**64 + 1, 10**30])
def test_content_length_over_2_63_is_too_large_not_a_crash(server, length):
    url = server.add_handler(f"/length/{length}", raw_response(b"200 OK", b"Content-Type: image/png\r\n", b"abc",
                                                               length))
    row = run_task([url])[url]
    assert (row["status"], row["http_status"], row["content_type"]) == ("too_large", 200, "image/png")
    assert str(length) in row["error_message"]
    assert value(row["original_bytes"]) is None and value(row["bytes"]) is None


def test_header_bytes_0x80_to_0xff_arrive_as_latin_1_and_survive_arrow(server):
    """http.client decodes header bytes as ISO-8859-1: every byte is one code point U+0000..U+00FF, which
    UTF-8 (Arrow, Parquet) encodes; they are stored as sent (a NUL included; a 60 KB Content-Type cut to
    256 characters)."""
    odd = b"image/jpeg; x=\x80\xff\xc3\xa9\xed\xa0\x80\x00end"
    long = b"image/jpeg;" + b"\xed\xa0\x80" * 20000
    jpeg = G.make_image("JPEG", (64, 48))
    ok = server.add_handler("/odd-type", raw_response(b"200 OK", b"Content-Type: " + odd + b"\r\n", jpeg))
    overlong = server.add_handler("/long-type", raw_response(b"200 OK", b"Content-Type: " + long + b"\r\n", b"abc"))
    reason = server.add_handler("/odd-reason", raw_response(b"404 Not \xff\xfe Found", b"Content-Type: text/\x80\r\n"))
    rows = run_task([ok, overlong, reason])
    assert (rows[ok]["status"], rows[ok]["content_type"]) == ("success", odd.decode("latin-1"))
    # a 60 KB Content-Type is cut to fetch.MAX_CONTENT_TYPE_CHARS: it must not ride on every row
    assert (rows[overlong]["status"], rows[overlong]["content_type"]) == ("not_image", long.decode("latin-1")[:256])
    assert (rows[reason]["status"], rows[reason]["http_status"], rows[reason]["content_type"]) == \
        ("http_error", 404, "text/\x80")
    assert "Not \xff\xfe Found" in rows[reason]["error_message"]


def test_a_redirect_to_a_location_with_raw_bytes_is_one_failed_row(server):
    bad = server.add_handler("/bad-location", raw_response(b"302 Found", b"Location: /caf\xe9\xff.jpg\r\n"))
    row = run_task([bad])[bad]
    assert row["status"] != "success" and row["error_message"]
    assert value(row["image"]) is None


def test_a_redirect_to_a_utf8_location_reaches_the_file(server):
    server.add_file("/caf%C3%A9.jpg", G.make_image("JPEG", (64, 48)))
    url = server.add_handler("/utf8-location", raw_response(b"302 Found", b"Location: /caf\xc3\xa9.jpg\r\n"))
    assert run_task([url])[url]["status"] == "success"


def test_a_retry_after_of_non_ascii_digits_is_ignored(server):
    url = server.add_handler("/odd-retry-after", raw_response(b"503 Busy", b"Retry-After: \xb2\r\n"))
    row = run_task([url])[url]
    assert (row["status"], row["http_status"]) == ("http_error", 503)


# --------------------------------------------------------------------------------------------
# the per-row check itself
# --------------------------------------------------------------------------------------------


class _Fetcher:
    """Answers every URL with one FetchResult: values no HTTP client of ours makes (http.client gives
    status codes 100..999 and latin-1 strings), to check the row guard's own coverage."""

    def __init__(self, result: FetchResult):
        self.result = result
        self.pauses = None

    def fetch(self, url, **_):
        return self.result

    def close(self):
        pass


def test_values_no_column_holds_are_fixed_per_row_and_the_task_goes_on(server):
    fake = FetchResult(status="http_error", http_status=2**40, final_url="http://x/\udc80\ud83d\ude00",
                       content_type="text/\ud800", error_message="HTTP \udcff from x")
    row = RowDownloader(config(), fetcher=_Fetcher(fake))("http://x/")
    assert (row["status"], row["http_status"]) == ("http_error", None)
    assert row["final_url"] == "http://x/\ufffd\U0001f600"  # a valid pair joined, the lone half replaced
    assert row["content_type"] == "text/\ufffd"
    assert row["error_message"].startswith("HTTP \ufffd from x; ")
    assert str(2**40) in row["error_message"]
    rows = run_task(["http://x/a", "http://x/b"], factory=lambda cfg: RowDownloader(cfg, fetcher=_Fetcher(fake)))
    assert {r["status"] for r in rows.values()} == {"http_error"}
    assert all(value(r["http_status"]) is None for r in rows.values())


def test_fit_row_keeps_what_fits_and_nulls_what_does_not():
    row = {"status": "success", "error_message": None, "retryable": np.bool_(False), "http_status": np.int64(200),
           "final_url": "http://a/", "width": INT32_MAX, "height": -(2**31), "original_width": 2**31,
           "original_height": -(2**31) - 1, "bytes": 2**63 - 1, "original_bytes": 2**63, "fetched_at": 2**62,
           "image": bytearray(b"xy"), "image_format": 5, "sha256": b"ab", "content_type": True}
    out = fit_row(row)
    assert out["status"] == "success" and out["retryable"] is False and out["http_status"] == 200
    assert (out["width"], out["height"], out["original_width"], out["original_height"]) == \
        (INT32_MAX, -(2**31), None, None)
    assert (out["bytes"], out["original_bytes"], out["fetched_at"]) == (2**63 - 1, None, None)
    assert out["image"] == b"xy" and type(out["image"]) is bytes
    assert (out["image_format"], out["sha256"], out["content_type"]) == (None, None, None)
    for name in ("original_width", "original_height", "original_bytes", "fetched_at", "image_format", "sha256",
                 "content_type"):
        assert name in out["error_message"], name
    assert "width 2147483647" not in out["error_message"]
    clean = {"status": "timeout", "error_message": "slow", "retryable": True, "http_status": None,
             "fetched_at": 1_700_000_000_000_000}
    assert fit_row(clean) == clean


# --------------------------------------------------------------------------------------------
# metadata of images stored as downloaded (resize_mode=no)
# --------------------------------------------------------------------------------------------

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description where="home"/></rdf:RDF></x:xmpmeta>'


def exif_with_gps() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x0112] = 1  # Orientation: upright, so the bytes may be stored as they are
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 0.0)})
    return exif


def decoded(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def assert_no_metadata(stored: bytes, original: bytes) -> None:
    """Stored bytes: no EXIF (GPS included), same pixels and ICC profile as the original."""
    im, before = decoded(stored), decoded(original)
    assert len(im.getexif()) == 0 and len(im.getexif().get_ifd(0x8825)) == 0
    assert b"Exif\x00\x00" not in stored and b"xmpmeta" not in stored and b"PhoneMaker" not in stored
    assert np.array_equal(np.asarray(im), np.asarray(before)) and im.size == before.size
    assert im.info.get("icc_profile") == SRGB


def jpeg_with_metadata() -> bytes:
    jpeg = G.encode(G.textured((64, 48)), "JPEG", exif=exif_with_gps(), icc_profile=SRGB, xmp=XMP,
                    comment=b"shot at home")
    iptc = b"Photoshop 3.0\x008BIM\x04\x04\x00\x00\x00\x00\x00\x0a\x1c\x02\x5a\x00\x06Berlin"
    app13 = b"\xff\xed" + struct.pack(">H", len(iptc) + 2) + iptc
    return jpeg[:2] + app13 + jpeg[2:] + b"SEFHtrailer: lat 52.52"  # a phone's trailer after EOI


def png_with_metadata() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "shot at home")
    info.add_text("Raw profile type exif", "PhoneMaker", zip=True)
    info.add_itxt("XML:com.adobe.xmp", XMP.decode())
    return G.encode(G.textured((64, 48)), "PNG", exif=exif_with_gps(), icc_profile=SRGB, pnginfo=info)


def webp_with_metadata() -> bytes:
    return G.encode(G.textured((64, 48)), "WEBP", exif=exif_with_gps(), icc_profile=SRGB, xmp=XMP, lossless=True)


def png_chunks(data: bytes) -> list[bytes]:
    pos, kinds = 8, []
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        kinds.append(kind)
        pos += 12 + length
    return kinds


def webp_chunks(data: bytes) -> list[bytes]:
    pos, kinds = 12, []
    while pos < len(data):
        kind, size = struct.unpack_from("<4sI", data, pos)
        kinds.append(kind)
        pos += 8 + size + (size & 1)
    return kinds


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp"])
def test_stored_as_downloaded_loses_its_metadata_not_its_pixels(server, fmt):
    body = {"jpg": jpeg_with_metadata, "png": png_with_metadata, "webp": webp_with_metadata}[fmt]()
    assert len(decoded(body).getexif().get_ifd(0x8825)) == 4  # the GPS block is really in the download
    url = server.add_file(f"/meta/photo.{fmt}", body, f"image/{fmt}")
    row = run_task([url], config(resize_mode="no", encode_format=fmt))[url]
    assert (row["status"], row["image_format"], row["width"], row["height"]) == ("success", fmt, 64, 48)
    stored = row["image"]
    assert_no_metadata(stored, body)
    assert row["bytes"] == len(stored) < len(body)
    # the digests stay those of the download: blocklists match the bytes that were served
    assert (row["sha256"], row["md5"], row["sha1"], row["original_bytes"]) == (
        hashlib.sha256(body).hexdigest(), hashlib.md5(body).hexdigest(), hashlib.sha1(body).hexdigest(), len(body))
    if fmt == "jpg":
        assert b"Photoshop 3.0" not in stored and b"shot at home" not in stored and b"SEFH" not in stored
        assert stored.endswith(b"\xff\xd9")
    if fmt == "png":
        kinds = png_chunks(stored)
        assert not {b"eXIf", b"tEXt", b"zTXt", b"iTXt"} & set(kinds) and b"iCCP" in kinds
    if fmt == "webp":
        kinds = webp_chunks(stored)
        assert b"EXIF" not in kinds and b"XMP " not in kinds and b"ICCP" in kinds
        assert stored[20] & 0x0C == 0  # the VP8X flags no longer announce EXIF / XMP
        assert struct.unpack_from("<I", stored, 4)[0] == len(stored) - 8
    kept = run_task([url], config(resize_mode="no", encode_format=fmt, keep_exif=True))[url]
    assert kept["image"] == body


def test_a_jpeg_whose_segments_do_not_parse_is_re_encoded(server):
    """Two stray bytes between segments (libjpeg skips them with a warning): no lossless cut is certain,
    so the image is re-encoded (which drops EXIF too) instead of stored as downloaded."""
    jpeg = G.encode(G.textured((64, 48)), "JPEG", exif=exif_with_gps(), quality=95)
    dqt = jpeg.find(b"\xff\xdb")
    body = jpeg[:dqt] + b"\x00\x00" + jpeg[dqt:]
    before = np.asarray(decoded(body)).astype(int)
    url = server.add_file("/meta/stray.jpg", body)
    row = run_task([url], config(resize_mode="no"))[url]
    assert (row["status"], row["width"], row["height"]) == ("success", 64, 48)
    assert row["image"] != body and b"Exif\x00\x00" not in row["image"]
    assert len(decoded(row["image"]).getexif()) == 0
    assert np.abs(np.asarray(decoded(row["image"])).astype(int) - before).mean() < 3


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_strip_metadata_keeps_the_pixels_of_every_corpus_image():
    """Every JPEG / PNG / WebP of the corpus that Pillow decodes: stripped (or refused: None), the same
    pixels and ICC profile, and no EXIF left."""
    corpora = require()
    stripped = 0
    for path in sorted(p for p in (corpora / "images").rglob("*") if p.is_file()):
        body = path.read_bytes()
        try:
            im = decoded(body)
        except Exception:  # noqa: BLE001 - the corpus is full of broken files: not this test's subject
            continue
        if im.format not in ("JPEG", "PNG", "WEBP"):
            continue
        out = strip_metadata(body, im.format)
        if out is None or out is body:
            continue
        stripped += 1
        after = decoded(out)
        assert (after.format, after.mode, after.size) == (im.format, im.mode, im.size), path
        assert np.array_equal(np.asarray(after), np.asarray(im)), path
        assert after.info.get("icc_profile") == im.info.get("icc_profile"), path
        assert len(after.getexif()) == 0, path
    assert stripped >= 50  # the corpus holds camera JPEGs with EXIF and PNGs with text chunks


# --------------------------------------------------------------------------------------------
# through Spark
# --------------------------------------------------------------------------------------------


def test_the_download_job_survives_hostile_headers(spark, tmp_path, server):
    """The issue's job: a PNG claiming 4294967280 x 1 among ordinary rows made the task fail (4 times) and
    the job with it. Now every row is written once, the bombs with null sizes."""
    photo = jpeg_with_metadata()
    cases = {
        server.add_file("/job/bomb.png", G.png_claiming(4294967280, 1), "image/png"): ("too_many_pixels", None, 1),
        server.add_file("/job/bomb.bmp", bmp(-1, 1), "image/bmp"): ("too_many_pixels", None, 1),
        server.add_file("/job/bomb.tiff", tiff(1, 2**32 - 1), "image/tiff"): ("too_many_pixels", 1, None),
        server.add_file("/job/photo.jpg", photo): ("success", 64, 48),
        server.add_handler("/job/odd-type", raw_response(b"200 OK", b"Content-Type: image/\xff\xed\xa0\x80\r\n",
                                                         b"abc")): ("not_image", None, None),
    }
    pairs = pd.DataFrame({S.SAMPLE_ID: range(len(cases)), S.URL: list(cases), S.TEXT: "t"})
    spark.createDataFrame(pairs).repartition(2).write.parquet(str(tmp_path / "pairs"))
    cfg, module = cli.prepare("download", [], [
        f"input={tmp_path / 'pairs'}", f"output={tmp_path / 'images'}", "download.allowed_networks=127.0.0.1/32",
        "download.allowed_formats=jpeg,png,webp,bmp,tiff", "download.resize_mode=no", "download.min_image_bytes=0",
        "download.retries=0", "download.threads=4", "download.deadline_s=10"])
    summary = cli.run("download", cfg, module, spark)
    rows = spark.read.parquet(str(tmp_path / "images")).toPandas()
    assert sorted(rows[S.URL]) == sorted(cases) and summary["rows_out"] == len(cases)
    for _, row in rows.iterrows():
        assert (row["status"], value(row["original_width"]), value(row["original_height"])) == cases[row[S.URL]]
    odd = rows[rows[S.URL].str.endswith("/odd-type")].iloc[0]
    assert odd["content_type"] == "image/\xff\xed\xa0\x80"
    stored = rows[rows["status"] == "success"].iloc[0]["image"]
    assert_no_metadata(bytes(stored), photo)


@pytest.mark.parametrize("value", ["9" * 400, "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_a_retry_after_beyond_a_day_is_read_as_a_day(value):
    # 400 digits are inf as a float: a host paused for ever, and a pause record that is not JSON
    from laion_spark.download.fetch import parse_retry_after

    assert parse_retry_after(value) == 86400.0
