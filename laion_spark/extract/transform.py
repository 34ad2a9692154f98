"""extract as a DataFrame transform: file URIs -> candidates, extract_errors and per-file stats.

INPUT  -> a DataFrame with a string column `source_uri` (one archive file a row), optionally an int
          column `task` (files with the same task are read by one Spark task), and an ExtractConfig
OUTPUT -> `ExtractOutput(raw, candidates, errors, stats)`: `raw` is the one mapInArrow pass that
          streams every file record by record; the three tables are selections of it, so a job
          that persists `raw` parses each file once. `stats` is one row per file: source_uri,
          counts (JSON) and error (why the file could not be opened or read to its end, else null)

The rows go to Arrow directly (mapInArrow), not through a pandas frame: the frame and its conversion
cost 7% of the row logic's time on the corpora, the Arrow columns 2% (bench/README.md, issue 13).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import StringType, StructField, StructType

from laion_spark import schemas as S

RAW = StructType(
    [
        StructField("kind", StringType(), False),
        *S.nullable(S.CANDIDATES).fields,
        StructField(S.ERROR, StringType(), True),
        StructField("counts", StringType(), True),
    ]
)
_RAW_NAMES = [f.name for f in RAW.fields]
# RAW as Arrow, by pyspark's own converter (as export's metadata): TimestampType becomes UTC microseconds,
# which is how Spark reads it back whatever the session time zone; crawl_time's datetimes are tz-aware
RAW_ARROW = to_arrow_schema(RAW)


class ExtractOutput(NamedTuple):
    raw: DataFrame
    candidates: DataFrame
    errors: DataFrame
    stats: DataFrame


def _rows_to_batch(rows: list) -> pa.RecordBatch:
    """ExtractRows -> one Arrow batch of RAW (strings must be UTF-8-encodable: process.py sees to it)."""
    return pa.RecordBatch.from_pydict({name: [getattr(r, name) for r in rows] for name in _RAW_NAMES},
                                      schema=RAW_ARROW)


def _extract_partition(cfg):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from laion_spark.extract.process import process_file  # imported on the executor

        rows: list = []
        for batch in batches:
            for uris in batch.column("uris").to_pylist():
                for row in (r for uri in uris for r in process_file(uri, cfg)):
                    rows.append(row)
                    if len(rows) >= cfg.arrow_batch_rows:
                        yield _rows_to_batch(rows)
                        rows = []
        if rows:
            yield _rows_to_batch(rows)

    return run


def extract_candidates(paths_df: DataFrame, cfg, num_partitions: int | None = None) -> ExtractOutput:
    """DataFrame of file URIs + ExtractConfig -> ExtractOutput (no action is run here).

    With a `task` column, the files of one task id are read by one Spark task, and
    `num_partitions` (the number of task ids) puts each task id in a partition of its own;
    without it, each file is a task and `num_partitions` spreads them round-robin. None keeps
    the input's partitioning.
    """
    if "task" in paths_df.columns:
        files = paths_df.groupBy("task").agg(F.sort_array(F.collect_list(S.SOURCE_URI)).alias("uris"))
        if num_partitions:
            # exactly one task id per partition, with no sampling job and no shuffle of the
            # range: a range of task ids split into num_partitions slices, joined with the
            # (small, broadcast) file lists
            slots = paths_df.sparkSession.range(0, num_partitions, 1, num_partitions)
            files = slots.join(F.broadcast(files.withColumn("id", F.col("task").cast("long"))), "id")
    else:
        files = paths_df.select(F.array(S.SOURCE_URI).alias("uris"))
        if num_partitions:
            files = files.repartition(num_partitions)
    files = files.select("uris")
    raw = files.mapInArrow(_extract_partition(cfg), RAW)
    candidates = raw.filter(F.col("kind") == "candidate").select(
        *[F.col(f.name).cast(f.dataType).alias(f.name) for f in S.CANDIDATES.fields]
    )
    errors = raw.filter(F.col("kind") == "error").select(*[f.name for f in S.EXTRACT_ERRORS.fields])
    stats = raw.filter(F.col("kind") == "stats").select(S.SOURCE_URI, "counts", S.ERROR)
    return ExtractOutput(raw, candidates, errors, stats)
