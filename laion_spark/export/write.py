"""The export writers (job level): packed rows -> shard files, in exactly one Spark action each.

INPUT  -> `write_webdataset`: pack_webdataset's rows, the output folder's fsspec URI and the shard
          count; `write_embeddings`: pack_embeddings' rows, a folder's fsspec URI and the dtype
OUTPUT -> the shards' files (export/webdataset.py, export/npy.py) and their stats as a list of dicts
          sorted by shard (SHARD_STATS / NPY_STATS rows): the only result of the one collect that
          writes them. The partition functions that Spark maps are here too, so the transforms in
          export/transform.py stay pure.

A retried task writes its shard through export/shards.py's protocol: a shard its first attempt
finished is kept, an incomplete one is redone. The caller (the job) checks the stats against its
row counts and the folder (`missing_*_files`) before its summary makes the output complete.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from laion_spark import schemas as S
from laion_spark.export import npy as N
from laion_spark.export import webdataset as W
from laion_spark.export.transform import NPY_STATS, SHARD, SHARD_STATS, packed_layout

log = logging.getLogger(__name__)


def _partition_id() -> int:
    from pyspark import TaskContext

    return TaskContext.get().partitionId()


def _shard_rows(frames: Iterator[pd.DataFrame], shard: int) -> Iterator[pd.DataFrame]:
    """One partition's batches -> the same batches, checked to be rows of shard `shard` only."""
    for frame in frames:
        if frame.empty:
            continue
        got = frame[SHARD].unique()
        if len(got) != 1 or int(got[0]) != shard:  # a bug guard: one partition, one shard
            raise RuntimeError(f"partition {shard} holds rows of shards {list(got)}; write pack_webdataset's rows")
        yield frame.drop(columns=[SHARD])


def webdataset_partition(layout: W.ShardLayout):
    """ShardLayout -> the mapInPandas function: one partition's rows -> its shard's files -> one stats
    row. An empty partition writes its (empty) shard too: shard names stay contiguous."""

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        shard = _partition_id()
        stats = W.write_shard(_shard_rows(frames, shard), layout, shard)
        yield pd.DataFrame([stats], columns=list(W.STATS_NAMES))

    return run


def write_webdataset(packed: DataFrame, output_uri: str) -> list[dict]:
    """pack_webdataset's rows + output folder (fsspec URI) -> the shards written (one collect: each
    partition writes its shard) -> per-shard stats (SHARD_STATS rows as dicts, by shard)."""
    layout = packed_layout(packed, output_uri)
    # timestamps go to the Python worker as UTC epoch microseconds: mapInPandas would hand them over
    # as naive local times of the session time zone, ambiguous where a DST change repeats an hour
    columns = [
        F.unix_micros(F.col(f.name)).alias(f.name) if isinstance(f.dataType, T.TimestampType) else F.col(f.name)
        for f in packed.schema.fields
        if not isinstance(f.dataType, T.BinaryType) or f.name == S.IMAGE
    ]
    rows = packed.select(*columns).mapInPandas(webdataset_partition(layout), SHARD_STATS).collect()
    return sorted((r.asDict(recursive=True) for r in rows), key=lambda s: s["shard"])


def embeddings_partition(folder_uri: str, dtype: str):
    """Folder + dtype -> the mapInArrow function: one partition's rows -> its shard's files -> one
    stats row (none for an empty partition). The partition is held in memory: about rows x dim x 8 bytes."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        kept = [b for b in batches if b.num_rows]
        if not kept:
            return
        shard = _partition_id()
        table = pa.Table.from_batches(kept)
        if table.column(SHARD).unique().to_pylist() != [shard]:  # a bug guard: one partition, one shard
            raise RuntimeError(f"partition {shard} holds rows of shards {table.column(SHARD).unique().to_pylist()}; "
                               "write pack_embeddings' rows")
        stats = N.write_shard(table, folder_uri, shard, dtype)
        yield pa.RecordBatch.from_pylist([stats], schema=pa.schema([
            pa.field("shard", pa.int32(), False), pa.field("rows", pa.int64(), False),
            pa.field("dim", pa.int32(), False)]))

    return run


def write_embeddings(packed: DataFrame, folder_uri: str, dtype: str) -> list[dict]:
    """pack_embeddings' rows + folder (fsspec URI) + dtype (float16 / float32) -> the .npy shards
    written (one collect) -> per-shard stats (NPY_STATS rows as dicts, by shard; none for an empty shard)."""
    if dtype not in N.DTYPES:
        raise ValueError(f"dtype {dtype!r}; valid values: {', '.join(N.DTYPES)}")
    if SHARD not in packed.columns:
        raise ValueError(f"write_embeddings writes pack_embeddings' rows (with column {SHARD})")
    rows = packed.mapInArrow(embeddings_partition(folder_uri, dtype), NPY_STATS).collect()
    return sorted((r.asDict() for r in rows), key=lambda s: s["shard"])


def missing_webdataset_files(output_uri: str, layout: W.ShardLayout, stats: list[dict]) -> list[str]:
    """-> what is wrong with the written shards of `stats` (empty: nothing): a file missing, or a tar
    not of the size its stats give (two attempts writing one shard at once could do that)."""
    import fsspec

    fs, folder = fsspec.core.url_to_fs(output_uri)
    sizes = {p["name"].rstrip("/").rsplit("/", 1)[-1]: p["size"] for p in fs.ls(folder, detail=True)}
    problems = []
    for s in stats:
        names = layout.file_names(s["shard"])
        missing = [n for n in names.values() if n not in sizes]
        if missing:
            problems.append(f"shard {s['shard']}: {missing} missing")
        elif sizes[names["tar"]] != s["tar_bytes"]:
            problems.append(f"shard {s['shard']}: {names['tar']} has {sizes[names['tar']]} bytes, its stats "
                            f"say {s['tar_bytes']}")
    return problems


def missing_embedding_files(folder_uri: str, stats: list[dict]) -> list[str]:
    """-> the files of the .npy shards of `stats` that are not in folder_uri (empty: none)."""
    import fsspec

    fs, folder = fsspec.core.url_to_fs(folder_uri)
    present = set()
    for sub in N.SUBDIRS.values():
        if fs.exists(f"{folder}/{sub}"):
            present |= {f"{sub}/{p.rstrip('/').rsplit('/', 1)[-1]}" for p in fs.ls(f"{folder}/{sub}", detail=False)}
    return [n for s in stats for n in N.file_names(s["shard"]).values() if n not in present]
