"""The extract job: config -> file list -> session -> transform -> write tables + summary.

INPUT  -> JobConfig with input (archive URIs, globs, *.paths.gz; comma-separated) and output;
          optionally extract.retry_from, the candidates table of an earlier extract run
OUTPUT -> candidates at `output`, extract_errors at `<output>_errors` (or extract.errors_output),
          each input file's counts in `<output>/_files.parquet` (schemas.EXTRACT_FILE_STATS, one row a
          file: what retry_from reads back; a `_` file, which Spark skips when it reads the table, as it
          does `_summary.json`), and a summary dict (files, records, candidates, drops per rule, failed /
          incomplete files and why)

With retry_from, a file that the earlier run read to its end keeps its earlier rows (candidates,
errors, counts) and is not read again; a file it could not open or read to its end (see process.py),
and an input file it never saw, is extracted again. The output covers the current input, as
download's retry_from does for rows.

Before the summary becomes the completion marker, the rows written are counted against it: one
files row per input file, and as many candidate and error rows as the files' counts say
(ExtractAccountingError otherwise, and the outputs are left without a marker).
"""

from __future__ import annotations

import functools
import json
import logging
from collections import Counter

from laion_spark import schemas as S
from laion_spark.config import ConfigError
from laion_spark.extract.process import FILE_FAILED, FILE_INCOMPLETE
from laion_spark.extract.remote import expand_inputs
from laion_spark.extract.transform import extract_candidates
from laion_spark.io import check_output, exists, fsspec_uri, overlap, read_json, read_table, write_table

log = logging.getLogger(__name__)

FILES_NAME = "_files.parquet"  # inside the candidates table: Spark and pyarrow skip `_` names when they read it
UNFINISHED_LISTED = 100  # failed / incomplete files named in the summary (all of them: errors table, _files)
WHOLE_FILE_GZIP = ("no byte range holds these records alone (a file gzipped as a whole, or several records "
                   "in one gzip member): source_offset and source_length are null; recompress such files "
                   "one gzip member per record (e.g. `warcio recompress`) to get offsets")


class ExtractAccountingError(RuntimeError):
    """The written tables do not hold what the files' counts say."""


def errors_uri(cfg) -> str:
    return cfg.extract.errors_output or cfg.output.rstrip("/") + "_errors"


def files_uri(candidates_uri: str) -> str:
    """A candidates table's URI -> the URI of its per-file counts."""
    return candidates_uri.rstrip("/") + "/" + FILES_NAME


def write_file_counts(uri: str, stats: list[tuple[str, dict]]) -> None:
    """[(source_uri, counts)] -> a Parquet file of schemas.EXTRACT_FILE_STATS at uri.

    One row a file is small enough for the driver (90,000 Common Crawl files: a few MB), and a file
    written here, not a Spark table, keeps it inside the candidates folder without Spark warning
    about `_` paths each time it is read.
    """
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.sql.pandas.types import to_arrow_schema

    table = pa.Table.from_pydict({S.SOURCE_URI: [u for u, _ in stats], "counts": [list(c.items()) for _, c in stats]},
                                 schema=to_arrow_schema(S.EXTRACT_FILE_STATS))
    with fsspec.open(fsspec_uri(uri), "wb") as fh:
        pq.write_table(table, fh)


def read_file_counts(uri: str) -> list[tuple[str, dict]]:
    """write_file_counts' file -> [(source_uri, counts)]."""
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(fsspec_uri(uri), "rb") as fh:
        table = pq.read_table(fh)
    return [(u, dict(c)) for u, c in zip(table.column(S.SOURCE_URI).to_pylist(), table.column("counts").to_pylist(),
                                           strict=True)]


def input_files(cfg) -> list[str]:
    """JobConfig -> the archive file URIs it names (ConfigError when there are none)."""
    return list(_list_inputs(cfg.input, cfg.extract.paths_prefix))


@functools.lru_cache(maxsize=8)
def _list_inputs(input_uris: str, paths_prefix: str) -> tuple[str, ...]:
    # cached: prepare() lists before Spark starts and run() needs the same list; a glob over
    # object storage or a 90,000-line paths file should be read once per job, not twice
    inputs = [p.strip() for p in input_uris.split(",") if p.strip()]
    try:
        files = expand_inputs(inputs, paths_prefix)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot list input {input_uris!r}: {exc}") from None
    if not files:
        raise ConfigError(f"no input files match {input_uris!r}")
    return tuple(files)


