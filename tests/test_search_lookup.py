"""search's metadata lookup at scale: what opening holds does not grow with the rows, and every answer is the
one a brute-force pandas lookup of the same files gives (ids at row-group boundaries, absent ids, ids
outside the table, a duplicated id), for metadata laid out as the index stage writes it (range-partitioned
by sample_id, sorted in each file, many row groups) and for metadata that is not sorted (older outputs:
the on-disk locator, built with bounded memory).

Memory is measured around the open with tracemalloc (Python and numpy allocations) and an Arrow proxy
memory pool (what pyarrow decodes), for N and 10 N rows in the same number of files and row groups; a
control reads the table the way the lookup used to at open, under the same measurement, and grows.
No Spark: the files are written here with pyarrow, in the index stage's layout.
"""

from __future__ import annotations

import gc
import logging
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laion_spark.search.lookup import ParquetLookup
from laion_spark.search.metadata import Metadata

FILES, GROUPS = 4, 25  # per table: 4 files of 25 row groups, whatever the rows
N = 20_000


def rows_of(n: int, seed: int = 0) -> pd.DataFrame:
    """n small metadata rows; ids spaced by 3 (so id +- 1 is absent), negative ones too; one id twice."""
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(np.arange(-3 * n, 3 * n, 3, dtype=np.int64), n, replace=False))
    ids[n // 2] = ids[n // 2 - 1]  # a duplicated id (the first row is the answer)
    return pd.DataFrame({
        "sample_id": ids, "url": [f"http://x.test/{i}.jpg" for i in range(n)],
        "text": [None if i % 97 == 0 else f"caption {i}" for i in range(n)],
        "punsafe": np.round(rng.random(n), 3), "width": rng.integers(1, 4000, n).astype(np.int32)})


def write_table(df: pd.DataFrame, folder: Path, files: int = FILES, groups: int = GROUPS) -> Path:
    """-> folder of parquet files as the index stage writes metadata/: the rows in id order cut into
    `files` consecutive ranges, each file of `groups` row groups (in whatever order df is in)."""
    folder.mkdir(parents=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    per_file = -(-len(df) // files)
    for f in range(files):
        part = table.slice(f * per_file, per_file)
        pq.write_table(part, folder / f"part-{f:05d}.parquet", row_group_size=-(-part.num_rows // groups))
    return folder


def brute_force(df: pd.DataFrame, ids) -> list[dict | None]:
    """The first row of each id in table order (files by name, rows in file order), or None."""
    first = df.drop_duplicates("sample_id", keep="first").set_index("sample_id", drop=False)
    out = []
    for i in ids:
        if i in first.index:
            row = first.loc[i].to_dict()
            out.append({k: (None if isinstance(v, float) and np.isnan(v) else
                            (v.item() if hasattr(v, "item") else v)) for k, v in row.items()})
        else:
            out.append(None)
    return out


def probes(df: pd.DataFrame, folder: Path, seed: int = 1) -> list[int]:
    """Ids to ask for: each row group's first and last id and the ids just outside them, random ids of
    the table, ids below, above and between, the int64 extremes."""
    ids = []
    for path in sorted(folder.glob("*.parquet")):
        pf = pq.ParquetFile(path)
        for g in range(pf.num_row_groups):
            col = pf.read_row_group(g, columns=["sample_id"]).column(0).to_numpy()
            ids += [int(col.min()), int(col.max()), int(col.min()) - 1, int(col.max()) + 1,
                    int(col[0]), int(col[-1])]
    rng = np.random.default_rng(seed)
    ids += rng.choice(df["sample_id"].to_numpy(), 200).tolist()
    lo, hi = int(df["sample_id"].min()), int(df["sample_id"].max())
    ids += [lo - 3, hi + 3, lo - 10**9, hi + 10**9, 1, -1, 0, -2**63, 2**63 - 1]
    return [int(i) for i in ids]


_POOLS = []  # every proxy pool measured with, kept: a buffer allocated from one must not outlive it


def measured(opener):
    """opener() under tracemalloc and an Arrow proxy pool -> (what it returned, Python/numpy bytes held after,
    their peak during, Arrow bytes held after, Arrow peak during)."""
    gc.collect()
    previous = pa.default_memory_pool()
    pool = pa.proxy_memory_pool(previous)
    _POOLS.append(pool)
    pa.set_memory_pool(pool)
    tracemalloc.start()
    try:
        opened = opener()
        gc.collect()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        pa.set_memory_pool(previous)
    return opened, held, peak, pool.bytes_allocated(), pool.max_memory()


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """Sorted metadata of N and 10 N rows, and an unsorted copy of each (rows shuffled in every file)."""
    root = tmp_path_factory.mktemp("lookup")
    out = {}
    for n in (N, 10 * N):
        df = rows_of(n, seed=n)
        out[("sorted", n)] = (df, write_table(df, root / f"sorted-{n}"))
        shuffled = df.sample(frac=1.0, random_state=3).reset_index(drop=True)
        out[("shuffled", n)] = (shuffled, write_table(shuffled, root / f"shuffled-{n}"))
    Metadata(str(out[("sorted", N)][1]), str(root / "warm"))  # imports and first-call caches out of the way
    return out


def test_opening_sorted_metadata_holds_nothing_that_grows_with_the_rows(tables, tmp_path):
    seen = {}
    for n in (N, 10 * N):
        _, folder = tables[("sorted", n)]
        cache = tmp_path / str(n)
        meta, held, peak, arrow_held, arrow_peak = measured(lambda f=folder, c=cache: Metadata(str(f), str(c)))
        assert meta.lookup.ordered and len(meta) == n
        assert meta.lookup.rows_read == 0 and meta.lookup.row_group_reads == 0  # footers only: no row decoded
        assert not cache.exists()  # and nothing written to the cache
        seen[n] = (held, peak, arrow_held, arrow_peak)
        del meta
    (held1, peak1, _, a_peak1), (held10, peak10, a_held10, a_peak10) = seen[N], seen[10 * N]
    # 9 N more rows: a per-row structure of even 1 byte a row would add 180 KB; the bound is 16 KB
    assert held10 - held1 < 16_384, seen
    assert peak10 - peak1 < 16_384, seen
    assert a_held10 == 0 and a_peak10 - a_peak1 < 16_384, seen
    assert held10 < 200_000, seen  # 100 row groups, 4 files: a few numbers each

    # the control: what the lookup did at open before (read the table into memory), under the same measurement
    control = {n: measured(lambda f=tables[("sorted", n)][1]: pq.read_table(f).num_rows)[4] for n in (N, 10 * N)}
    assert control[10 * N] - control[N] > 9 * N * 8, control  # grows with the rows: the measurement sees it


@pytest.mark.parametrize("layout", ["sorted", "shuffled"])
def test_lookups_are_what_a_brute_force_lookup_of_the_files_gives(tables, tmp_path, layout, caplog):
    df, folder = tables[(layout, N)]
    with caplog.at_level(logging.INFO, logger="laion_spark.search.lookup"):
        meta = Metadata(str(folder), str(tmp_path / "cache"))
    assert meta.lookup.ordered == (layout == "sorted")
    assert ("not ordered by sample_id" in caplog.text) == (layout == "shuffled")
    assert meta.columns == ["url", "text", "punsafe", "width"]
    ids = probes(df, folder)
    want = brute_force(df, ids)
    assert meta.rows(ids) == want
    assert sum(w is None for w in want) > 50 and sum(w is not None for w in want) > 300  # both kinds asked
    assert [meta.rows([i])[0] for i in ids[:120]] == want[:120]  # one at a time too
    dup = int(df["sample_id"][df["sample_id"].duplicated()].iloc[0])
    assert meta.rows([dup])[0]["url"] == df[df["sample_id"] == dup]["url"].iloc[0]  # the first row of two
    assert meta.rows([]) == []


def test_a_lookup_reads_only_the_row_groups_that_can_hold_the_ids(tables, tmp_path):
    df, folder = tables[("sorted", 10 * N)]
    meta = Metadata(str(folder), str(tmp_path / "cache"), cache_bytes=0)  # no LRU: every read counted
    lookup = meta.lookup
    ids = df["sample_id"].to_numpy()
    per_group = 10 * N // (FILES * GROUPS)
    wanted = [int(ids[0]), int(ids[7 * per_group + 3])]  # two row groups
    assert meta.rows(wanted) == brute_force(df, wanted)
    # per row group holding an id: its sample_id column, then its other columns: 2 reads each, no more
    assert lookup.row_group_reads == 4 and lookup.rows_read == 4 * per_group
    before = lookup.row_group_reads
    assert meta.rows([int(ids[0]) + 1]) == [None]  # absent, inside row group 0's range: its id column only
    assert lookup.row_group_reads - before == 1
    before = lookup.row_group_reads
    assert meta.rows([int(ids.max()) + 100, int(ids.min()) - 100]) == [None, None]  # outside every range: nothing
    assert lookup.row_group_reads == before


def test_tombstoned_ids_are_absent(tables, tmp_path):
    df, folder = tables[("sorted", N)]
    dead = np.sort(df["sample_id"].to_numpy()[[5, 900, 4000]])
    for layout in ("sorted", "shuffled"):
        df, folder = tables[(layout, N)]
        meta = Metadata(str(folder), str(tmp_path / layout), tombstones=dead)
        alive = [int(df["sample_id"].iloc[7])]
        assert meta.rows([*dead.tolist(), *alive]) == [None, None, None, *brute_force(df, alive)]
        assert len(meta) == N - 3


def test_unsorted_metadata_builds_a_locator_with_bounded_memory_once(tables, tmp_path, caplog):
    small = dict(chunk_rows=4096, bucket_rows=4096, sample_rows=4096)  # many chunks and buckets at this size
    seen = {}
    for n in (N, 10 * N):
        df, folder = tables[("shuffled", n)]
        cache = tmp_path / str(n)
        meta, held, peak, arrow_held, arrow_peak = measured(lambda f=folder, c=cache: Metadata(str(f), str(c), **small))
        assert not meta.lookup.ordered and meta.lookup.rows_read == n  # the id column read once, to build it
        assert sorted(p.name for p in cache.glob("locator-*/*")) == ["_done", "ids.npy", "pos.npy"]
        located = np.load(next(cache.glob("locator-*/ids.npy")))
        assert np.array_equal(located, np.sort(df["sample_id"].to_numpy()))
        ids = probes(df, folder, seed=n)
        assert meta.rows(ids) == brute_force(df, ids)
        seen[n] = (held, peak, arrow_peak)
        # opened again: the locator is found, not built (no row read, no build logged)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="laion_spark.search.lookup"):
            again = Metadata(str(folder), str(cache), **small)
        assert again.lookup.rows_read == 0 and "building" not in caplog.text
        assert again.rows(ids[:50]) == brute_force(df, ids[:50])
    # building reads 10x the ids; its peak is bounded by the chunk, bucket and row-group sizes, not the rows
    assert seen[10 * N][1] < 2 * seen[N][1] + 256 * 1024, seen
    assert seen[10 * N][1] < 2 * 2**20 and seen[10 * N][2] < 2 * 2**20, seen
    assert seen[10 * N][0] - seen[N][0] < 16_384, seen  # and what it holds after: the files' footers' numbers


def test_a_rewritten_file_is_followed_not_misread(tables, tmp_path):
    """A takedown rewrites a metadata file (rows removed) under an open lookup: the next lookup sees the
    rows group ranges changed, opens the files again and answers from the new ones."""
    df, src = tables[("sorted", N)]
    folder = tmp_path / "meta"
    folder.mkdir()
    for p in src.glob("*.parquet"):
        (folder / p.name).write_bytes(p.read_bytes())
    lookup = ParquetLookup(str(folder), str(tmp_path / "cache"))
    first = pq.read_table(folder / "part-00001.parquet")
    gone = first.column("sample_id").to_numpy()[10]
    kept = first.filter(pa.array(first.column("sample_id").to_numpy() != gone))
    tmp = folder / ".part-00001.parquet.tmp"
    pq.write_table(kept, tmp, row_group_size=37)  # other row groups too
    tmp.replace(folder / "part-00001.parquet")
    later = int(first.column("sample_id").to_numpy()[500])
    assert lookup.rows([int(gone), later]) == [None, *brute_force(df, [later])]
    assert lookup.reopened == 1
