"""Stored image bytes by sample_id, for the page's thumbnails: no scan per request, no Spark.

INPUT  -> the URI of an images or dataset table (parquet: sample_id + image bytes, as download and filter
          write them; any fsspec URI)
OUTPUT -> `ImageStore.get(sample_id)`: (bytes, content type) of that row's stored image, or None where the
          table has no such row or the row has no image (a failed download)

On open only the sample_id column is read, one row group at a time, into a sorted id array and the
position of each id in the table (16 bytes a row: a few hundred MB for ten million images, never the
bytes). A lookup is a binary search, then one read of the image column of the one row group that holds
it; the last row groups read are kept (an LRU bounded by bytes), because a results page asks for
several images of the same row groups in a row.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

import numpy as np

from laion_spark.io import fsspec_uri

log = logging.getLogger(__name__)

SAMPLE_ID = "sample_id"
IMAGE = "image"
CACHE_BYTES = 256 * 2**20  # row groups kept in memory (at least the last one, whatever its size)

# magic bytes -> content type: the table's image_format could be missing or wrong; the bytes are not
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
          (b"GIF89a", "image/gif"), (b"BM", "image/bmp"))


class ImageTableError(ValueError):
    """The table given as images= cannot serve thumbnails (no parquet files, no sample_id or image column)."""


def content_type(data: bytes) -> str:
    """Image bytes -> their MIME type by magic number (application/octet-stream when unknown)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    return "application/octet-stream"


def _parquet_files(fs, root: str) -> list[str]:
    """A table folder (or one file) -> its parquet files in name order, without Spark's hidden ones."""
    if fs.isfile(root):
        return [root]
    files = []
    for path in sorted(fs.find(root)):
        rel = path[len(root.rstrip("/")) + 1:]
        if any(part.startswith(("_", ".")) for part in rel.split("/")):  # _temporary/, _SUCCESS, .crc
            continue
        if path.endswith(".parquet"):
            files.append(path)
    return files


def check_table(uri: str) -> None:
    """An images= URI -> None when its first parquet file has sample_id and image; else ImageTableError
    (read: that one file's footer, so the CLI can refuse a wrong table before loading any index)."""
    import fsspec
    import pyarrow.parquet as pq

    fs, root = fsspec.core.url_to_fs(fsspec_uri(uri))
    files = _parquet_files(fs, root)
    if not files:
        raise ImageTableError(f"images={uri} holds no parquet files (give an images or dataset table)")
    with fs.open(files[0], "rb") as fh:
        _check_columns(uri, files[0], pq.ParquetFile(fh).schema_arrow.names)


def _check_columns(uri: str, path: str, names: list[str]) -> None:
    missing = [c for c in (SAMPLE_ID, IMAGE) if c not in names]
    if missing:
        raise ImageTableError(f"images={uri}: {path} has no {' or '.join(missing)} column (an images or dataset "
                              f"table has sample_id and image); its columns: {names}")


class ImageStore:
    """One images / dataset table opened for lookups by sample_id (thread-safe)."""

    def __init__(self, uri: str, cache_bytes: int = CACHE_BYTES):
        import fsspec
        import pyarrow.parquet as pq

        self.uri = uri
        self._fs, root = fsspec.core.url_to_fs(fsspec_uri(uri))
        self._files = _parquet_files(self._fs, root)
        if not self._files:
            raise ImageTableError(f"images={uri} holds no parquet files (give an images or dataset table)")
        self._meta = []  # per file: its parquet footer, read once (a lookup then reads only its row group)
        groups = []  # per row group of the table: (file number, row group number)
        starts = [0]  # first table position of each row group
        id_parts = []
        for f, path in enumerate(self._files):
            with self._fs.open(path, "rb") as fh:
                pf = pq.ParquetFile(fh)
                _check_columns(uri, path, pf.schema_arrow.names)
                self._meta.append(pf.metadata)
                for g in range(pf.metadata.num_row_groups):
                    ids = pf.read_row_group(g, columns=[SAMPLE_ID]).column(SAMPLE_ID)
                    id_parts.append(ids.to_numpy(zero_copy_only=False).astype(np.int64, copy=False))
                    groups.append((f, g))
                    starts.append(starts[-1] + len(ids))
        all_ids = np.concatenate(id_parts) if id_parts else np.empty(0, np.int64)
        order = np.argsort(all_ids, kind="stable")  # stable: of two rows with one id, the first is served
        self._ids = all_ids[order]
        self._positions = order.astype(np.int64)
        self._starts = np.asarray(starts, dtype=np.int64)
        self._groups = groups
        self._cache: OrderedDict[int, list] = OrderedDict()
        self._cache_sizes: dict[int, int] = {}
        self._cache_bytes = cache_bytes
        self._lock = threading.Lock()
        self.row_group_reads = 0  # how many row groups were read from storage (tests: the LRU works)
        log.info("serve: images=%s: %d rows in %d files, %d row groups", uri, len(self._ids), len(self._files),
                 len(groups))

    def __len__(self) -> int:
        return len(self._ids)

    def _position(self, sample_id: int) -> int | None:
        i = int(np.searchsorted(self._ids, sample_id))
        if i < len(self._ids) and int(self._ids[i]) == sample_id:
            return int(self._positions[i])
        return None

    def _row_group(self, group: int) -> list:
        """Row group number -> its image column as a list of bytes | None (from the LRU, else read now)."""
        import pyarrow.parquet as pq

        if group in self._cache:
            self._cache.move_to_end(group)
            return self._cache[group]
        f, g = self._groups[group]
        with self._fs.open(self._files[f], "rb") as fh:
            column = pq.ParquetFile(fh, metadata=self._meta[f]).read_row_group(g, columns=[IMAGE]).column(IMAGE)
        self.row_group_reads += 1
        images = column.to_pylist()
        self._cache[group] = images
        self._cache_sizes[group] = column.nbytes
        while len(self._cache) > 1 and sum(self._cache_sizes.values()) > self._cache_bytes:
            old, _ = self._cache.popitem(last=False)
            del self._cache_sizes[old]
        return images

    def get(self, sample_id: int) -> tuple[bytes, str] | None:
        """sample_id -> (stored image bytes, content type), or None (no such row, or no image in it)."""
        pos = self._position(sample_id)
        if pos is None:
            return None
        group = int(np.searchsorted(self._starts, pos, side="right")) - 1
        # one lock over the read too: the requests of one page mostly want the same row group, which is
        # then read once and served from memory to the others
        with self._lock:
            data = self._row_group(group)[pos - int(self._starts[group])]
        if not data:
            return None
        return bytes(data), content_type(data)
