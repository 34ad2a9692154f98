"""The export job, format=webdataset: config -> read images -> count -> shard sizes -> pack -> write
webdataset shards -> check (format=release, the default, is export/release_job.py, which writes its
shards through write_shards here).

INPUT  -> JobConfig with input (an images table: the download stage's output), output (a folder URI)
          and export.* (format=webdataset, samples_per_shard)
OUTPUT -> in `output`, per shard {shard}.tar, {shard}.parquet and {shard}_stats.json (export/webdataset.py),
          and a summary dict (the CLI writes it to <output>/_summary.json): rows_in, shards, rows,
          successes, skipped, failed_to_download, failed_to_resize, statuses (rows per status),
          tar_bytes, the key and shard name widths and the first key. The job fails (ExportError) when
          the shards do not account for every input row.

Shards: n = ceil(rows / export.samples_per_shard) hash partitions of sample_id (export/transform.py);
their sizes vary around samples_per_shard, and the key's index width grows when the largest needs it.
"""

from __future__ import annotations

import logging
import math
import re

from laion_spark.config import ConfigError
from laion_spark.export.shards import is_temporary
from laion_spark.export.transform import check_columns, pack_webdataset, packed_layout, shard_sizes, webdataset_layout
from laion_spark.export.write import missing_webdataset_files, write_webdataset
from laion_spark.io import exists, fsspec_uri

log = logging.getLogger(__name__)

# what a previous export left in its folder (removed first with mode=overwrite)
_OUTPUT_FILE = re.compile(r"^(\d+\.(tar|parquet)|\d+_stats\.json|_summary\.json)$")


class ExportError(RuntimeError):
    """The written shards do not account for every input row."""


def _norm(uri: str) -> str:
    return fsspec_uri(uri).rstrip("/")


def prepare(cfg) -> None:
    """Checks that need no Spark: the input exists; output and input do not contain one another."""
    if cfg.export.format == "release":
        from laion_spark.export import release_job

        return release_job.prepare(cfg)
    if not exists(cfg.input):
        raise ConfigError(f"input not found: {cfg.input}")
    inp, out = _norm(cfg.input), _norm(cfg.output)
    if out == inp or out.startswith(inp + "/") or inp.startswith(out + "/"):
        raise ConfigError(f"output {cfg.output} and input {cfg.input} overlap; write the shards elsewhere")


def _list_names(fs, folder: str) -> list[str]:
    if not fs.exists(folder):
        return []
    return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)]


def prepare_folder(output_uri: str, mode: str) -> None:
    """Create the output folder; with mode=overwrite remove what an earlier export wrote there (shards,
    stats, summary, temporaries), so that a run with fewer shards leaves none of the old ones, and so
    that a shard with its _stats.json in the folder is always one this run wrote (the writer keeps
    such a shard: a retried task's first attempt finished it)."""
    import fsspec

    fs, folder = fsspec.core.url_to_fs(output_uri)
    if mode == "overwrite":
        old = [n for n in _list_names(fs, folder) if _OUTPUT_FILE.match(n) or is_temporary(n)]
        for name in old:
            fs.rm(f"{folder}/{name}")
        if old:
            log.info("export: removed %d files of an earlier export from %s", len(old), output_uri)
    fs.makedirs(folder, exist_ok=True)


def remove_temporaries(output_uri: str) -> int:
    """Remove the temporaries a killed task attempt left (a failed one removes its own) -> how many."""
    import fsspec

    fs, folder = fsspec.core.url_to_fs(output_uri)
    stale = [n for n in _list_names(fs, folder) if is_temporary(n)]
    for name in stale:
        fs.rm(f"{folder}/{name}")
    return len(stale)


