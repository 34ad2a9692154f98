"""The download job: config -> read pairs (+ an earlier images table) -> download -> write images -> count.

INPUT  -> JobConfig with input (a table with url; pairs' sample_id and text are carried like any
          other column), output, and download.*
OUTPUT -> the images table at `output` (one row per input row) and a summary dict: rows_in,
          rows_out, statuses (rows per status), downloaded / reused rows, retryable failures,
          bytes downloaded and stored, seconds and images/s of the download itself, and host_pauses
          (hosts that asked for a pause with 429/503 Retry-After: how many, how often, seconds paused
          in all and the longest pause asked) and dns (the workers' DNS cache: lookups, hits, resolver
          calls, failures and the seconds fetching threads waited for names)
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time

from pyspark.sql import functions as F

from laion_spark import schemas as S
from laion_spark.config import ConfigError
from laion_spark.io import exists, write_table

log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """The written images table does not account for every input row."""


def prepare(cfg) -> None:
    """Checks that need no Spark: input and retry_from exist, output is neither, guard settings parse."""
    d = cfg.download
    if not d.contact.strip():
        # site owners who see our traffic need a way to reach whoever runs it (LAION's crawler etiquette)
        log.warning("download.contact is empty: the User-Agent (%r) tells site owners no way to reach you; "
                    "set download.contact=you@example.org (or a URL such as https://example.org/crawler)",
                    d.user_agent)
    if not exists(cfg.input):
        raise ConfigError(f"input not found: {cfg.input}")
    if d.retry_from and not exists(d.retry_from):
        raise ConfigError(f"download.retry_from not found: {d.retry_from}")
    taken = {cfg.input.rstrip("/"), d.retry_from.rstrip("/")} - {""}
    if cfg.output.rstrip("/") in taken:
        raise ConfigError(f"output {cfg.output} is also the input or download.retry_from; write elsewhere")
    for net in d.allowed_networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"bad value for download.allowed_networks: {net!r} is not a CIDR "
                              "(e.g. 127.0.0.1/32 or 10.0.0.0/8)") from None
    from laion_spark.download.guard import parse_connect_to

    for entry in d.connect_to:
        try:
            parse_connect_to(entry)
        except ValueError as exc:
            raise ConfigError(f"bad value for download.connect_to: {entry!r}: {exc}") from None


KEPT = "kept"  # the chunk of rows download.retry_from gave


def _status_counts(df) -> dict[str, dict]:
    rows = df.groupBy(S.STATUS).agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum("original_bytes").alias("original_bytes"),
        F.sum("bytes").alias("bytes"),
    ).collect()
    return {r[S.STATUS]: {"rows": r["rows"], "original_bytes": r["original_bytes"] or 0,
                          "bytes": r["bytes"] or 0} for r in rows}


def task_count(download_cfg, rows: int, spark=None) -> int:
    """DownloadConfig + rows to download (+ the session) -> download tasks: download.partitions, else rows /
    download.rows_per_task, and with a session at least a local master's cores (the job and the notebook
    use the same count)."""
    if download_cfg.partitions:
        return download_cfg.partitions
    cores = 1
    if spark is not None:
        from laion_spark.session import local_cores

        cores = min(local_cores(spark) or 1, rows or 1)
    return max(1, math.ceil(rows / download_cfg.rows_per_task), cores)


def run(spark, cfg) -> dict:
    from pyspark.sql import Observation

    from laion_spark import chunks as C
    from laion_spark.download.laion_input import from_release
    from laion_spark.download.pool import pause_summary
    from laion_spark.download.transform import dns_summary, download_images, split_retry

    d = cfg.download
    pairs = from_release(spark.read.parquet(cfg.input), d, cfg.dedupe)  # LAION's URL / TEXT / SAMPLE_ID too
    needed = {S.URL} | ({S.SAMPLE_ID} if d.retry_from else set())
    missing = needed - set(pairs.columns)
    if missing:
        raise ConfigError(f"input {cfg.input} lacks column(s) {sorted(missing)}; download needs url "
                          "(and sample_id with download.retry_from)")
    rows_in = pairs.count()
    kept = None
    reused: dict[str, dict] = {}
    todo = pairs
    if d.retry_from:
        split = split_retry(pairs, spark.read.parquet(d.retry_from))
        kept, todo = split.kept, split.todo
        reused = _status_counts(kept)
    to_download = rows_in - sum(v["rows"] for v in reused.values())
    partitions = task_count(d, to_download, spark)
    schema = S.images_schema(pairs.schema)
    chunks = C.chunk_count(d.chunk_rows, to_download)
    started = time.time()
    reused_chunks = 0
    if chunks > 1:  # each chunk committed on its own: a killed run keeps them (laion_spark/chunks.py)
        def make(part):
            if part.ident == KEPT:
                return part.read(), None
            observation = Observation(f"download_pauses_{time.monotonic_ns()}")
            return (download_images(part.read(), d, task_count(d, part.rows, spark), observation),
                    lambda: observation.get)

        keys = [S.URL, *([S.SAMPLE_ID] if S.SAMPLE_ID in todo.columns else [])]
        folder = C.chunks_uri(cfg.output)
        print_ = C.fingerprint("download", cfg, chunks, cfg.input, d.retry_from)
        parts = C.split_by_key(spark, todo, keys, chunks, folder, print_)
        if kept is not None:  # the rows retry_from gave: one more chunk, committed as the others
            parts.append(C.Part(chunks, rows_in - to_download, KEPT, lambda: kept))
        reused_chunks, observed = C.run_chunks(spark, parts, folder, print_, schema, make, "images")
        C.assemble(folder, parts, cfg.output)
    else:
        pauses = Observation("download_pauses")  # an accumulator would need the SparkContext: not on Connect
        images = download_images(todo, d, partitions, pauses)
        out = kept.unionByName(images) if kept is not None else images
        write_table(out, cfg.output, schema, "images", cfg.mode)
    seconds = time.time() - started
    if chunks <= 1:
        observed = [pauses.get]
    statuses = _status_counts(spark.read.parquet(cfg.output))  # the written table, never a re-download
    rows_out = sum(v["rows"] for v in statuses.values())
    if rows_out != rows_in:
        raise DownloadError(f"row accounting failed: {rows_in} input rows but {rows_out} images rows "
                            f"in {cfg.output} ({ {k: v['rows'] for k, v in statuses.items()} })")
    fresh = {k: v["rows"] - reused.get(k, {}).get("rows", 0) for k, v in statuses.items()}
    successes = fresh.get(S.SUCCESS, 0)
    summary = {
        "rows_in": rows_in,
        "rows_out": rows_out,
        "statuses": {k: v["rows"] for k, v in sorted(statuses.items())},
        "downloaded": to_download,
        "reused": rows_in - to_download,
        "downloaded_statuses": {k: v for k, v in sorted(fresh.items()) if v},
        "retry_from": d.retry_from,
        "bytes_downloaded": sum(v["original_bytes"] - reused.get(k, {}).get("original_bytes", 0)
                                for k, v in statuses.items()),
        "bytes_stored": statuses.get(S.SUCCESS, {}).get("bytes", 0),
        "partitions": partitions,
        "host_pauses": pause_summary(spark, observed),
        "dns": dns_summary(observed),
        "chunks": chunks,
        "chunks_reused": reused_chunks,
        "download_seconds": round(seconds, 3),
        "images_per_s": round(successes / seconds, 2) if seconds else None,
        "urls_per_s": round(to_download / seconds, 2) if seconds else None,
    }
    if chunks > 1:  # the table holds every chunk's rows and its count held: the chunks have served
        C.remove(C.chunks_uri(cfg.output))
    log.info("download: %s rows -> %s successes (%s), %.1f images/s", rows_in,
             statuses.get(S.SUCCESS, {}).get("rows", 0), summary["statuses"], summary["images_per_s"] or 0)
    return summary


def format_report(summary: dict) -> str:
    """Summary dict -> the text the CLI prints."""
    lines = [f"download: {summary['rows_in']} rows in, {summary['rows_out']} rows out "
             f"({summary['downloaded']} downloaded, {summary['reused']} reused from retry_from)"]
    for status, rows in summary["statuses"].items():
        lines.append(f"  {status:<20} {rows}")
    p = summary.get("host_pauses") or {}
    if p.get("hosts"):
        lines.append(f"  {p['hosts']} host(s) asked for a pause {p['requests']} time(s): {p['paused_s']} s paused, "
                     f"longest asked {p['max_s']} s")
    dns = summary.get("dns") or {}
    if dns.get("lookups"):
        lines.append(f"  DNS: {dns['lookups']} lookups, {dns['resolver_calls']} sent to the resolver "
                     f"({dns['failures']} failed), {dns['wait_s']} s waited in all")
    lines.append(f"  {summary['bytes_downloaded'] / 1e6:.1f} MB downloaded, {summary['bytes_stored'] / 1e6:.1f} MB "
                 f"stored, {summary['download_seconds']} s, {summary['images_per_s']} images/s")
    return "\n".join(lines)
