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
    evaluation = one download). With `pauses`, once the result has been written, pauses.get holds
    the pause metrics (pool.pause_summary reads them: how many hosts asked for a pause with 429/503
    Retry-After, as an HLL sketch, and for how long) and the DNS counters (dns_summary reads them); no
    SparkContext needed: works on Spark Connect."""
    from pyspark.sql.types import DoubleType, LongType, StringType, StructField, StructType

    from laion_spark.download.pool import PAUSE_COUNTS, PAUSE_HOST, pause_metrics
    from laion_spark.download.task import DNS_REPORT, download_partition

    schema = S.images_schema(df.schema)
    inputs = df.select(*[f.name for f in schema.fields if f.name not in S.DOWNLOAD_COLUMNS])
    grouped = partition_by_host(inputs, cfg, num_partitions)
    if pauses is None:
        return grouped.mapInPandas(download_partition(cfg, schema.fieldNames()), schema)
    dns_fields = [StructField(c, DoubleType() if c.endswith("wait_s") else LongType(), False) for c in DNS_REPORT]
    pause_fields = [StructField(PAUSE_HOST, StringType()), StructField(PAUSE_COUNTS[0], LongType(), False),
                    *[StructField(c, DoubleType(), False) for c in PAUSE_COUNTS[1:]]]
    with_report = StructType([*schema.fields, *pause_fields, *dns_fields])
    out = grouped.mapInPandas(download_partition(cfg, with_report.fieldNames(), report=True), with_report)
    return out.observe(pauses, *pause_metrics(),
                       *[F.sum(c).alias(c) for c in DNS_REPORT]).drop(PAUSE_HOST, *PAUSE_COUNTS, *DNS_REPORT)


def dns_summary(observed: list[dict]) -> dict:
    """The Observations' values (one dict per download_images call) -> the DNS cache's counters summed
    over every task: lookups, cache_hits, negative_hits, shared, resolver_calls, failures, timeouts and
    wait_s (seconds fetching threads waited for names), plus hit_rate (answered without a resolver call)."""
    from laion_spark.download import dns
    from laion_spark.download.task import DNS_REPORT

    out = {key: sum((o.get(column) or 0) for o in observed) for key, column in zip(dns.STATS_KEYS, DNS_REPORT)}
    out["wait_s"] = round(float(out["wait_s"]), 3)
    saved = out["cache_hits"] + out["negative_hits"] + out["shared"]
    out["hit_rate"] = round(saved / out["lookups"], 4) if out["lookups"] else None
    return out


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
