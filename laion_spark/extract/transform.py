"""extract as a DataFrame transform: file URIs -> candidates, extract_errors and per-file stats.

INPUT  -> a DataFrame with a string column `source_uri` (one archive file a row), optionally an int
          column `task` (files with the same task are read by one Spark task), and an ExtractConfig
OUTPUT -> `ExtractOutput(raw, candidates, errors, stats)`: `raw` is the one mapInPandas pass that
          streams every file record by record; the three tables are selections of it, so a job
          that persists `raw` parses each file once
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
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


class ExtractOutput(NamedTuple):
    raw: DataFrame
    candidates: DataFrame
    errors: DataFrame
    stats: DataFrame


def _rows_to_frame(rows: list) -> pd.DataFrame:
    frame = pd.DataFrame([vars(r) for r in rows], columns=_RAW_NAMES)
    # tz-aware UTC, so Arrow stores the instant whatever the session time zone is
    frame[S.CRAWL_TIME] = pd.to_datetime(frame[S.CRAWL_TIME], utc=True)
    for col in (S.SOURCE_OFFSET, S.SOURCE_LENGTH):
        frame[col] = frame[col].astype("Int64")
    frame[S.LANGUAGE_PROB] = frame[S.LANGUAGE_PROB].astype("float32")
    return frame


def _extract_partition(cfg):
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from laion_spark.extract.process import process_file  # imported on the executor

        rows: list = []
        for batch in batches:
            for uris in batch["uris"]:
                for row in (r for uri in uris for r in process_file(uri, cfg)):
                    rows.append(row)
                    if len(rows) >= cfg.arrow_batch_rows:
                        yield _rows_to_frame(rows)
                        rows = []
        if rows:
            yield _rows_to_frame(rows)

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
    raw = files.mapInPandas(_extract_partition(cfg), RAW)
    candidates = raw.filter(F.col("kind") == "candidate").select(
        *[F.col(f.name).cast(f.dataType).alias(f.name) for f in S.CANDIDATES.fields]
    )
    errors = raw.filter(F.col("kind") == "error").select(*[f.name for f in S.EXTRACT_ERRORS.fields])
    stats = raw.filter(F.col("kind") == "stats").select(S.SOURCE_URI, "counts")
    return ExtractOutput(raw, candidates, errors, stats)
