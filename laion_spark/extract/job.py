"""The extract job: config -> file list -> session -> transform -> write tables + summary.

INPUT  -> JobConfig with input (archive URIs, globs, *.paths.gz; comma-separated) and output
OUTPUT -> candidates at `output`, extract_errors at `<output>_errors` (or extract.errors_output),
          and a summary dict (files, records, candidates, drops per rule, failed files/records)
"""

from __future__ import annotations

import functools
import json
import logging
from collections import Counter

from laion_spark import schemas as S
from laion_spark.config import ConfigError
from laion_spark.extract.remote import expand_inputs
from laion_spark.extract.transform import extract_candidates
from laion_spark.io import check_output, fsspec_uri, write_table

log = logging.getLogger(__name__)


def errors_uri(cfg) -> str:
    return cfg.extract.errors_output or cfg.output.rstrip("/") + "_errors"


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


def prepare(cfg) -> None:
    """Checks that need no Spark: inputs exist, the errors output is free."""
    input_files(cfg)
    check_output(errors_uri(cfg), cfg.mode)


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


def summarize(stats_rows) -> dict:
    """Per-file stats rows -> the job summary (the sum over files)."""
    totals: Counter = Counter()
    for row in stats_rows:
        totals.update(json.loads(row["counts"]))
    dropped = {k[len("dropped_"):]: v for k, v in sorted(totals.items()) if k.startswith("dropped_")}
    return {
        "files": totals["files"],
        "files_failed": totals["files_failed"],
        "files_with_errors": totals["files_with_errors"],
        "records": totals["records"],
        "records_failed": totals["record_errors"],
        "html_pages": totals["html_pages"],
        "images_seen": totals["images_seen"],
        "dropped": dropped,
        "candidates": totals["candidates"],
        "error_rows": totals["record_errors"],
        "counts": dict(sorted(totals.items())),
    }


def run(spark, cfg) -> dict:
    files = input_files(cfg)
    _list_inputs.cache_clear()  # the next job (a notebook re-run) lists the inputs afresh
    tasks = plan_tasks(files, cfg.extract.task_mb)
    paths = spark.createDataFrame(tasks, f"task int, {S.SOURCE_URI} string")
    out = extract_candidates(paths, cfg.extract, num_partitions=tasks[-1][0] + 1)
    out.raw.persist()  # one parse of every file feeds the three outputs
    try:
        write_table(out.candidates, cfg.output, S.CANDIDATES, "candidates", cfg.mode)
        write_table(out.errors, errors_uri(cfg), S.EXTRACT_ERRORS, "extract_errors", cfg.mode)
        # every candidate and error row is counted in its file's stats row: no extra count jobs
        summary = summarize(out.stats.collect())
    finally:
        out.raw.unpersist()
    summary["errors_output"] = errors_uri(cfg)
    log.info("extract: %s files, %s candidates, %s error rows", summary["files"], summary["candidates"],
             summary["error_rows"])
    return summary
