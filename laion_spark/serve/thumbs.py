"""Stored image bytes by sample_id, for the page's thumbnails: no scan per request, no Spark, nothing per row
in memory.

INPUT  -> the URI of an images or dataset table (parquet: sample_id + image bytes, as download and filter
          write them; any fsspec URI) and a local cache folder (search.cache_dir)
OUTPUT -> `ImageStore.get(sample_id)`: (bytes, content type) of that row's stored image, or None where the
          table has no such row or the row has no image (a failed download, a takedown); the table opened
          again when its files change (ImagesUnavailable while they cannot be read)

The table is looked up by lookup.py: on open its footers are read (a few numbers per row group). A table
whose row groups are ordered by sample_id is found through the row groups' sample_id ranges; download
writes its rows in host order, so an images or dataset table is usually not, and then a locator of its
ids is built once in the cache (16 bytes a row on local disk, memory-mapped, kept across restarts while
the files' layout is the same) instead of the sorted id array and positions this process used to hold
(16 bytes a row in memory: about 90 GB at LAION-5B). A thumbnail miss reads the sample_id and image
columns of the one row group that holds the id, through its own file handle and under no lock that
other requests wait on; a results page asks for several images of the same row groups in a row, so the
last row groups read are kept (an LRU bounded by bytes) and two requests for one row group at once make
one read.
"""

from __future__ import annotations

import logging
import os

from laion_spark.io import fsspec_uri
from laion_spark.search.lookup import NOT_FOUND, SAMPLE_ID, ParquetLookup, TableError, parquet_files
from laion_spark.search.lookup import TableUnavailable as ImagesUnavailable

log = logging.getLogger(__name__)

IMAGE = "image"
CACHE_BYTES = 256 * 2**20  # row groups kept in memory (at least the last one, whatever its size)
HINT = "an images or dataset table has sample_id and image"

__all__ = ["CACHE_BYTES", "IMAGE", "ImageStore", "ImageTableError", "ImagesUnavailable", "check_table",
           "content_type"]

# magic bytes -> content type: the table's image_format could be missing or wrong; the bytes are not
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
          (b"GIF89a", "image/gif"), (b"BM", "image/bmp"))


class ImageTableError(TableError):
    """The table given as images= cannot serve thumbnails (no parquet files, no sample_id or image column)."""


def content_type(data: bytes) -> str:
    """Image bytes -> their MIME type by magic number (application/octet-stream when unknown)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    return "application/octet-stream"


def check_table(uri: str) -> None:
    """An images= URI -> None when its first parquet file has sample_id and image; else ImageTableError
    (read: that one file's footer, so the CLI can refuse a wrong table before loading any index)."""
    import fsspec
    import pyarrow.parquet as pq

    fs, root = fsspec.core.url_to_fs(fsspec_uri(uri))
    files = list(parquet_files(fs, root))
    if not files:
        raise ImageTableError(f"images={uri} holds no parquet files (give an images or dataset table)")
    with fs.open(files[0], "rb") as fh:
        names = pq.ParquetFile(fh).schema_arrow.names
    missing = [c for c in (SAMPLE_ID, IMAGE) if c not in names]
    if missing:
        raise ImageTableError(f"images={uri}: {files[0]} has no {' or '.join(missing)} column ({HINT}); "
                              f"its columns: {names}")


class ImageStore:
    """One images / dataset table opened for lookups by sample_id (thread-safe).

    The table's file listing is looked at again at most once per check_interval seconds: when a file
    changed (a takedown rewrites the files that held removed rows, their image bytes nulled), the table is
    opened again and the row groups kept in memory are dropped; while it cannot be (files mid-rewrite),
    get() raises ImagesUnavailable rather than serve the bytes read before. cache_dir: where a locator of
    an unordered table is kept (search.cache_dir; default: $LAION_SPARK_CACHE_DIR/search or
    ~/.cache/laion-spark/search), under images/<hash of the URI>/."""

    def __init__(self, uri: str, cache_bytes: int = CACHE_BYTES, check_interval: float = 1.0, cache_dir: str = "",
                 **lookup):
        import hashlib

        from laion_spark.search.local import default_cache_dir

        self.uri = uri
        cache = os.path.join(cache_dir or default_cache_dir(), "images",
                             hashlib.sha256(fsspec_uri(uri).rstrip("/").encode()).hexdigest()[:16])
        self.lookup = ParquetLookup(uri, cache, key=SAMPLE_ID, required=(IMAGE,), cache_bytes=cache_bytes,
                                    check_interval=check_interval, error=ImageTableError, label=f"images={uri}",
                                    hint=HINT, **lookup)
        log.info("serve: images=%s: %s", uri, self.lookup.describe())

    def __len__(self) -> int:
        return len(self.lookup)

    @property
    def reopened(self) -> int:
        """How many times the table was opened again after its files changed."""
        return self.lookup.reopened

    @property
    def row_group_reads(self) -> int:
        """How many row groups were read from storage (tests: the LRU works)."""
        return self.lookup.row_group_reads

    def get(self, sample_id: int) -> tuple[bytes, str] | None:
        """sample_id -> (stored image bytes, content type), or None (no such row, or no image in it);
        ImagesUnavailable while the table's changed files cannot be read."""
        data = self.lookup.value(sample_id, IMAGE)
        if data is NOT_FOUND or not data:
            return None
        return bytes(data), content_type(data)
