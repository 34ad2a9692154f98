"""Stored image bytes by sample_id, for the page's thumbnails: no scan per request, no Spark.

INPUT  -> the URI of an images or dataset table (parquet: sample_id + image bytes, as download and filter
          write them; any fsspec URI)
OUTPUT -> `ImageStore.get(sample_id)`: (bytes, content type) of that row's stored image, or None where the
          table has no such row or the row has no image (a failed download, a takedown); the table opened
          again when its files change (ImagesUnavailable while they cannot be read)

On open only the sample_id column is read, one row group at a time, into a sorted id array and the
position of each id in the table (16 bytes a row: a few hundred MB for ten million images, never the
bytes). A lookup is a binary search, then one read of the image column of the one row group that holds
it; the last row groups read are kept (an LRU bounded by bytes), because a results page asks for
several images of the same row groups in a row.
"""

from __future__ import annotations

import logging
import threading
import time
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


# what tells one version of a file from the next, as each filesystem reports it (local: inode and times;
# s3: ETag; gcs: generation): a file written beside and moved over the old one differs in one of them
_VERSION_KEYS = ("size", "ino", "mtime", "created", "ETag", "LastModified", "generation", "updated")


def _parquet_files(fs, root: str) -> dict[str, tuple]:
    """A table folder (or one file) -> {its parquet file: the file's version}, in name order, without
    Spark's hidden ones."""
    listing = {root: fs.info(root)} if fs.isfile(root) else fs.find(root, detail=True)
    files = {}
    for path in sorted(listing):
        rel = path[len(root.rstrip("/")) + 1:]
        if any(part.startswith(("_", ".")) for part in rel.split("/")):  # _temporary/, _SUCCESS, .crc
            continue
        if path.endswith(".parquet"):
            files[path] = tuple(str(listing[path].get(k)) for k in _VERSION_KEYS)
    return files


def check_table(uri: str) -> None:
    """An images= URI -> None when its first parquet file has sample_id and image; else ImageTableError
    (read: that one file's footer, so the CLI can refuse a wrong table before loading any index)."""
    import fsspec
    import pyarrow.parquet as pq

    fs, root = fsspec.core.url_to_fs(fsspec_uri(uri))
    files = list(_parquet_files(fs, root))
    if not files:
        raise ImageTableError(f"images={uri} holds no parquet files (give an images or dataset table)")
    with fs.open(files[0], "rb") as fh:
        _check_columns(uri, files[0], pq.ParquetFile(fh).schema_arrow.names)


def _check_columns(uri: str, path: str, names: list[str]) -> None:
    missing = [c for c in (SAMPLE_ID, IMAGE) if c not in names]
    if missing:
        raise ImageTableError(f"images={uri}: {path} has no {' or '.join(missing)} column (an images or dataset "
                              f"table has sample_id and image); its columns: {names}")


class ImagesUnavailable(Exception):
    """The table's files changed and cannot be read again yet (mid-rewrite): answer 503, not old bytes."""


class _Table:
    """One version of the table's files, opened: the sorted ids, where each row is, each file's footer."""

    def __init__(self, fs, uri: str, files: dict[str, tuple]):
        import pyarrow.parquet as pq

        if not files:
            raise ImageTableError(f"images={uri} holds no parquet files (give an images or dataset table)")
        self.files = files  # {path: version}: what the table was opened from
        self.paths = list(files)
        self.meta = []  # per file: its parquet footer, read once (a lookup then reads only its row group)
        self.groups = []  # per row group of the table: (file number, row group number)
        starts = [0]  # first table position of each row group
        id_parts = []
        for f, path in enumerate(self.paths):
            with fs.open(path, "rb") as fh:
                pf = pq.ParquetFile(fh)
                _check_columns(uri, path, pf.schema_arrow.names)
                self.meta.append(pf.metadata)
                for g in range(pf.metadata.num_row_groups):
                    ids = pf.read_row_group(g, columns=[SAMPLE_ID]).column(SAMPLE_ID)
                    id_parts.append(ids.to_numpy(zero_copy_only=False).astype(np.int64, copy=False))
                    self.groups.append((f, g))
                    starts.append(starts[-1] + len(ids))
        all_ids = np.concatenate(id_parts) if id_parts else np.empty(0, np.int64)
        order = np.argsort(all_ids, kind="stable")  # stable: of two rows with one id, the first is served
        self.ids = all_ids[order]
        self.positions = order.astype(np.int64)
        self.starts = np.asarray(starts, dtype=np.int64)

    def position(self, sample_id: int) -> int | None:
        i = int(np.searchsorted(self.ids, sample_id))
        if i < len(self.ids) and int(self.ids[i]) == sample_id:
            return int(self.positions[i])
        return None


