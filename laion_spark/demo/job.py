"""The demo job: a generated crawl -> extract -> dedupe -> download -> export, all under one output folder.

INPUT  -> JobConfig with output (no input: the crawl is generated), demo.seed / demo.rows, and
          download.* / export.* (kept, except that download's address guard settings are the demo's own)
OUTPUT -> <output>/crawl/ (3 WARC files, one of them truncated on purpose, and a WAT file),
          <output>/candidates, <output>/candidates_errors, <output>/pairs, <output>/images (one row per
          pair, failures included), <output>/webdataset/ (shards of the successes, every row in their
          parquet), each stage's summary at <stage output>/_summary.json, and a summary dict that
          `format_report` turns into the text the CLI prints

Download fetches from the demo image server (demo/images.py), started in the driver on 127.0.0.1 for
that stage only: `download.connect_to` sends every host's port 80 there, keeping the crawl's URLs and
Host headers, and `download.allowed_networks` lets 127.0.0.1 through the address guard. The demo has
no TLS server, so https URLs go to a closed loopback port and end as connect_error rows ("connection
refused"): nothing leaves the machine. The server binds to 127.0.0.1, so the demo needs the Spark
workers on the driver's machine (local mode, as `laion-spark demo` runs by default).
"""

from __future__ import annotations

import dataclasses
import logging
import textwrap
import time

from pyspark.sql import Window
from pyspark.sql import functions as F

from laion_spark import schemas as S

log = logging.getLogger(__name__)

NEEDS_INPUT = False  # cli: the demo makes its own input


def stage_uris(cfg) -> dict[str, str]:
    """Where each part of the demo goes, under cfg.output."""
    root = cfg.output.rstrip("/")
    return {
        "crawl": f"{root}/crawl",
        "candidates": f"{root}/candidates",
        "extract_errors": f"{root}/candidates_errors",
        "pairs": f"{root}/pairs",
        "images": f"{root}/images",
        "webdataset": f"{root}/webdataset",
    }


def prepare(cfg) -> None:
    """Nothing to check before Spark: the input is generated and the CLI checks the output."""


def _run_stage(spark, stage: str, cfg) -> dict:
    """One stage the way `laion-spark STAGE` runs it (prepare, run, <output>/_summary.json)."""
    import importlib

    from laion_spark import cli
    from laion_spark.io import check_output

    module = importlib.import_module(cli.STAGE_MODULES[stage])
    module.prepare(cfg)
    check_output(cfg.output, cfg.mode)
    return cli.run(stage, cfg, module, spark)


def demo_download_config(download, port: int, closed_port: int):
    """cfg.download -> the same settings aimed at the demo image server (every other key kept)."""
    return dataclasses.replace(
        download,
        allowed_networks=("127.0.0.1/32",),
        # http: every host's port 80 -> the server; https: no TLS server here -> a refused connection
        connect_to=(f"*:80=127.0.0.1:{port}", f"*:443=127.0.0.1:{closed_port}"),
    )


def run(spark, cfg) -> dict:
    from laion_spark.demo.crawl import CRAWL_FILES, PAGES, TRUNCATED_FILE, write_demo_crawl
    from laion_spark.demo.images import DemoImageServer
    from laion_spark.io import read_table

    uris = stage_uris(cfg)
    started = time.time()
    files = write_demo_crawl(uris["crawl"], seed=cfg.demo.seed)
    crawl = {
        "output": uris["crawl"],
        "files": files,
        "warc_files": sum(f.endswith(".warc.gz") for f in files),
        "wat_files": sum(f.endswith(".wat.gz") for f in files),
        "pages": len(PAGES),
        "fetches": sum(len(urls) for urls in CRAWL_FILES.values()),
        "truncated_file": TRUNCATED_FILE,
        "seconds": round(time.time() - started, 3),
    }
    log.info("demo: wrote %d crawl files under %s", len(files), uris["crawl"])

    # extract's errors go to its default place, <output>_errors (= uris["extract_errors"])
    extract_cfg = dataclasses.replace(cfg, input=",".join(files), output=uris["candidates"])
    extract = _run_stage(spark, "extract", extract_cfg)
    dedupe = _run_stage(spark, "dedupe", dataclasses.replace(cfg, input=uris["candidates"], output=uris["pairs"]))

    with DemoImageServer() as server:
        download_cfg = dataclasses.replace(
            cfg, input=uris["pairs"], output=uris["images"],
            download=demo_download_config(cfg.download, server.port, server.closed_port),
        )
        download = _run_stage(spark, "download", download_cfg)
        image_server = {"address": f"127.0.0.1:{server.port}", "requests": server.requests}
    log.info("demo: the image server answered %d requests", image_server["requests"])
    export = _run_stage(spark, "export", dataclasses.replace(cfg, input=uris["images"], output=uris["webdataset"]))

    pairs = read_table(spark, uris["pairs"], S.PAIRS)
    languages = {r[S.LANGUAGE]: r["count"] for r in pairs.groupBy(S.LANGUAGE).count().collect()}
    sample = (
        pairs.select(S.URL, S.TEXT, S.LANGUAGE)
        .orderBy(S.LANGUAGE, S.URL, S.TEXT)
        .limit(cfg.demo.rows)
        .collect()
    )
    errors = (
        read_table(spark, uris["extract_errors"], S.EXTRACT_ERRORS)
        .orderBy(S.SOURCE_URI, S.SOURCE_OFFSET)
        .limit(3)
        .collect()
    )
    # one failure row per status, to show what failures look like
    images = read_table(spark, uris["images"], S.images_schema(S.PAIRS)).where(F.col(S.STATUS) != S.SUCCESS)
    first = Window.partitionBy(S.STATUS).orderBy(S.URL, S.TEXT)
    failures = (
        images.withColumn("n", F.row_number().over(first))
        .where("n = 1")
        .select(S.STATUS, S.HTTP_STATUS, S.URL, S.ERROR_MESSAGE)
        .orderBy(S.STATUS)
        .collect()
    )
    return {
        "outputs": uris,
        "crawl": crawl,
        "extract": extract,
        "dedupe": dedupe,
        "download": download,
        "image_server": image_server,
        "export": export,
        "pairs": dedupe.get("pairs"),
        "languages": dict(sorted(languages.items(), key=lambda kv: (-kv[1], kv[0]))),
        "sample_pairs": [r.asDict() for r in sample],
        "sample_errors": [r.asDict() for r in errors],
        "sample_failures": [r.asDict() for r in failures],
    }


