"""Completion markers: a finished stage -> `<output>/_summary.json`, written last, only when its check held.

INPUT  -> a stage (stages.Stage), its JobConfig, and the summary dict its run() returned (counts,
          timings); or, for a failed run, the exception
OUTPUT -> `_summary.json` in the stage's main output (and in each secondary table it wrote beside
          it): the summary, the stage's config, `output_hash` (a hash of the keys that change what the
          stage writes: not mode, devices, threads or batch sizes; checkpoints and lists by content),
          its inputs with the hashes of their own markers (so a change upstream shows downstream) and
          versions. A failed run leaves no marker: `_summary.json` and Spark's `_SUCCESS` are removed
          from what it wrote and `_FAILED.json` says why, so nothing looks complete that is not.

Why here and not in each job: every stage gets the same rule (DESIGN.md, "A run directory"), and a
job's own accounting check only has to raise.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from typing import Any

from laion_spark import __version__
from laion_spark.checksum import content_hash, text_hash

log = logging.getLogger(__name__)

MARKER = "_summary.json"
FAILED = "_FAILED.json"
MARKER_VERSION = 1


def _get(cfg, key: str) -> str:
    if not key:  # a table at a fixed place in the stage's output (export's laion/): no key of its own
        return ""
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value or ""


def table_uris(stage, cfg, tables) -> list[tuple[Any, str]]:
    """Tables of a stage + its config -> [(Table, URI)] for each one given (secondary outputs at their
    default <output><suffix> when their key is empty; comma-separated keys split)."""
    out = []
    for t in tables:
        value = _get(cfg, t.key)
        if not value and t.suffix and cfg.output:
            value = cfg.output.rstrip("/") + t.suffix
        uris = [u.strip() for u in value.split(",")] if t.many else [value.strip()]
        out.extend((t, u) for u in uris if u)
    return out


def _fs(uri: str):
    import fsspec

    from laion_spark.io import fsspec_uri

    return fsspec.core.url_to_fs(fsspec_uri(uri))


def marker_uri(table_uri: str) -> str:
    return table_uri.rstrip("/") + "/" + MARKER


def marker_hash(table_uri: str) -> str | None:
    """A table URI -> the content hash of its completion marker, None when it has none."""
    try:
        return content_hash(marker_uri(table_uri))
    except (FileNotFoundError, OSError):
        return None


def file_hash(uri: str) -> str | None:
    """A config value that may name a file (checkpoint, list) -> its content hash, None if it is no file."""
    try:
        fs, path = _fs(uri)
        if not fs.isfile(path):
            return None
        return content_hash(uri)
    except (OSError, ValueError):
        return None


def inputs_of(stage, cfg, warn: bool = True) -> list[dict]:
    """A stage + config -> its inputs: key, table, URI, and the marker hash of each table of ours
    (None: the input is incomplete, or was not written by laion-spark). Warns for each such input
    (unless warn=False: the pipeline only compares them)."""
    entries = []
    for t, uri in table_uris(stage, cfg, stage.inputs):
        entry = {"key": t.key, "table": t.table, "uri": uri}
        if t.ours:
            entry["marker"] = marker_hash(uri)
            if entry["marker"] is None and warn:
                log.warning("%s: input %s=%s has no %s: it is incomplete (a stage that failed or is still "
                            "running) or was not written by laion-spark; its rows are read as they are",
                            stage.name, t.key, uri, MARKER)
        elif t.table != "archives":  # a list file (dedupe.blocklist): by content
            entry["content"] = file_hash(uri)
        entries.append(entry)
    return entries


def output_hash(stage, cfg) -> tuple[str, dict]:
    """-> (hash, the values it is taken over): the stage's output-relevant keys (config metadata)."""
    from laion_spark.config import output_values

    values = output_values(cfg, stage.name, file_hash)
    canonical = json.dumps({"stage": stage.name, "values": values}, sort_keys=True, default=str)
    return text_hash(canonical), values


def versions() -> dict[str, str]:
    import pyspark

    return {"laion_spark": __version__, "spark": pyspark.__version__, "python": platform.python_version()}


def _outputs(stage, cfg) -> list[str]:
    """The stage's output URIs that are tables or folders it writes (main first)."""
    return [uri for _, uri in table_uris(stage, cfg, stage.outputs)]


def _remove(fs, path: str) -> None:
    try:
        if fs.exists(path):
            fs.rm(path)
    except (FileNotFoundError, OSError) as exc:
        log.warning("could not remove %s: %s", path, exc)


def clear(stage, cfg) -> None:
    """Before a run that will replace its outputs: drop their old markers, so a run killed half-way
    leaves nothing that looks complete (Spark's overwrite would remove them only when it writes)."""
    if cfg.mode != "overwrite":
        return
    for uri in _outputs(stage, cfg):
        fs, path = _fs(uri)
        _remove(fs, path.rstrip("/") + "/" + MARKER)


def commit(stage, cfg, summary: dict, inputs: list[dict]) -> dict:
    """A run whose check held -> its marker, written into each output it wrote (last); returns it."""
    from laion_spark.io import write_json

    digest, values = output_hash(stage, cfg)
    marker = {
        **summary,
        "marker_version": MARKER_VERSION,
        "output_hash": digest,
        "output_config": values,
        "inputs": inputs,
        "versions": versions(),
        "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for uri in _outputs(stage, cfg):
        fs, path = _fs(uri)
        if not fs.exists(path):  # an optional output the run did not write (filter.npy=false)
            continue
        _remove(fs, path.rstrip("/") + "/" + FAILED)
        write_json(marker_uri(uri), marker)
    return marker


def fail(stage, cfg, exc: BaseException) -> list[str]:
    """A run that raised -> each output it left behind loses `_SUCCESS` and `_summary.json` and gets
    `_FAILED.json` (the error); returns those outputs' URIs."""
    from laion_spark.io import write_json

    left = []
    for uri in _outputs(stage, cfg):
        fs, path = _fs(uri)
        try:
            if not fs.exists(path):
                continue
        except OSError:
            continue
        base = path.rstrip("/")
        _remove(fs, base + "/_SUCCESS")
        _remove(fs, base + "/" + MARKER)
        try:
            write_json(uri.rstrip("/") + "/" + FAILED, {
                "stage": stage.name, "error": f"{type(exc).__name__}: {exc}",
                "failed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "note": f"incomplete: no {MARKER}; rerun the stage (mode=overwrite) to replace it",
            })
        except OSError as err:
            log.warning("could not write %s in %s: %s", FAILED, uri, err)
        left.append(uri)
    return left