def check_stats(rows_in: int, num_shards: int, sizes: dict[int, int], stats: list[dict]) -> None:
    """Raise ExportError unless there is one stats row per shard, each with the rows assigned to it,
    and every row of each shard is counted once."""
    shards = sorted(s["shard"] for s in stats)
    if shards != list(range(num_shards)):
        raise ExportError(f"expected shards 0..{num_shards - 1}, got stats for {shards}")
    for s in stats:
        parts = s["successes"] + s["skipped"] + s["failed_to_download"] + s["failed_to_resize"]
        assigned = sizes.get(s["shard"], 0)
        if s["count"] != assigned or parts != s["count"] or sum(s["status_dict"].values()) != s["count"]:
            raise ExportError(f"shard {s['shard']}: {s['count']} rows written, {assigned} assigned "
                              f"({s})")
    written = sum(s["count"] for s in stats)
    if written != rows_in:
        raise ExportError(f"row accounting failed: {rows_in} input rows but {written} rows in the shards")


def shard_count(rows: int, e) -> int:
    return math.ceil(rows / e.samples_per_shard)


def write_shards(images, e, output_uri: str, mode: str, rows_in: int | None = None, partitioned: bool = False) -> dict:
    """An images-like DataFrame (`partitioned`: already in shard_count(rows_in) partitions by
    transform.shard_key(); rows_in: its rows, when the caller knows them) + ExportConfig + folder (fsspec
    URI) + mode -> the webdataset shards written there and checked (ExportError unless they account for
    every row) -> their summary."""
    rows_in = images.count() if rows_in is None else rows_in
    num_shards = shard_count(rows_in, e)
    prepare_folder(output_uri, mode)
    sizes: dict[int, int] = {}
    stats: list[dict] = []
    if num_shards:
        sizes = {r["shard"]: r["rows"] for r in shard_sizes(images, num_shards).collect()}
        largest = max(sizes.values())
        packed = pack_webdataset(images, e, num_shards, largest, partitioned)
        stats = write_webdataset(packed, output_uri)
        problems = missing_webdataset_files(output_uri, packed_layout(packed, output_uri), stats)
        if problems:
            raise ExportError(f"the written shards are incomplete: {'; '.join(problems[:5])}")
    else:
        largest = 0
    check_stats(rows_in, num_shards, sizes, stats)
    stale = remove_temporaries(output_uri)
    layout = webdataset_layout(images.schema, e, output_uri, max(num_shards, 1), largest)
    statuses: dict[str, int] = {}
    for s in stats:
        for status, n in s["status_dict"].items():
            statuses[status] = statuses.get(status, 0) + n
    totals = {k: sum(s[k] for s in stats) for k in ("successes", "skipped", "failed_to_download",
                                                     "failed_to_resize", "tar_bytes")}
    return {
        "rows_in": rows_in,
        "shards": num_shards,
        "rows": sum(s["count"] for s in stats),
        **totals,
        "statuses": dict(sorted(statuses.items())),
        "samples_per_shard": e.samples_per_shard,
        "largest_shard": largest,
        "smallest_shard": min((s["count"] for s in stats), default=0),
        "shard_digits": layout.shard_digits,
        "key_digits": layout.key_digits,
        "first_key": layout.key(0, 0),
        "stale_temporaries_removed": stale,
    }


def run(spark, cfg) -> dict:
    if cfg.export.format == "release":
        from laion_spark.export import release_job

        return release_job.run(spark, cfg)
    images = spark.read.parquet(cfg.input)
    try:
        check_columns(images)
    except ValueError as exc:
        raise ConfigError(f"input {cfg.input}: {exc}") from None
    summary = {"format": cfg.export.format, **write_shards(images, cfg.export, fsspec_uri(cfg.output), cfg.mode)}
    log.info("export: %s rows -> %s shards in %s (%s samples in tars, %s failures, %s skipped)",
             summary["rows_in"], summary["shards"], cfg.output, summary["successes"],
             summary["failed_to_download"] + summary["failed_to_resize"], summary["skipped"])
    return summary


def format_report(summary: dict) -> str:
    """Summary dict -> the text the CLI prints."""
    if summary.get("format") == "release":
        from laion_spark.export import release_job

        return release_job.format_report(summary)
    lines = [f"export: {summary['rows_in']} rows -> {summary['shards']} webdataset shards "
             f"({summary['successes']} samples in tars, {summary['tar_bytes'] / 1e6:.1f} MB)"]
    for status, rows in summary["statuses"].items():
        lines.append(f"  {status:<20} {rows}")
    return "\n".join(lines)