def _cut(text, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def _table(rows: list[dict], columns: list[tuple[str, int]]) -> list[str]:
    header = "  ".join(f"{name:<{width}}" for name, width in columns)
    lines = [header, "  ".join("-" * width for _, width in columns)]
    for row in rows:
        lines.append("  ".join(f"{_cut(row.get(name, ''), width):<{width}}" for name, width in columns))
    return lines


def _by_count(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def format_report(summary: dict) -> str:
    """The demo's summary -> the text `laion-spark demo` prints."""
    crawl, extract, dedupe, out = summary["crawl"], summary["extract"], summary["dedupe"], summary["outputs"]
    download, export, server = summary["download"], summary["export"], summary["image_server"]
    dropped = ", ".join(f"{k} {v}" for k, v in extract.get("dropped", {}).items()) or "none"
    languages = ", ".join(f"{k} {v}" for k, v in summary["languages"].items())
    successes = download["statuses"].get(S.SUCCESS, 0)
    lines = [
        "laion-spark demo: generated crawl -> extract -> dedupe -> download -> export",
        "",
        f"crawl    {crawl['warc_files']} WARC files + {crawl['wat_files']} WAT file: {crawl['fetches']} fetches of"
        f" {crawl['pages']} URLs"
        f" ({crawl['truncated_file']} truncated on purpose)",
        f"         -> {out['crawl']}/",
        f"extract  {extract['files']} files, {extract['records']} records, {extract['html_pages']} HTML pages,"
        f" {extract['images_seen']} <img> with alt -> {extract['candidates']} candidates",
        f"         dropped by LAION rules: {dropped}",
        f"         error rows: {extract['error_rows']} ({extract['files_with_errors']} file with errors,"
        f" {extract['files_failed']} failed)",
        f"         -> {out['candidates']}  (errors: {out['extract_errors']})  {extract.get('seconds', 0):.1f}s",
        f"dedupe   {dedupe['rows_in']} candidates -> {dedupe['pairs']} pairs"
        f" ({dedupe['duplicates_removed']} exact duplicates of (url, text) removed)",
        f"         -> {out['pairs']}  {dedupe.get('seconds', 0):.1f}s",
        f"download {download['rows_in']} pairs -> {download['rows_out']} images rows, {successes} images"
        f" ({download['images_per_s'] or 0:.1f} images/s, {download['bytes_stored'] / 1e6:.1f} MB stored)",
        f"         statuses: {_by_count(download['statuses'])}",
        f"         from the demo image server on {server['address']}: {server['requests']} requests, retries"
        " included",
        "         (https URLs: the demo has no TLS server, their connections are refused: connect_error)",
        f"         -> {out['images']}  {download.get('seconds', 0):.1f}s",
        f"export   {export['rows']} rows -> {export['shards']} webdataset shard{'s' * (export['shards'] != 1)}:"
        f" {export['successes']} samples ({export['tar_bytes'] / 1e6:.1f} MB of tar), every row in the"
        " shards' parquet",
        f"         -> {out['webdataset']}/  {export.get('seconds', 0):.1f}s",
        f"languages of the pairs: {languages}",
        "summaries: <each output>/_summary.json",
    ]
    if summary["sample_errors"]:
        lines += ["", "extract_errors (first rows):"]
        for row in summary["sample_errors"]:
            name = str(row[S.SOURCE_URI]).rsplit("/", 1)[-1]
            lines.append(f"  {name} @ {row[S.SOURCE_OFFSET]}: {_cut(row[S.ERROR], 90)}")
    if summary["sample_failures"]:
        lines += ["", "images failures (first row of each status):"]
        for row in summary["sample_failures"]:
            status = row[S.STATUS] + (f" {row[S.HTTP_STATUS]}" if row[S.STATUS] == "http_error" else "")
            lines.append(f"  {status:<16} {row[S.URL]}")
            message = textwrap.wrap(_cut(row[S.ERROR_MESSAGE], 200), 100)
            lines += [f"  {'':<16} {part}" for part in message]
    lines += ["", f"pairs (first {len(summary['sample_pairs'])} by language, url):"]
    lines += ["  " + line for line in _table(summary["sample_pairs"], [(S.URL, 48), (S.TEXT, 52), (S.LANGUAGE, 8)])]
    return "\n".join(line.rstrip() for line in lines)
