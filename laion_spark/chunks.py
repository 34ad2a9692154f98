"""Committed chunks (job level), for the stages that run for days (download, embed): a run killed in the
middle keeps what it finished.

INPUT  -> the rows a stage transforms, split once into chunks (`split_by_key`: the rows written once into
          <chunks>/split/, one folder per chunk, for a computed input such as download's URLs; or
          `split_by_files`: the input table's own files grouped into chunks, for an input whose rows are
          big, such as embed's image bytes), a fingerprint of what the rows become (the stage's output
          hash, its input's marker, the chunk count: a chunk of another config or input is never
          reused), the output schema, and `make`: a Part (its rows, their count) -> (the transformed
          DataFrame, a function called after its write that returns what the stage observed, or None)
OUTPUT -> every chunk written to <chunks>/NNNNN/ with its own marker (`_chunk.json`, written after the
          chunk's table and its row check: the fingerprint, the chunk's part of the input and its rows);
          `run_chunks` returns how many were reused and what each fresh chunk observed; `assemble` then
          moves every chunk's files into the stage's table (renames: the bytes are written once)

Why split once: a chunk chosen by a filter on pmod(xxhash64(key)) makes Parquet read the whole input for
every chunk (no statistics can skip a hash), so N chunks cost N scans of the input. Written once per
chunk folder (or taken as the input's own files), each chunk reads only its rows.
Why side by side: chunks run IN_FLIGHT at a time from driver threads, so the next chunk's tasks fill the
cores that the current chunk's slowest task leaves idle (Spark runs concurrent jobs' tasks in free slots).
Why the chunks' files become the table: reading the chunks back into one write copied every image byte
a second time. A chunk's marker names its files before they move, so a run killed while moving resumes the moves.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pyspark.sql import functions as F

log = logging.getLogger(__name__)

CHUNK_MARKER = "_chunk.json"
SPLIT_MARKER = "_split.json"
_CHUNK = "chunk_of_split"  # no leading "_": Spark skips such folders as hidden
IN_FLIGHT = 2  # chunks running at once: one more fills the cores the current one's stragglers leave idle


@dataclass(frozen=True)
class Part:
    """One chunk of the input: its number, its rows, what identifies it (a key range or a list of files)
    and how to read it."""

    k: int
    rows: int
    ident: str
    read: Callable


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


def _uri(folder: str, k: int) -> str:
    return f"{folder.rstrip('/')}/{k:05d}"


def split_by_key(spark, rows, keys: list[str], chunks: int, folder: str, print_: str) -> list[Part]:
    """rows (a computed DataFrame; its rows small: URLs, texts) -> written once under <folder>/split/,
    a folder per chunk (pmod(xxhash64(keys), chunks): the same on every run) -> the chunks. A split of the
    same fingerprint is reused, so a resumed run does not split again."""
    from laion_spark.io import read_json, write_json

    split = f"{folder.rstrip('/')}/split"
    try:
        done = read_json(f"{split}/{SPLIT_MARKER}")
    except (FileNotFoundError, OSError, ValueError):
        done = None
    if not done or done.get("fingerprint") != print_:
        keyed = rows.withColumn(_CHUNK, F.pmod(F.xxhash64(*[F.col(k) for k in keys]), F.lit(chunks)).cast("int"))
        keyed.write.mode("overwrite").partitionBy(_CHUNK).parquet(split)
        # the written split's chunk sizes: a pass over its partition column, no data column read
        sizes = {str(r[_CHUNK]): r["n"] for r in spark.read.parquet(split).groupBy(_CHUNK)
                 .agg(F.count(F.lit(1)).alias("n")).collect()}
        done = {"fingerprint": print_, "chunks": chunks, "sizes": sizes}
        write_json(f"{split}/{SPLIT_MARKER}", done)
    fields = [f.name for f in rows.schema.fields]

    def reader(k: int):
        return lambda: spark.read.schema(rows.schema).parquet(f"{split}/{_CHUNK}={k}").select(*fields)

    return [Part(k, int(done["sizes"].get(str(k), 0)), f"key:{k}/{chunks}", reader(k)) for k in range(chunks)]


def split_by_files(spark, uri: str, where, chunk_rows: int) -> list[Part]:
    """A table's URI + the rows wanted (a Column) + rows per chunk -> chunks that are groups of its files
    (in path order, each about chunk_rows wanted rows; a file is never split), read with `where`. The
    per-file counts are one pass over the columns `where` needs."""
    from laion_spark.checksum import text_hash

    table = spark.read.parquet(uri)
    per_file = (table.where(where).select(F.col("_metadata.file_path").alias("file"))
                .groupBy("file").agg(F.count(F.lit(1)).alias("n")).collect())
    counts = dict(sorted((r["file"], r["n"]) for r in per_file))
    groups, current, n = [], [], 0
    for file, rows in counts.items():
        if current and n + rows > chunk_rows:
            groups.append((current, n))
            current, n = [], 0
        current.append(file)
        n += rows
    if current:
        groups.append((current, n))

    def reader(files: list[str]):
        return lambda: spark.read.schema(table.schema).parquet(*files).where(where)

    return [Part(k, n, "files:" + text_hash(json.dumps(files)), reader(files)) for k, (files, n) in enumerate(groups)]


def run_chunks(spark, parts: list[Part], folder: str, print_: str, schema, make, table: str) -> tuple[int, list]:
    """Every chunk without a valid marker transformed and committed, IN_FLIGHT at a time -> (chunks reused,
    [what make's after() returned per fresh chunk with rows])."""
    from laion_spark.io import write_json, write_table

    lock = threading.Lock()
    reused, observed = [0], []
    total = len(parts)

    def one(part: Part) -> None:
        uri = _uri(folder, part.k)
        done = _marker(uri)
        if (done and done.get("fingerprint") == print_ and done.get("rows") == part.rows
                and done.get("part") == part.ident):
            with lock:
                reused[0] += 1
            log.info("%s: chunk %d/%d already committed (%d rows): not done again", table, part.k + 1, total,
                     part.rows)
            return
        out, after = make(part)
        write_table(out, uri, schema, table, "overwrite")
        written = spark.read.parquet(uri).count()
        if written != part.rows:
            raise RuntimeError(f"{table} chunk {part.k}: {part.rows} rows in, {written} written to {uri}")
        if part.rows and after is not None:  # an empty chunk observed nothing
            seen = after()
            with lock:
                observed.append(seen)
        write_json(uri.rstrip("/") + "/" + CHUNK_MARKER, {"chunk": part.k, "chunks": total, "rows": part.rows,
                                                          "part": part.ident, "fingerprint": print_})
        log.info("%s: chunk %d/%d committed (%d rows)", table, part.k + 1, total, part.rows)

    with ThreadPoolExecutor(max_workers=IN_FLIGHT, thread_name_prefix=f"{table}-chunk") as pool:
        futures = [pool.submit(one, part) for part in parts]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return reused[0], observed


def assemble(folder: str, parts: list[Part], output: str) -> None:
    """Every committed chunk's data files moved into the table at output (renamed NNNNN-<file>, so that
    no two chunks' files clash) -> None. Each chunk's marker names its files before they move (`files`)
    and says when all have (`moved`): a run killed while moving keeps what moved and moves the rest.
    Then output/_SUCCESS, as Spark's writer leaves it."""
    import fsspec

    from laion_spark.io import fsspec_uri, write_json

    fs, out = fsspec.core.url_to_fs(fsspec_uri(output))
    out = out.rstrip("/")
    markers = {part.k: _marker(_uri(folder, part.k)) or {} for part in parts}
    planned = {name for m in markers.values() for name in m.get("files") or []}
    if not planned and fs.exists(out):
        fs.rm(out, recursive=True)  # a table of an earlier run: replaced (the CLI asked for mode=overwrite)
    fs.makedirs(out, exist_ok=True)
    for path in fs.ls(out, detail=False):
        if path.rstrip("/").rsplit("/", 1)[-1] not in planned:
            fs.rm(path, recursive=True)  # no chunk's file: an earlier run's
    for part in parts:
        marker = markers[part.k]
        if marker.get("moved"):
            continue
        _, src = fsspec.core.url_to_fs(fsspec_uri(_uri(folder, part.k)))
        names = marker.get("files")
        if names is None:
            names = [f"{part.k:05d}-{path.rstrip('/').rsplit('/', 1)[-1]}" for path in fs.ls(src, detail=False)
                     if not path.rstrip("/").rsplit("/", 1)[-1].startswith(("_", "."))]  # not markers, .crc
            marker = {**marker, "files": names}
            write_json(_uri(folder, part.k) + "/" + CHUNK_MARKER, marker)
        for name in names:
            source = f"{src.rstrip('/')}/{name.split('-', 1)[1]}"
            if fs.exists(source):  # else moved before a kill
                fs.mv(source, f"{out}/{name}")
        write_json(_uri(folder, part.k) + "/" + CHUNK_MARKER, {**marker, "moved": True})
    fs.touch(f"{out}/_SUCCESS")


def remove(folder: str) -> None:
    """The chunks, once the stage's table holds their rows and its count held."""
    from laion_spark.io import remove as remove_uri

    remove_uri(folder)