def _earlier_errors_uri(retry_from: str) -> str:
    """The errors table of the run that wrote retry_from (its summary says where it went)."""
    summary = read_json(fsspec_uri(retry_from.rstrip("/") + "/_summary.json"))
    return summary.get("errors_output") or retry_from.rstrip("/") + "_errors"


def prepare(cfg) -> None:
    """Checks that need no Spark: inputs exist, the errors output is free, retry_from is a finished extract."""
    input_files(cfg)
    check_output(errors_uri(cfg), cfg.mode)
    earlier = cfg.extract.retry_from
    if not earlier:
        return
    if not exists(earlier):
        raise ConfigError(f"extract.retry_from not found: {earlier}")
    if not exists(earlier.rstrip("/") + "/_summary.json"):
        raise ConfigError(f"extract.retry_from {earlier} has no completion marker (_summary.json): its run did "
                          "not finish; run extract again in full")
    if not exists(files_uri(earlier)):
        raise ConfigError(f"extract.retry_from {earlier} has no per-file counts ({FILES_NAME}): it was written "
                          "by an older laion-spark; run extract again in full")
    for mine in (cfg.output, errors_uri(cfg)):
        for theirs in (earlier, _earlier_errors_uri(earlier)):
            if overlap(mine, theirs):
                raise ConfigError(f"output {mine} overlaps extract.retry_from's table {theirs}; write elsewhere")


def plan_tasks(files: list[str], task_mb: int) -> list[tuple[int, str]]:
    """File URIs -> (task id, uri): consecutive files grouped up to ~task_mb MB per task.

    Sizes are asked only of local files (free); a remote file's size would cost a request per
    file, and Common Crawl's are ~1 GB anyway, so a file of unknown size is a task of its own.
    """
    import fsspec

    limit = task_mb * 1_000_000
    out, task, filled = [], 0, 0
    for uri in files:
        size = limit
        fs, path = fsspec.core.url_to_fs(fsspec_uri(uri))
        if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
            try:
                size = fs.size(path)
            except OSError:
                pass  # unreadable: a task of its own, where the error row will be made
        if filled and filled + size > limit:
            task, filled = task + 1, 0
        out.append((task, uri))
        filled += size
    return out


def unfinished(counts: dict) -> str | None:
    """A file's counts -> 'failed' (never opened), 'incomplete' (not read to its end) or None (read whole)."""
    if counts.get("files_failed"):
        return "failed"
    if counts.get("files_incomplete"):
        return "incomplete"
    return None


def summarize(stats: list[tuple[str, dict]], reasons: dict[str, str] | None = None) -> dict:
    """Per-file (source_uri, counts) -> the job summary (the sum over files); `reasons` (uri -> why)
    names the failed and incomplete files."""
    totals: Counter = Counter()
    listed = []
    for uri, counts in stats:
        totals.update(counts)
        status = unfinished(counts)
        if status and len(listed) < UNFINISHED_LISTED:
            listed.append({"source_uri": uri, "status": status, "reason": (reasons or {}).get(uri)})
    dropped = {k[len("dropped_"):]: v for k, v in sorted(totals.items()) if k.startswith("dropped_")}
    summary = {
        "files": totals["files"],
        "files_failed": totals["files_failed"],
        "files_incomplete": totals["files_incomplete"],
        "files_with_errors": totals["files_with_errors"],
        "records": totals["records"],
        "records_failed": totals["record_errors"],
        "html_pages": totals["html_pages"],
        "images_seen": totals["images_seen"],
        "dropped": dropped,
        "candidates": totals["candidates"],
        "candidates_without_offset": totals["candidates_without_offset"],
        "error_rows": totals["record_errors"],
        "unfinished_files": sorted(listed, key=lambda f: f["source_uri"]),
        "counts": dict(sorted(totals.items())),
    }
    warnings = []
    if summary["files_failed"] or summary["files_incomplete"]:
        warnings.append(f"{summary['files_failed']} files could not be opened and {summary['files_incomplete']} "
                        "were not read to their end (unfinished_files; every one in the errors table, rows "
                        f"starting {FILE_FAILED!r} / {FILE_INCOMPLETE!r}): rerun just those with "
                        "extract.retry_from=<this output>")
    if summary["candidates_without_offset"]:
        warnings.append(f"{summary['candidates_without_offset']} candidates from {totals['records_without_offset']} "
                        f"records: {WHOLE_FILE_GZIP}")
    summary["warnings"] = warnings
    return summary