class ImageStore:
    """One images / dataset table opened for lookups by sample_id (thread-safe).

    The table's file listing is looked at again at most once per check_interval seconds: when a file
    changed (a takedown rewrites the files that held removed rows, their image bytes nulled), the table is
    opened again and the row groups kept in memory are dropped; while it cannot be (files mid-rewrite),
    get() raises ImagesUnavailable rather than serve the bytes read before."""

    def __init__(self, uri: str, cache_bytes: int = CACHE_BYTES, check_interval: float = 1.0):
        import fsspec

        self.uri = uri
        self._fs, self._root = fsspec.core.url_to_fs(fsspec_uri(uri))
        self._table = _Table(self._fs, uri, _parquet_files(self._fs, self._root))
        self._broken: str | None = None
        self._interval = check_interval
        self._checked = time.monotonic()
        self._cache: OrderedDict[int, list] = OrderedDict()
        self._cache_sizes: dict[int, int] = {}
        self._cache_bytes = cache_bytes
        self._lock = threading.Lock()
        self.row_group_reads = 0  # how many row groups were read from storage (tests: the LRU works)
        self.reopened = 0  # how many times the table was opened again after its files changed
        log.info("serve: images=%s: %d rows in %d files, %d row groups", uri, len(self), len(self._table.paths),
                 len(self._table.groups))

    def __len__(self) -> int:
        return len(self._table.ids)

    def _reopen(self, why: str) -> None:
        """Open the table's files again (under the lock), the row groups read before dropped."""
        self._cache.clear()
        self._cache_sizes.clear()
        self._broken = f"images={self.uri} changed ({why}) and cannot be read again yet; retry in a moment"
        try:
            self._table = _Table(self._fs, self.uri, _parquet_files(self._fs, self._root))
        except Exception as exc:  # noqa: BLE001 - files mid-rewrite or gone: refuse until they read
            log.warning("serve: images=%s changed and cannot be opened again: %s: %s", self.uri,
                        type(exc).__name__, exc)
            raise ImagesUnavailable(f"{self._broken}: {type(exc).__name__}: {exc}") from None
        self._broken = None
        self.reopened += 1
        log.info("serve: images=%s changed (%s); opened again: %d rows", self.uri, why, len(self))

    def _check(self) -> None:
        """Throttled: the file listing against the one opened; a change (or a failed reopening) -> reopen."""
        now = time.monotonic()
        if now - self._checked < self._interval:
            if self._broken is not None:
                raise ImagesUnavailable(self._broken)
            return
        self._checked = now
        if self._broken is not None:
            self._reopen("a reopening failed")
            return
        try:
            files = _parquet_files(self._fs, self._root)
        except Exception as exc:  # noqa: BLE001 - the folder cannot be listed: its files are not known
            files = {"<unlisted>": (f"{type(exc).__name__}: {exc}",)}
        if files != self._table.files:
            self._reopen("its files were rewritten")

    def _row_group(self, group: int) -> list:
        """Row group number -> its image column as a list of bytes | None (from the LRU, else read now)."""
        import pyarrow.parquet as pq

        if group in self._cache:
            self._cache.move_to_end(group)
            return self._cache[group]
        table = self._table
        f, g = table.groups[group]
        with self._fs.open(table.paths[f], "rb") as fh:
            column = pq.ParquetFile(fh, metadata=table.meta[f]).read_row_group(g, columns=[IMAGE]).column(IMAGE)
        self.row_group_reads += 1
        images = column.to_pylist()
        self._cache[group] = images
        self._cache_sizes[group] = column.nbytes
        while len(self._cache) > 1 and sum(self._cache_sizes.values()) > self._cache_bytes:
            old, _ = self._cache.popitem(last=False)
            del self._cache_sizes[old]
        return images

    def _lookup(self, sample_id: int):
        pos = self._table.position(sample_id)
        if pos is None:
            return None
        starts = self._table.starts
        group = int(np.searchsorted(starts, pos, side="right")) - 1
        return self._row_group(group)[pos - int(starts[group])]

    def get(self, sample_id: int) -> tuple[bytes, str] | None:
        """sample_id -> (stored image bytes, content type), or None (no such row, or no image in it);
        ImagesUnavailable while the table's changed files cannot be read."""
        # one lock over the read too: the requests of one page mostly want the same row group, which is
        # then read once and served from memory to the others
        with self._lock:
            self._check()
            try:
                data = self._lookup(sample_id)
            except (OSError, ValueError) as exc:  # a file replaced since the last look: its footer is not ours
                self._reopen(f"a read failed: {type(exc).__name__}: {exc}")
                data = self._lookup(sample_id)
        if not data:
            return None
        return bytes(data), content_type(data)
