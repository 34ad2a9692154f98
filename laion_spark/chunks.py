"""Committed chunks (job level), for the stages that run for days (download, embed): a run killed in the
middle keeps what it finished.

INPUT  -> the rows a stage transforms, how many chunks, the chunks' folder (`<output>_chunks`), a
          fingerprint of what the rows become (the stage's output hash, its input's marker, the chunk
          count: a chunk of another config or input is never reused), the output schema, and `make`:
          (a chunk's rows, their count) -> (the transformed DataFrame, a function called after its write
          that returns what the stage observed, e.g. download's pauses)
OUTPUT -> every chunk written to <chunks>/NNNNN/ with its own marker (`_chunk.json`, written after the
          chunk's table and its row check: the fingerprint and the rows); `write_in_chunks` returns the
          chunks read back as one DataFrame, how many were reused, and what each fresh chunk observed

A row's chunk is pmod(xxhash64(key columns), chunks): the same on every run, so a rerun finds the same
rows in a chunk already done and transforms only the chunks that have no valid marker. The stage then
writes its table from the chunks (a pass over files, no network, no model) and removes them.
"""

from __future__ import annotations

import json
import logging
import math

from pyspark.sql import functions as F

log = logging.getLogger(__name__)

CHUNK_MARKER = "_chunk.json"
_CHUNK = "_chunk"


def chunks_uri(output: str) -> str:
    return output.rstrip("/") + "_chunks"


def chunk_count(chunk_rows: int, rows: int) -> int:
    """rows per chunk + rows -> chunks (1: no chunks, the stage writes its table directly)."""
    return max(1, math.ceil(rows / chunk_rows))


def fingerprint(stage: str, cfg, chunks: int, *inputs: str) -> str:
    """-> what a committed chunk must match to be reused: the stage's output-relevant keys, its input
    tables (URI and completion marker), the chunk count."""
    from laion_spark import stages
    from laion_spark.checksum import text_hash
    from laion_spark.marker import marker_hash, output_hash

    parts = [output_hash(stages.get(stage), cfg)[0], chunks, *[(uri, marker_hash(uri)) for uri in inputs if uri]]
    return text_hash(json.dumps(parts))


def _marker(uri: str) -> dict | None:
    from laion_spark.io import read_json

    try:
        return read_json(uri.rstrip("/") + "/" + CHUNK_MARKER)
    except (FileNotFoundError, OSError, ValueError):
        return None


def write_in_chunks(spark, rows, keys: list[str], chunks: int, folder: str, print_: str, schema, make,
                    table: str) -> tuple:
    """-> (every chunk's rows read back, chunks reused, [what make's after() returned per fresh chunk])."""
    from laion_spark.io import write_json, write_table

    keyed = rows.withColumn(_CHUNK, F.pmod(F.xxhash64(*[F.col(k) for k in keys]), F.lit(chunks)).cast("int"))
    sizes = {r[_CHUNK]: r["n"] for r in keyed.groupBy(_CHUNK).agg(F.count(F.lit(1)).alias("n")).collect()}
    reused, observed, uris = 0, [], []
    for k in range(chunks):
        uri = f"{folder.rstrip('/')}/{k:05d}"
        n = sizes.get(k, 0)
        uris.append(uri)
        done = _marker(uri)
        if done and done.get("fingerprint") == print_ and done.get("rows") == n:
            reused += 1
            log.info("%s: chunk %d/%d already committed (%d rows): not done again", table, k + 1, chunks, n)
            continue
        out, after = make(keyed.where(F.col(_CHUNK) == k).drop(_CHUNK), n)
        write_table(out, uri, schema, table, "overwrite")
        written = spark.read.parquet(uri).count()
        if written != n:
            raise RuntimeError(f"{table} chunk {k}: {n} rows in, {written} written to {uri}")
        if n:  # an empty chunk observed nothing
            observed.append(after())
        write_json(uri.rstrip("/") + "/" + CHUNK_MARKER, {"chunk": k, "chunks": chunks, "rows": n,
                                                          "fingerprint": print_})
        log.info("%s: chunk %d/%d committed (%d rows)", table, k + 1, chunks, n)
    return spark.read.schema(schema).parquet(*uris), reused, observed


def remove(folder: str) -> None:
    """The chunks, once the stage's table holds their rows and its count held."""
    from laion_spark.io import remove as remove_uri

    remove_uri(folder)
