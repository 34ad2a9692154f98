"""Which files of a finished run hold the rows a takedown removes, found by Spark, not by the driver.

INPUT  -> a SparkSession, the Sources to search (a folder URI, its sample-id column, which of its files:
          a file-name glob, recursively or not, and optionally a path pattern) and the removed ids as a
          one-column DataFrame (`sample_id` long: the journal's ids file, `ids_frame`)
OUTPUT -> `locate`: {source name: {file path (fsspec, as rewrite.py opens it): sorted ids it holds}}, only
          the files that hold some of the ids; `count_rows`: a Source's rows (its files' footers, read
          by the executors); `webdataset_stats`: the sums over a folder's shard _stats.json files

Every source's id column is read with the hidden column `_metadata.file_path`, all sources in one Spark
job (a union), and joined with the ids; the driver collects the (source, file, sample_id) triples that
match, at most one per removed row and source (a table holds a sample_id once): the size of the
takedown, never of the run. rewrite.py and index_files.py then open those files only; the other files
of the run are not opened at all. A source whose folder is missing is skipped (a run without subsets, a
filter without npy); a folder without such files gives no rows (the schema is given, not inferred).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from pyspark.sql import functions as F

from laion_spark import schemas as S

log = logging.getLogger(__name__)

PARQUET = "*.parquet"


@dataclass(frozen=True)
class Source:
    """One table or file set: name (the key of locate's answer), uri (its folder), column (the sample ids;
    Parquet resolves the name case-insensitively, so SAMPLE_ID finds sample_id too), glob (which file
    names), recursive (sub-folders too), path_regex (the file's path must match it as well)."""

    name: str
    uri: str
    column: str = S.SAMPLE_ID
    glob: str = PARQUET
    recursive: bool = False
    path_regex: str | None = None


def npy_metadata(name: str, uri: str) -> Source:
    """clip-retrieval shards (export/npy.py: [<model>/]metadata/metadata_N.parquet) -> their metadata files."""
    return Source(name, uri, S.SAMPLE_ID, "metadata_*.parquet", True, r"/metadata/metadata_[0-9]+\.parquet$")


def ids_frame(spark, uri: str):
    """A file of ids, one a line (the journal's) -> a DataFrame of them (sample_id long), read by Spark."""
    value = F.trim(F.col("value"))
    return spark.read.text(uri).where(value != "").select(value.cast("long").alias(S.SAMPLE_ID))


def _exists(uri: str) -> bool:
    from laion_spark.io import exists

    return exists(uri)


def _read(spark, source: Source):
    """A Source -> DataFrame(sample_id long, file_path string) of every row of its files."""
    reader = spark.read.schema(f"`{source.column}` long").option("pathGlobFilter", source.glob)
    if source.recursive:
        reader = reader.option("recursiveFileLookup", "true")
    df = reader.parquet(source.uri).select(F.col(f"`{source.column}`").alias(S.SAMPLE_ID),
                                           F.col("_metadata.file_path").alias("file_path"))
    if source.path_regex:
        df = df.where(F.col("file_path").rlike(source.path_regex))
    return df


def fs_path(file_path: str) -> str:
    """Spark's _metadata.file_path (a URI, its path URL-encoded: file:/a%20b/x.parquet, s3a://bucket/k) ->
    the path fsspec gives for the same file (/a b/x.parquet, bucket/k)."""
    import fsspec

    from laion_spark.io import fsspec_uri

    parts = urlsplit(file_path)
    path = unquote(parts.path)
    if parts.scheme in ("", "file"):
        uri = path
    elif parts.netloc:
        uri = f"{parts.scheme}://{parts.netloc}{path}"
    else:
        uri = f"{parts.scheme}:{path}"
    return fsspec.core.url_to_fs(fsspec_uri(uri))[1]


def located_pairs(spark, sources: list[Source], wanted):
    """-> the DataFrame (source, file_path, sample_id) of the rows of sources whose id is in wanted,
    once each (what locate collects; a test reads its plan and size)."""
    frames = [_read(spark, s).select(F.lit(s.name).alias("source"), "file_path", S.SAMPLE_ID)
              for s in sources if _exists(s.uri)]
    if not frames:
        return None
    rows = frames[0]
    for frame in frames[1:]:
        rows = rows.unionByName(frame)
    return rows.join(wanted.select(S.SAMPLE_ID).distinct(), S.SAMPLE_ID, "left_semi").distinct()


def locate(spark, sources: list[Source], wanted) -> dict[str, dict[str, list[int]]]:
    """Sources + the removed ids (DataFrame) -> {source name: {file path: sorted ids}} for the files that
    hold some of them (every source name a key, with {} where none does). One Spark job; the driver
    receives the matching rows only."""
    out: dict[str, dict[str, list[int]]] = {s.name: {} for s in sources}
    pairs = located_pairs(spark, sources, wanted)
    if pairs is None:
        return out
    found = pairs.collect()
    for row in found:
        out[row["source"]].setdefault(fs_path(row["file_path"]), []).append(int(row[S.SAMPLE_ID]))
    for files in out.values():
        for path in files:
            files[path] = sorted(set(files[path]))
    log.info("takedown: %d rows to remove found in %d files of %d sources", len(found),
             sum(len(f) for f in out.values()), len(sources))
    return out


def count_rows(spark, source: Source) -> int:
    """A Source -> how many rows its files hold (Parquet's footers, read by the executors); 0 if its folder
    is missing."""
    if not _exists(source.uri):
        return 0
    return int(_read(spark, source).count())


STATS_SUMS = ("count", "successes", "skipped", "failed_to_download", "failed_to_resize", "tar_bytes")


def webdataset_stats(spark, uri: str) -> dict:
    """A webdataset folder -> the sums of its shards' _stats.json counts and status_dict (Spark reads
    them; the driver receives one row and one per status)."""
    from pyspark.sql import types as T

    out: dict = {key: 0 for key in STATS_SUMS}
    out["status_dict"] = {}
    if not _exists(uri):
        return out
    schema = T.StructType([*(T.StructField(k, T.LongType()) for k in STATS_SUMS),
                           T.StructField("status_dict", T.MapType(T.StringType(), T.LongType()))])
    stats = (spark.read.schema(schema).option("multiLine", "true").option("pathGlobFilter", "*_stats.json")
             .json(uri))
    sums = stats.agg(*[F.sum(k).alias(k) for k in STATS_SUMS]).collect()[0]
    out.update({k: int(sums[k] or 0) for k in STATS_SUMS})
    statuses = (stats.select(F.explode("status_dict").alias("status", "n")).groupBy("status")
                .agg(F.sum("n").alias("n")).collect())
    out["status_dict"] = dict(sorted((r["status"], int(r["n"])) for r in statuses))
    return out
