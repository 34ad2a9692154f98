"""Metadata rows by sample_id, read from the index's metadata parquet where it lies: no scan, no copy.

INPUT  -> the index's metadata/ parquet folder (any fsspec URI; range-partitioned by sample_id and sorted in
          each file, as the index stage writes it), a cache folder of this index version's own and the
          index's tombstones (sample_ids no answer may hold)
OUTPUT -> `Metadata.rows(ids)`: one dict per id (None where the index has no such row, or it is tombstoned)

Opening reads the files' footers only (lookup.py): per row group its rows and the min / max of sample_id,
so what a Searcher holds grows with the files and row groups (about one file a million rows), not with
the rows, and opening an index of 5 billion rows reads a few thousand footers. A lookup reads the
sample_id column of the row group(s) whose range holds each id, then the other columns of the row groups
that do hold one: k rows cost at most k row groups, and the last row groups read stay in a small LRU
(a results page asks /metadata for the ids its search just found).

A metadata folder whose row groups are not ordered by sample_id (an index written before it was sorted, or
by hand) still works: lookup.py builds an on-disk locator of its ids once, in the cache folder, and says
so in the log. Nothing of a row but its sample_id and place is written to this disk, and tombstoned ids
are left out of that too.
"""

from __future__ import annotations

import numpy as np

from laion_spark.search.lookup import SAMPLE_ID, ParquetLookup

CACHE_BYTES = 64 * 2**20  # metadata row groups kept in memory


class Metadata:
    """The metadata of one index, looked up in its parquet files (thread-safe). The cache folder is one
    index version's own (local.cache_folder), used only for a locator of unordered files; its tombstones
    are those of that version."""

    def __init__(self, parquet_folder: str, cache: str, tombstones: np.ndarray | None = None,
                 cache_bytes: int = CACHE_BYTES, **lookup):
        self.lookup = ParquetLookup(parquet_folder, cache, key=SAMPLE_ID, exclude=tombstones, cache_bytes=cache_bytes,
                                    error=FileNotFoundError, label=parquet_folder,
                                    hint="the index stage writes metadata/ there", **lookup)
        # every column but sample_id (a file missing one gives None for it)
        self.columns = [c for c in self.lookup.columns if c != SAMPLE_ID]

    def __len__(self) -> int:
        """Rows a lookup can answer (the tombstoned ones the files still hold left out)."""
        return self.lookup.answerable()

    def rows(self, sample_ids) -> list[dict | None]:
        """sample_ids -> one dict per id (sample_id and every metadata column), None where absent or
        tombstoned."""
        return self.lookup.rows(sample_ids)
