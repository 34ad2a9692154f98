"""export as DataFrame transforms (pure: no reads, no writes, no actions): images -> rows packed into shards.

INPUT  -> an images DataFrame (schemas.IMAGES, or schemas.images_schema of any download input: it needs
          sample_id, url, text, status, image, image_format; every other non-binary column is carried
          into the meta), an ExportConfig, the number of shards (the job counts the rows:
          ceil(rows / samples_per_shard)) and the row count of the largest shard (shard_sizes);
          for .npy shards, rows of one embedding space (sample_id, url, text, image_embedding,
          text_embedding) and a shard count
OUTPUT -> `pack_webdataset`: lazy rows `key`, the images columns, SHARD: one partition per shard, in
          the order they go into it, each with its webdataset key; export/write.py writes them.
          `pack_embeddings`: the same for .npy shards (one partition per shard, SHARD column).
          `shard_sizes`: a lazy DataFrame (shard, rows) of the same assignment, for the key width.

Shards are deterministic per row: the rows are hash-partitioned on xxhash64(sample_id) into num_shards partitions
(the shard id is the partition id), and sorted within the partition by sample_id, then every other
orderable column (ties only where sample_id repeats). A retried task, a speculative copy or a rerun
therefore writes the same rows, in the same order, under the same keys, to the same files.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from laion_spark import schemas as S
from laion_spark.export import webdataset as W

SHARD = "_shard"
REQUIRED_COLUMNS = (S.SAMPLE_ID, S.URL, S.TEXT, S.STATUS, S.IMAGE, W.IMAGE_FORMAT)

NPY_COLUMNS = (S.SAMPLE_ID, S.URL, S.TEXT, S.IMAGE_EMBEDDING, S.TEXT_EMBEDDING)
# monotonically_increasing_id() = partition id << 33 + the row's index in the partition
_ROW_INDEX_BITS = 33

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

NPY_STATS = T.StructType(
    [
        T.StructField("shard", T.IntegerType(), False),
        T.StructField("rows", T.LongType(), False),
        T.StructField("dim", T.IntegerType(), False),
    ]
)

# types Spark can sort by (a map cannot be; nested types are left out of the tie-break)
_ORDERABLE = (T.AtomicType,)


def check_columns(df: DataFrame) -> None:
    """Raise ValueError unless df has the columns export needs."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"export needs an images table (the download stage's output); missing column(s) {missing}")


def assign_shards(df: DataFrame, num_shards: int, partitioned: bool = False) -> DataFrame:
    """Rows -> the same rows in num_shards partitions by a hash of sample_id (`partitioned`: they are
    already, by shard_key(), e.g. a join on it), sorted within each, with the shard id (= partition id)
    as column SHARD."""
    tie_break = [f.name for f in df.schema.fields
                 if f.name != S.SAMPLE_ID and isinstance(f.dataType, _ORDERABLE)]
    return (
        (df if partitioned else df.repartition(num_shards, shard_key()))
        .sortWithinPartitions(S.SAMPLE_ID, *tie_break)
        .withColumn(SHARD, F.spark_partition_id())
    )


def shard_key() -> Column:
    """What rows are hash-partitioned on: xxhash64(sample_id), not sample_id itself. A plan already
    partitioned by sample_id (a join or window upstream, e.g. export's duplicate check) would make Spark
    drop a repartition on sample_id as redundant, and adaptive execution may then coalesce that upstream
    shuffle into one partition: every row in shard 0 (seen with 4 shards and 4 shuffle partitions)."""
    return F.xxhash64(F.col(S.SAMPLE_ID))


def shard_sizes(images: DataFrame, num_shards: int) -> DataFrame:
    """images -> (shard int, rows long) for every non-empty shard, with the same assignment as
    pack_webdataset (only sample_id is shuffled)."""
    ids = images.select(S.SAMPLE_ID).repartition(num_shards, shard_key())
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


def packed_layout(packed: DataFrame, output_uri: str) -> W.ShardLayout:
    """pack_webdataset's rows + output folder (fsspec URI) -> the ShardLayout they were packed for
    (the key widths travel in the key column's metadata, so the writer needs no second copy of them)."""
    if W.KEY not in packed.columns or SHARD not in packed.columns:
        raise ValueError(f"expected pack_webdataset's rows (columns {W.KEY}, ..., {SHARD}); got {packed.columns}")
    widths = packed.schema[W.KEY].metadata
    if not {"shard_digits", "key_digits"} <= set(widths):
        raise ValueError(f"column {W.KEY!r} lacks pack_webdataset's metadata (shard_digits, key_digits)")
    from pyspark.sql.pandas.types import to_arrow_schema

    images = [f for f in packed.schema.fields if f.name not in (W.KEY, SHARD)]
    return W.ShardLayout(
        output_uri=output_uri,
        meta=W.meta_schema(to_arrow_schema(T.StructType(_meta_source_columns(T.StructType(images))))),
        key_digits=int(widths["key_digits"]),
        shard_digits=int(widths["shard_digits"]),
    )


def key_column(layout: W.ShardLayout) -> Column:
    """-> the webdataset key of each row of assign_shards' output: ShardLayout.key(shard, index) as a
    Column, the index being the row's place in its (sorted) partition. A shard too big for the key
    width fails the query rather than giving keys that run into the next shard's."""
    shard = F.col(SHARD).cast(T.LongType())
    index = F.monotonically_increasing_id() - F.shiftleft(shard, _ROW_INDEX_BITS)
    width = layout.shard_digits + layout.key_digits
    number = shard * F.lit(10**layout.key_digits) + index
    too_big = F.raise_error(F.concat(F.lit("a shard holds more rows than key_digits="),
                                     F.lit(str(layout.key_digits)), F.lit(" can number")))
    return F.when(index >= 10**layout.key_digits, too_big).otherwise(F.lpad(number.cast(T.StringType()), width, "0"))


def pack_webdataset(images: DataFrame, cfg, num_shards: int, largest_shard: int = 0,
                    partitioned: bool = False) -> DataFrame:
    """images (`partitioned`: already in num_shards partitions by shard_key()) + ExportConfig + shard count
    (+ rows of the largest shard) -> lazy `key`, the images columns, SHARD: num_shards partitions,
    partition i = shard i, rows in shard order (pure: nothing is written; export/write.py's
    write_webdataset writes exactly these rows)."""
    check_columns(images)
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    layout = webdataset_layout(images.schema, cfg, "", num_shards, largest_shard)
    sharded = assign_shards(images, num_shards, partitioned)
    widths = {"shard_digits": layout.shard_digits, "key_digits": layout.key_digits}
    return sharded.select(key_column(layout).alias(W.KEY, metadata=widths), *images.columns, SHARD)


def pack_embeddings(vectors: DataFrame, num_shards: int) -> DataFrame:
    """Rows of one embedding space (sample_id, url, text, image_embedding, text_embedding) + shard
    count -> lazy NPY_COLUMNS + SHARD: num_shards partitions, partition i = shard i, sorted by
    sample_id, url, text (pure; export/write.py's write_embeddings writes them)."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    missing = [c for c in NPY_COLUMNS if c not in vectors.columns]
    if missing:
        raise ValueError(f".npy shards need column(s) {missing}")
    return assign_shards(vectors.select(*NPY_COLUMNS), num_shards)