def _reused(spark, cfg, files: list[str]):
    """retry_from -> (the counts of the files whose earlier rows are kept, their candidates, their errors),
    or None without retry_from."""
    from pyspark.sql import functions as F

    earlier = cfg.extract.retry_from
    if not earlier:
        return None
    wanted = set(files)
    done = [(u, c) for u, c in read_file_counts(files_uri(earlier)) if u in wanted and not unfinished(c)]
    keep = F.broadcast(spark.createDataFrame([(u,) for u, _ in done], f"{S.SOURCE_URI} string"))
    return (
        done,
        read_table(spark, earlier, S.CANDIDATES).join(keep, S.SOURCE_URI, "left_semi"),
        read_table(spark, _earlier_errors_uri(earlier), S.EXTRACT_ERRORS).join(keep, S.SOURCE_URI, "left_semi"),
    )


def check_written(spark, cfg, summary: dict, files: list[str]) -> None:
    """The written tables, counted, against the files' counts: raise ExtractAccountingError on a mismatch."""
    listed = [u for u, _ in read_file_counts(files_uri(cfg.output))]
    written = {"candidates": spark.read.parquet(cfg.output).count(),
               "error_rows": spark.read.parquet(errors_uri(cfg)).count()}
    expected = {"candidates": summary["candidates"], "error_rows": summary["error_rows"]}
    problems = []
    if sorted(listed) != sorted(files):
        problems.append(f"{len(files)} input files, {len(listed)} files counted ({len(set(files) - set(listed))} "
                        f"missing, {len(listed) - len(set(listed))} twice, {len(set(listed) - set(files))} not input)")
    if summary["files"] != len(files):
        problems.append(f"the summary says {summary['files']} files for {len(files)} input files")
    if written != expected:
        problems.append(f"written {written}, the files' counts say {expected}")
    if problems:
        raise ExtractAccountingError("row accounting failed: " + "; ".join(problems))


def run(spark, cfg) -> dict:

    files = input_files(cfg)
    _list_inputs.cache_clear()  # the next job (a notebook re-run) lists the inputs afresh
    reused = _reused(spark, cfg, files)
    done = {u for u, _ in reused[0]} if reused else set()
    todo = [f for f in files if f not in done]
    parts = []  # (candidates, errors) of each source: extracted now, reused
    out, stats, reasons = None, list(reused[0]) if reused else [], {}
    if todo:
        tasks = plan_tasks(todo, cfg.extract.task_mb)
        paths = spark.createDataFrame(tasks, f"task int, {S.SOURCE_URI} string")
        out = extract_candidates(paths, cfg.extract, num_partitions=tasks[-1][0] + 1)
        out.raw.persist()  # one parse of every file feeds the outputs
        parts.append((out.candidates, out.errors))
    if reused:
        parts.append(reused[1:])
    try:
        candidates, errors = (functools.reduce(lambda a, b: a.unionByName(b), t) for t in zip(*parts, strict=True))
        write_table(candidates, cfg.output, S.CANDIDATES, "candidates", cfg.mode)
        write_table(errors, errors_uri(cfg), S.EXTRACT_ERRORS, "extract_errors", cfg.mode)
        if out is not None:
            # every candidate and error row is counted in its file's stats row: the summary needs no extra pass
            for row in out.stats.collect():
                stats.append((row[S.SOURCE_URI], json.loads(row["counts"])))
                if row[S.ERROR] is not None:  # why it could not be opened or read to its end
                    reasons[row[S.SOURCE_URI]] = row[S.ERROR]
    finally:
        if out is not None:
            out.raw.unpersist()
    write_file_counts(files_uri(cfg.output), sorted(stats, key=lambda s: s[0]))
    summary = summarize(stats, reasons)
    check_written(spark, cfg, summary, files)
    summary.update(errors_output=errors_uri(cfg), retry_from=cfg.extract.retry_from,
                   files_extracted=len(todo), files_reused=len(files) - len(todo))
    log.info("extract: %s files (%s extracted, %s reused), %s candidates, %s error rows", summary["files"],
             len(todo), len(files) - len(todo), summary["candidates"], summary["error_rows"])
    for warning in summary["warnings"]:
        log.warning("extract: %s", warning)
    return summary
