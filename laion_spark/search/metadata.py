"""Metadata rows by sample_id, without a scan.

INPUT  -> the index's metadata/ parquet folder (any fsspec URI; sorted by sample_id), a cache folder and
          the index's tombstones (sample_ids no answer may hold)
OUTPUT -> `Metadata.rows(ids)`: one dict per id (None where the index has no such row)

The parquet is turned once into two cache files: `sample_ids.npy`, the sorted id column, memory-mapped
(np.load(mmap_mode="r")), and `metadata.arrow`, the rows in the same order as an Arrow IPC file,
memory-mapped too. A lookup is a binary search (np.searchsorted) in the first and a take() of those
rows from the second: the cost of k rows, whatever the table's size. Tombstoned rows are left out of
both files: a takedown's rows must not be copied to this disk again, even while the source parquet still
holds them (it is rewritten after the tombstones are written).
"""

from __future__ import annotations

import os

import numpy as np

from laion_spark.io import fsspec_uri

SAMPLE_ID = "sample_id"
_DONE = "_done"


def _read(parquet_folder: str):
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = fsspec.core.url_to_fs(fsspec_uri(parquet_folder))
    # not the hidden ones (Spark's _temporary, a takedown's `.name` written beside the file it replaces)
    files = sorted(f for f in fs.glob(f"{path.rstrip('/')}/*.parquet")
                   if not f.rstrip("/").rsplit("/", 1)[-1].startswith((".", "_")))
    if not files:
        raise FileNotFoundError(f"{parquet_folder} holds no parquet files (the index stage writes metadata/ there)")
    tables = []
    for f in files:
        with fs.open(f, "rb") as fh:
            tables.append(pq.read_table(fh))
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


def _build(parquet_folder: str, cache: str, tombstones: np.ndarray | None = None) -> None:
    import pyarrow as pa

    table = _read(parquet_folder)
    ids = table.column(SAMPLE_ID).to_numpy()
    if tombstones is not None and len(tombstones):
        table = table.filter(pa.array(~np.isin(ids, tombstones)))
        ids = table.column(SAMPLE_ID).to_numpy()
    if len(ids) > 1 and not np.all(ids[1:] >= ids[:-1]):  # range-partitioned files read in name order: sorted
        table = table.sort_by(SAMPLE_ID)
        ids = table.column(SAMPLE_ID).to_numpy()
    os.makedirs(cache, exist_ok=True)
    # temporary names of this process: two searchers opening one index at once each write whole files
    tmp_ids = os.path.join(cache, f"sample_ids.npy.{os.getpid()}.tmp")
    tmp_rows = os.path.join(cache, f"metadata.arrow.{os.getpid()}.tmp")
    with open(tmp_ids, "wb") as fh:
        np.save(fh, np.ascontiguousarray(ids, dtype=np.int64))
    with pa.OSFile(tmp_rows, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=65536):
            writer.write_batch(batch)
    os.replace(tmp_ids, os.path.join(cache, "sample_ids.npy"))
    os.replace(tmp_rows, os.path.join(cache, "metadata.arrow"))
    open(os.path.join(cache, _DONE), "w").close()


class Metadata:
    """The metadata of one index, memory-mapped from the cache (built there on first use). The cache folder
    is one index version's own (local.cache_folder): its tombstones are those of that version."""

    def __init__(self, parquet_folder: str, cache: str, tombstones: np.ndarray | None = None):
        import pyarrow as pa

        if not os.path.exists(os.path.join(cache, _DONE)):
            _build(parquet_folder, cache, tombstones)
        self.ids = np.load(os.path.join(cache, "sample_ids.npy"), mmap_mode="r")
        self.table = pa.ipc.open_file(pa.memory_map(os.path.join(cache, "metadata.arrow"))).read_all()
        self.columns = [c for c in self.table.column_names if c != SAMPLE_ID]

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, sample_ids) -> np.ndarray:
        """-> each id's row number, -1 where absent (binary search in the sorted, memory-mapped ids)."""
        want = np.asarray(sample_ids, dtype=np.int64)
        pos = np.searchsorted(self.ids, want)
        found = pos < len(self.ids)
        found[found] = np.asarray(self.ids[pos[found]]) == want[found]
        return np.where(found, pos, -1)

    def rows(self, sample_ids) -> list[dict | None]:
        pos = self.positions(sample_ids)
        hit = pos[pos >= 0]
        taken = self.table.take(hit).to_pylist() if len(hit) else []
        it = iter(taken)
        return [next(it) if p >= 0 else None for p in pos]
