"""The extract job: config -> file list -> session -> transform -> write tables + summary.

INPUT  -> JobConfig with input (archive URIs, globs, *.paths.gz; comma-separated) and output
OUTPUT -> candidates at `output`, extract_errors at `<output>_errors` (or extract.errors_output),
          and a summary dict (files, records, candidates, drops per rule, failed files/records)
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter

from laion_spark import schemas as S
from laion_spark.config import ConfigError
from laion_spark.extract.remote import expand_inputs
from laion_spark.extract.transform import extract_candidates
from laion_spark.io import check_output, write_table

log = logging.getLogger(__name__)


def errors_uri(cfg) -> str:
    return cfg.extract.errors_output or cfg.output.rstrip("/") + "_errors"


def input_files(cfg) -> list[str]:
    """JobConfig -> the archive file URIs it names (ConfigError when there are none)."""
    inputs = [p.strip() for p in cfg.input.split(",") if p.strip()]
    try:
        files = expand_inputs(inputs, cfg.extract.paths_prefix)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot list input {cfg.input!r}: {exc}") from None
    if not files:
        raise ConfigError(f"no input files match {cfg.input!r}")
    return files


def prepare(cfg) -> None:
    """Checks that need no Spark: inputs exist, the errors output is free."""
    input_files(cfg)
    check_output(errors_uri(cfg), cfg.mode)


def summarize(stats_rows, candidates: int, errors: int) -> dict:
    """Per-file stats rows -> the job summary (the sum over files, plus table counts)."""
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
        "candidates": candidates,
        "error_rows": errors,
        "counts": dict(sorted(totals.items())),
    }


def run(spark, cfg) -> dict:
    files = input_files(cfg)
    paths = spark.createDataFrame([(f,) for f in files], f"{S.SOURCE_URI} string")
    parts = math.ceil(len(files) / cfg.extract.files_per_partition)
    out = extract_candidates(paths, cfg.extract, num_partitions=parts)
    out.raw.persist()  # one parse of every file feeds the three outputs
    try:
        write_table(out.candidates, cfg.output, S.CANDIDATES, "candidates", cfg.mode)
        write_table(out.errors, errors_uri(cfg), S.EXTRACT_ERRORS, "extract_errors", cfg.mode)
        stats = out.stats.collect()
        n_candidates = out.candidates.count()
        n_errors = out.errors.count()
    finally:
        out.raw.unpersist()
    summary = summarize(stats, n_candidates, n_errors)
    summary["errors_output"] = errors_uri(cfg)
    log.info("extract: %s files, %s candidates, %s error rows", summary["files"], n_candidates, n_errors)
    return summary
