"""The run's manifest: what ran, why, with what and how much -> `run_dir/manifest.json`.

INPUT  -> the pipeline's JobConfig, its steps, the SparkSession (Spark's and Java's versions) and, step
          by step, what each did (run / skipped / failed, why, times, its summary)
OUTPUT -> a dict written to run_dir/manifest.json after every step, so a run killed half-way leaves one
          that says how far it got: the config, the versions (laion-spark, Spark, Java, Python, torch,
          open_clip, faiss, timm) and every checkpoint or list by its content hash, and per step its
          start, end, action and reason, counts (rows in / out, per status or reason), throughput and
          output URI
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
import time

from laion_spark import __version__

PACKAGES = {"torch": "torch", "open_clip": "open_clip_torch", "faiss": "faiss-cpu", "timm": "timm",
            "pyarrow": "pyarrow"}
# the summary keys that are bookkeeping, not counts
_NOT_COUNTS = {"config", "output_config", "inputs", "versions", "marker_version", "output_hash", "stage"}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _package(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def java_version(spark) -> str | None:
    """The JVM's version, asked through SQL (java_method), so it works on Spark Connect too."""
    try:
        return spark.sql("SELECT java_method('java.lang.System', 'getProperty', 'java.version') AS v").first()["v"]
    except Exception:  # noqa: BLE001 - a version line is not worth failing a run; some servers forbid reflection
        return None


def versions(spark) -> dict:
    return {"laion_spark": __version__, "spark": spark.version, "java": java_version(spark),
            "python": platform.python_version(), **{k: _package(v) for k, v in PACKAGES.items()}}


def content_keys(all_steps) -> dict:
    """Every checkpoint, model and list the steps read, by content hash where it is a file."""
    from laion_spark.config import _valid_keys, output_values
    from laion_spark.marker import file_hash

    valid = _valid_keys()
    out = {}
    for step in all_steps:
        for key, value in output_values(step.cfg, step.stage, file_hash).items():
            if valid[key][1].get("content") and value not in ("", [], None):
                out[key] = value
    return dict(sorted(out.items()))


def counts(summary: dict) -> dict:
    """A stage's summary -> its counts: the integers, and the dicts of integers (per status, reason, group)."""
    out = {}
    for key, value in summary.items():
        if key in _NOT_COUNTS or isinstance(value, bool):
            continue
        per_key = isinstance(value, dict) and value and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value.values())
        if isinstance(value, int) or per_key:
            out[key] = value
    return out


def config_of(cfg) -> dict:
    from laion_spark.config import _flatten

    return _flatten(dataclasses.asdict(cfg))


def step_entry(step, action: str, why: str, started: float, summary: dict | None) -> dict:
    summary = summary or {}
    seconds = summary.get("seconds") if action == "skipped" else round(time.time() - started, 3)
    entry = {"step": step.name, "stage": step.stage, "action": action, "why": why, "output": step.cfg.output,
             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "ended": now(),
             "seconds": seconds, "counts": counts(summary)}
    if action == "run":  # to the millisecond: bench/scale.py cuts its process samples at the steps' edges
        entry["started_unix"] = round(started, 3)
    if action == "skipped":
        entry["completed_at"] = summary.get("completed_at")
    rows = summary.get("rows_in")
    if isinstance(rows, int) and seconds:
        entry["rows_in_per_s"] = round(rows / seconds, 2)
    return entry
