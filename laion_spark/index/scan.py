"""One pass over one model's embeddings in Python tasks: each row's verdict, and the random samples the
index trains and is measured on (no Spark session: the row logic runs and is tested without one).

INPUT  -> Arrow batches of (sample_id, vector: list<float>); the dimension the samples take; per sample its
          seed and its threshold (the share of rows it keeps, as a 64-bit hash bound)
OUTPUT -> `scan_partition`: per row (sample_id, size, flaw): size null when there is no vector, flaw null
          or not_finite / zero_vector / reserved_id; and per sample an Arrow file per task of the rows that
          are indexable at that dimension with a hash below the threshold (sample_id, key, vector);
          `read_sample`: the `want` rows of smallest hash among a sample's files;
          `indexable`: the mask of rows an index of dimension d takes (what the add tasks keep)

Why here and not as Spark expressions: the checks as array lambdas (forall / aggregate over 512 floats)
and a Spark-side sample (orderBy a hash, limit) re-read and re-checked every vector in each of seven
passes: 752 s for 1,000,000 x 512 in bench/index.py. numpy does the checks in the pass that reads the
vectors, and the samples come out of the same pass. The hash of (sample_id, seed) makes a sample the
same for any partitioning of the input, and not its first rows (autofaiss#99).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from laion_spark.export.npy import matrix

NO_ID = -1
FLAWS = (None, "not_finite", "zero_vector", "reserved_id")  # by precedence after no_vector and wrong_dimension
SCAN_DDL = "sample_id long, size int, flaw string"
_SCAN_SCHEMA = pa.schema([pa.field("sample_id", pa.int64()), pa.field("size", pa.int32()),
                          pa.field("flaw", pa.string())])
KEY_SPACE = 2**64
_FLAW_NAMES = np.array(FLAWS, dtype=object)


def hash_keys(ids: np.ndarray, seed: int) -> np.ndarray:
    """sample_ids -> uint64 keys, uniform and independent of the row's position (splitmix64 of id ^ seed)."""
    with np.errstate(over="ignore"):
        x = ids.astype(np.int64).view(np.uint64) ^ np.uint64((seed * 0x9E3779B97F4A7C15) % KEY_SPACE)
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def threshold(want: int, rows: int) -> int:
    """-> the key bound that keeps about want rows of `rows` and, but for bad luck, not fewer: 1.2 x want
    plus ten standard deviations; every key when that is all of them."""
    keep = 1.2 * want + 10 * np.sqrt(max(want, 1)) + 50
    return KEY_SPACE - 1 if keep >= rows else int(keep / max(rows, 1) * KEY_SPACE)


def verdicts(ids: np.ndarray, column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(sample_ids, list<float> column) -> (size: int64, -1 where null; flaw: index into FLAWS, 0 = none).

    A null element counts as not finite (Arrow turns it into NaN here)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    lengths = column.value_lengths().fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    owner = np.repeat(np.arange(n), np.maximum(lengths, 0))
    bad = np.bincount(owner, weights=~np.isfinite(values), minlength=n) > 0
    with np.errstate(invalid="ignore", over="ignore"):
        norm2 = np.bincount(owner, weights=np.where(np.isfinite(values), values * values, 0.0), minlength=n)
    flaw = np.zeros(n, np.int8)
    flaw[ids == NO_ID] = 3  # faiss marks "no result" with id -1: such a row could never be told from none
    flaw[norm2 < 1e-12] = 2
    flaw[bad] = 1
    return lengths, flaw


def indexable(ids: np.ndarray, column: pa.Array, d: int) -> np.ndarray:
    """-> the mask of rows an index of dimension d takes: a vector of d finite values, not zero, id not -1."""
    size, flaw = verdicts(ids, column)
    return (size == d) & (flaw == 0)


def scan_partition(folder_uri: str, d: int, samples: dict[str, tuple[int, int]], id_col: str, vec_col: str):
    """-> the mapInArrow function: batches -> a verdict row per input row; as a side effect, per sample name
    ({name: (seed, key bound)}) its rows of this task in folder_uri/<name>/part_NNNNN.arrow (written as the
    batches come, temporary name then renamed; an empty sample writes no file)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import fsspec
        from pyspark import TaskContext

        from laion_spark.export.shards import commit, new_token, remove_quietly, temporary_path

        fs, folder = fsspec.core.url_to_fs(folder_uri)
        pid = TaskContext.get().partitionId()
        open_files: dict[str, tuple] = {}  # name -> (final, tmp, handle, writer, schema)
        try:
            for batch in batches:
                if not batch.num_rows:
                    continue
                ids = batch.column(id_col).to_numpy(zero_copy_only=False).astype(np.int64)
                column = batch.column(vec_col)
                size, flaw = verdicts(ids, column)
                yield pa.RecordBatch.from_arrays(
                    [pa.array(ids, pa.int64()), pa.array(size.astype(np.int32), pa.int32(), mask=size < 0),
                     pa.array(_FLAW_NAMES[flaw], pa.string())], schema=_SCAN_SCHEMA)
                ok = (size == d) & (flaw == 0)
                for name, (seed, bound) in samples.items():
                    keys = hash_keys(ids, seed)
                    keep = ok & (keys <= np.uint64(bound))
                    if not keep.any():
                        continue
                    if name not in open_files:
                        final = f"{folder}/{name}/part_{pid:05d}.arrow"
                        tmp = temporary_path(final, new_token())
                        fs.makedirs(f"{folder}/{name}", exist_ok=True)
                        handle = fs.open(tmp, "wb")
                        schema = pa.schema([pa.field("sample_id", pa.int64()), pa.field("key", pa.uint64()),
                                            pa.field("vector", column.type)])
                        open_files[name] = (final, tmp, handle, pa.ipc.new_file(handle, schema), schema)
                    where = np.flatnonzero(keep)
                    _, _, _, writer, schema = open_files[name]
                    writer.write_batch(pa.RecordBatch.from_arrays(
                        [pa.array(ids[where]), pa.array(keys[where]), column.take(pa.array(where))], schema=schema))
            for final, tmp, handle, writer, _ in open_files.values():
                writer.close()
                handle.close()
                commit(fs, [(tmp, final)])  # a finished file of another attempt is kept: the same rows
        except BaseException:
            for _final, tmp, handle, _, _ in open_files.values():
                handle.close()
                remove_quietly(fs, [tmp])
            raise

    return run


def read_sample(folder_uri: str, want: int, d: int) -> tuple[np.ndarray, np.ndarray, int]:
    """A sample's folder -> (ids, vectors) of the `want` rows with the smallest keys (ties by id), and how
    many rows the folder held."""
    import fsspec

    fs, folder = fsspec.core.url_to_fs(folder_uri)
    files = sorted(p for p in (fs.ls(folder, detail=False) if fs.exists(folder) else [])
                   if p.rsplit("/", 1)[-1].startswith("part_") and p.endswith(".arrow"))
    tables = []
    for path in files:
        with fs.open(path, "rb") as fh:
            tables.append(pa.ipc.open_file(pa.BufferReader(fh.read())).read_all())
    if not tables:
        return np.empty(0, np.int64), np.empty((0, d), np.float32), 0
    table = pa.concat_tables(tables)
    ids = table.column("sample_id").to_numpy().astype(np.int64)
    keys = table.column("key").to_numpy()
    order = np.lexsort((ids, keys))[:want]
    return ids[order], matrix(table.column("vector").take(pa.array(order)), "float32", "sample"), len(ids)
