"""export as DataFrame transforms: images -> webdataset shards, written by the tasks that evaluate the result.

INPUT  -> an images DataFrame (schemas.IMAGES, or schemas.images_schema of any download input: it needs
          sample_id, url, text, status, image, image_format; every other non-binary column is carried
          into the meta), an ExportConfig, the output folder's URI, the number of shards (the job counts
          the rows: ceil(rows / samples_per_shard)) and the row count of the largest shard (shard_sizes)
OUTPUT -> `export_webdataset`: a lazy DataFrame of SHARD_STATS, one row per shard; evaluating it (once,
          with a collect: the job does) writes the shards, see export/webdataset.py for the files.
          `shard_sizes`: a lazy DataFrame (shard, rows) of the same assignment, for the key width.

Shards are deterministic per row: the rows are hash-partitioned on sample_id into num_shards partitions
(the shard id is the partition id), and sorted within the partition by sample_id, then every other
orderable column (ties only where sample_id repeats). A retried task, a speculative copy or a rerun
therefore writes the same rows, in the same order, under the same keys, to the same files.
"""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from laion_spark import schemas as S
from laion_spark.export import webdataset as W

SHARD = "_shard"
REQUIRED_COLUMNS = (S.SAMPLE_ID, S.URL, S.TEXT, S.STATUS, S.IMAGE, W.IMAGE_FORMAT)

SHARD_STATS = T.StructType(
    [
        T.StructField("shard", T.IntegerType(), False),
        T.StructField("count", T.LongType(), False),
        T.StructField("successes", T.LongType(), False),
        T.StructField("skipped", T.LongType(), False),
        T.StructField("failed_to_download", T.LongType(), False),
        T.StructField("failed_to_resize", T.LongType(), False),
        T.StructField("status_dict", T.MapType(T.StringType(), T.LongType()), False),
        T.StructField("tar_bytes", T.LongType(), False),
        T.StructField("start_time", T.DoubleType(), False),
        T.StructField("end_time", T.DoubleType(), False),
        T.StructField("duration", T.DoubleType(), False),
    ]
)
assert tuple(SHARD_STATS.fieldNames()) == W.STATS_NAMES

# types Spark can sort by (a map cannot be; nested types are left out of the tie-break)
_ORDERABLE = (T.AtomicType,)


def check_columns(df: DataFrame) -> None:
    """Raise ValueError unless df has the columns export needs."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"export needs an images table (the download stage's output); missing column(s) {missing}")


def assign_shards(df: DataFrame, num_shards: int) -> DataFrame:
    """Rows -> the same rows in num_shards partitions by a hash of sample_id, sorted within each, with
    the shard id (= partition id) as column SHARD."""
    tie_break = [f.name for f in df.schema.fields
                 if f.name != S.SAMPLE_ID and isinstance(f.dataType, _ORDERABLE)]
    return (
        df.repartition(num_shards, F.col(S.SAMPLE_ID))
        .sortWithinPartitions(S.SAMPLE_ID, *tie_break)
        .withColumn(SHARD, F.spark_partition_id())
    )


def shard_sizes(images: DataFrame, num_shards: int) -> DataFrame:
    """images -> (shard int, rows long) for every non-empty shard, with the same assignment as
    export_webdataset (only sample_id is shuffled)."""
    ids = images.select(S.SAMPLE_ID).repartition(num_shards, F.col(S.SAMPLE_ID))
    return ids.groupBy(F.spark_partition_id().alias("shard")).agg(F.count(F.lit(1)).alias("rows"))


def _meta_source_columns(schema: T.StructType) -> list[T.StructField]:
    return [f for f in schema.fields if not isinstance(f.dataType, T.BinaryType)]


def webdataset_layout(schema: T.StructType, cfg, output_uri: str, num_shards: int,
                      largest_shard: int = 0) -> W.ShardLayout:
    """images schema + ExportConfig + output (fsspec URI) + shard count and largest shard -> ShardLayout."""
    from pyspark.sql.pandas.types import to_arrow_schema

    arrow = to_arrow_schema(T.StructType(_meta_source_columns(schema)))
    return W.ShardLayout(
        output_uri=output_uri,
        meta=W.meta_schema(arrow),
        key_digits=W.key_digits_for(cfg.samples_per_shard, largest_shard),
        shard_digits=W.shard_digits_for(num_shards),
    )


def write_partition(layout: W.ShardLayout):
    """ShardLayout -> the mapInPandas function: one partition's rows -> its shard's files -> one stats row."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        writer = None
        try:
            for batch in batches:
                if batch.empty:
                    continue
                shards = batch[SHARD].unique()
                if writer is None:
                    writer = W.ShardWriter(layout, int(shards[0]))
                if len(shards) != 1 or int(shards[0]) != writer.shard:  # a bug guard: one partition, one shard
                    raise RuntimeError(f"partition of shard {writer.shard} holds rows of shards {list(shards)}")
                writer.write(batch)
            if writer is None:  # an empty partition still gets its (empty) shard: shard names stay contiguous
                from pyspark import TaskContext

                writer = W.ShardWriter(layout, TaskContext.get().partitionId())
            stats = writer.close()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        yield pd.DataFrame([stats], columns=list(W.STATS_NAMES))

    return run


def export_webdataset(images: DataFrame, cfg, output_uri: str, num_shards: int, largest_shard: int = 0) -> DataFrame:
    """images + ExportConfig + output folder (fsspec URI) + shard count (+ rows of the largest shard)
    -> lazy per-shard stats (SHARD_STATS) whose evaluation writes the shards."""
    check_columns(images)
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    layout = webdataset_layout(images.schema, cfg, output_uri, num_shards, largest_shard)
    # timestamps go to the Python worker as UTC epoch microseconds: mapInPandas would hand them over
    # as naive local times of the session time zone, ambiguous where a DST change repeats an hour
    columns = [
        F.unix_micros(F.col(f.name)).alias(f.name) if isinstance(f.dataType, T.TimestampType) else F.col(f.name)
        for f in _meta_source_columns(images.schema)
    ]
    sharded = assign_shards(images, num_shards)
    return sharded.select(*columns, S.IMAGE, SHARD).mapInPandas(write_partition(layout), SHARD_STATS)
