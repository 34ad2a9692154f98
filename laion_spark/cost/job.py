"""The plan job: `laion-spark plan run_dir=<finished run> target=laion5b|cc-snapshot|N` -> what a run of that
size would take, printed and written to <output>/<target>.json (default output: <run_dir>/plan). No Spark.

INPUT  -> JobConfig with input (the run directory, `run_dir=`), output (default <run_dir>/plan), plan.*
OUTPUT -> <output>/<target>.json (estimate.py's plan) and a summary holding it; format_report prints it
"""

from __future__ import annotations

import os

from laion_spark.config import ConfigError

RESUMES = True  # one file per target in <output>, rewritten each time: an existing folder is no error


def default_output(cfg) -> str:
    return cfg.input.rstrip("/") + "/plan"


def run_cores(p) -> int:
    """plan.run_cores, or this machine's CPUs (what a local[*] run here had)."""
    if p.run_cores:
        return p.run_cores
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform (macOS)
        return os.cpu_count() or 1


def prepare(cfg) -> None:
    from laion_spark.cost.estimate import parse_target
    from laion_spark.cost.measured import read_manifest
    from laion_spark.index.plan import IndexPlanError, parse_bytes

    read_manifest(cfg.input)
    parse_target(cfg.plan.target)
    p = cfg.plan
    for key in ("dedupe_keep_rate", "download_success_rate", "filter_keep_rate"):
        value = getattr(p, key)
        if value != -1 and not 0 <= value <= 1:
            raise ConfigError(f"bad value for plan.{key}: {value!r}; a rate between 0 and 1, or -1 for this run's")
    for key in ("wat_file_bytes", "index_memory"):
        try:
            parse_bytes(getattr(p, key))
        except IndexPlanError as exc:
            raise ConfigError(f"bad value for plan.{key}: {exc}") from None


def run(spark, cfg) -> dict:
    import fsspec

    from laion_spark.cost.estimate import plan_for
    from laion_spark.cost.measured import read_run
    from laion_spark.io import fsspec_uri, write_json

    plan = plan_for(read_run(cfg.input), cfg.plan, run_cores(cfg.plan))
    fs, folder = fsspec.core.url_to_fs(fsspec_uri(cfg.output))
    fs.makedirs(folder, exist_ok=True)
    uri = f"{cfg.output.rstrip('/')}/{plan['target']['name']}.json"
    write_json(uri, plan)
    return {**plan, "json": uri}


def format_report(summary: dict) -> str:
    from laion_spark.cost.text import render

    return render(summary)
