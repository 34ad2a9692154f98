"""download as DataFrame transforms: pairs -> images (one row per input row), and the retry split.

INPUT  -> a DataFrame with `url` (any other columns, e.g. pairs' sample_id and text, are carried
          along), a DownloadConfig and the number of download tasks
OUTPUT -> the images DataFrame (schemas.images_schema of the input); nothing runs until the job
          writes it, and it must be evaluated once only (each evaluation downloads again)

Rows are grouped by host before the download: the partition key is a hash of the URL's host, so
one task holds all of a host's rows and its per-host cap bounds what the site receives. A host
with more than host_rows_per_task rows is salted over up to max_tasks_per_host tasks, so one huge
site neither makes one straggler task nor gets more than max_tasks_per_host x per_host_connections
concurrent requests. Rows without a host (no site to be polite to; they fail fast as invalid_url)
are spread over all tasks by a hash of the URL, so millions of them make no stragglers. The host is
pool.host_of's (the task's per-host cap and pauses), computed here by its Spark SQL twin.
"""

from __future__ import annotations

from typing import NamedTuple

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from laion_spark import schemas as S

_HOST = "_download_host"
_KEY = "_download_key"


def host_column(url_col: str = S.URL):
    """The URL's host key as a Column: pool.host_of in Spark SQL (same pattern, same steps; '' for none)."""
    from laion_spark.download.pool import ASCII_LOWER, ASCII_UPPER, HOST_PATTERN

    host = F.regexp_extract(F.concat(F.col(url_col), F.lit("/")), HOST_PATTERN, 1)
    return F.coalesce(F.translate(host, ASCII_UPPER, ASCII_LOWER), F.lit(""))


def partition_by_host(df: DataFrame, cfg, num_partitions: int) -> DataFrame:
    """DataFrame with url -> the same rows in num_partitions partitions, grouped by (salted) host."""
    hosts = df.withColumn(_HOST, host_column())
    sizes = hosts.groupBy(_HOST).agg(F.count(F.lit(1)).alias("_host_rows"))
    salts = F.least(F.ceil(F.col("_host_rows") / F.lit(cfg.host_rows_per_task)), F.lit(cfg.max_tasks_per_host))
    salted = F.xxhash64(F.col(_HOST), F.pmod(F.xxhash64(F.col(S.URL)), salts.cast("long")))
    keyed = hosts.join(sizes, _HOST, "left").withColumn(
        _KEY, F.when(F.col(_HOST) == "", F.xxhash64(F.col(S.URL))).otherwise(salted)
    )
    return keyed.repartition(num_partitions, _KEY).drop(_HOST, "_host_rows", _KEY)


def download_images(df: DataFrame, cfg, num_partitions: int, pauses=None) -> DataFrame:
    """DataFrame with url + DownloadConfig (+ a pyspark Observation) -> images DataFrame (lazy; one
    evaluation = one download). With `pauses`, once the result has been written, host_pauses(pauses)
    says which hosts asked for a pause (429/503 Retry-After) and for how long (no SparkContext needed:
    works on Spark Connect)."""
    from pyspark.sql.types import StringType, StructField, StructType

    from laion_spark.download.task import PAUSE_REPORT, download_partition

    schema = S.images_schema(df.schema)
    inputs = df.select(*[f.name for f in schema.fields if f.name not in S.DOWNLOAD_COLUMNS])
    grouped = partition_by_host(inputs, cfg, num_partitions)
    if pauses is None:
        return grouped.mapInPandas(download_partition(cfg, schema.fieldNames()), schema)
    with_report = StructType([*schema.fields, StructField(PAUSE_REPORT, StringType())])
    out = grouped.mapInPandas(download_partition(cfg, with_report.fieldNames(), report=True), with_report)
    return out.observe(pauses, F.collect_list(PAUSE_REPORT).alias("pauses")).drop(PAUSE_REPORT)


def host_pauses(pauses) -> dict:
    """The Observation given to download_images, after the write -> {hosts, requests, paused_s, max_s}."""
    from laion_spark.download.pool import pause_summary

    return pause_summary(pauses.get.get("pauses") or [])


def retryable_column():
    """schemas.is_retryable as a Column over status and http_status (not the stored flag: an older
    table, or one edited by hand, is judged by the same rule)."""
    http = F.col(S.HTTP_STATUS)
    return F.col(S.STATUS).isin(*S.RETRYABLE_STATUSES) | (
        (F.col(S.STATUS) == "http_error") & ((http == 429) | (http >= 500))
    )


class RetrySplit(NamedTuple):
    kept: DataFrame  # rows of the earlier images table kept as they are (images schema)
    todo: DataFrame  # input rows to download (again): retryable failures and rows the table lacks


def split_retry(df: DataFrame, previous: DataFrame) -> RetrySplit:
    """Input rows + an earlier images table -> what to keep and what to download again (by sample_id)."""
    base = [c for c in df.columns if c not in S.DOWNLOAD_COLUMNS]
    # a table written before a download column existed (sha1) gives nulls in it for the rows it keeps
    prev = previous.select(F.col(S.SAMPLE_ID).alias("_prev_id"), *[
        F.col(f.name) if f.name in previous.columns else F.lit(None).cast(f.dataType).alias(f.name)
        for f in S.DOWNLOAD_FIELDS])
    joined = df.select(*base).join(prev, F.col(S.SAMPLE_ID) == F.col("_prev_id"), "left")
    again = F.col(S.STATUS).isNull() | retryable_column()
    schema = S.images_schema(df.schema)
    kept = joined.filter(~again).select(*schema.fieldNames())
    todo = joined.filter(again).select(*base)
    return RetrySplit(kept, todo)
