"""Download in committed chunks (job level): a run killed after hours keeps what it finished.

INPUT  -> the rows to download, the job's DownloadConfig, the number of chunks, the chunks' folder
          (`<output>_chunks`) and a fingerprint of what the rows become (the stage's output hash and its
          input's marker: a chunk of another config or input is never reused)
OUTPUT -> every chunk written to <chunks>/NNNNN/ with its own marker (`_chunk.json`, written after the
          chunk's table, holding the fingerprint and its rows); `download_in_chunks` returns the union of
          the chunks as one DataFrame (read back from the files), the chunks reused and the pauses

A row's chunk is pmod(xxhash64(url, sample_id), chunks): the same on every run, so a rerun finds the
same rows in a chunk already done and downloads only the chunks that have no valid marker.
"""

from __future__ import annotations

import logging
import math

from pyspark.sql import functions as F

from laion_spark import schemas as S

log = logging.getLogger(__name__)

CHUNK_MARKER = "_chunk.json"


def chunks_uri(output: str) -> str:
    return output.rstrip("/") + "_chunks"


def _marker(uri: str) -> dict | None:
    from laion_spark.io import read_json

    try:
        return read_json(uri.rstrip("/") + "/" + CHUNK_MARKER)
    except (FileNotFoundError, OSError, ValueError):
        return None


def chunk_column(columns: list[str], chunks: int):
    """-> each row's chunk: a hash of its url (and sample_id where the table has one) modulo chunks."""
    keys = [F.col(S.URL)] + ([F.col(S.SAMPLE_ID)] if S.SAMPLE_ID in columns else [])
    return F.pmod(F.xxhash64(*keys), F.lit(chunks)).cast("int")


def download_in_chunks(spark, todo, d, chunks: int, folder: str, fingerprint: str, schema) -> tuple:
    """-> (the downloaded rows read back from every chunk, chunks reused, the pauses seen)."""
    from pyspark.sql import Observation

    from laion_spark.download.job import task_count
    from laion_spark.download.transform import download_images
    from laion_spark.io import write_json, write_table

    keyed = todo.withColumn("_chunk", chunk_column(todo.columns, chunks))
    sizes = {r["_chunk"]: r["n"] for r in keyed.groupBy("_chunk").agg(F.count(F.lit(1)).alias("n")).collect()}
    reused, pauses, uris = 0, [], []
    for k in range(chunks):
        uri = f"{folder.rstrip('/')}/{k:05d}"
        rows = sizes.get(k, 0)
        done = _marker(uri)
        if done and done.get("fingerprint") == fingerprint and done.get("rows") == rows:
            reused += 1
            uris.append(uri)
            log.info("download: chunk %d/%d already committed (%d rows): not fetched again", k + 1, chunks, rows)
            continue
        observation = Observation(f"download_pauses_{k}")
        part = keyed.where(F.col("_chunk") == k).drop("_chunk")
        images = download_images(part, d, task_count(d, rows), observation)
        write_table(images, uri, schema, "images", "overwrite")
        written = spark.read.parquet(uri).count()
        if written != rows:
            raise RuntimeError(f"download chunk {k}: {rows} rows in, {written} written to {uri}")
        if rows:  # an Observation of an empty chunk never completes
            pauses += observation.get.get("pauses") or []
        write_json(uri.rstrip("/") + "/" + CHUNK_MARKER, {"chunk": k, "chunks": chunks, "rows": rows,
                                                          "fingerprint": fingerprint})
        uris.append(uri)
        log.info("download: chunk %d/%d committed (%d rows)", k + 1, chunks, rows)
    return spark.read.schema(schema).parquet(*uris), reused, pauses


def chunk_count(d, rows: int) -> int:
    """download.chunk_rows + rows to download -> chunks (1: no chunks, the table is written directly)."""
    return max(1, math.ceil(rows / d.chunk_rows))


def remove(folder: str) -> None:
    import fsspec

    from laion_spark.io import fsspec_uri

    fs, path = fsspec.core.url_to_fs(fsspec_uri(folder))
    if fs.exists(path):
        fs.rm(path, recursive=True)
