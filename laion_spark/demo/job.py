"""The demo job: a generated crawl -> extract -> dedupe, everything under one output folder.

INPUT  -> JobConfig with output (no input: the crawl is generated) and demo.seed / demo.rows
OUTPUT -> <output>/crawl/ (3 WARC files, one of them truncated on purpose, and a WAT file),
          <output>/candidates, <output>/candidates_errors, <output>/pairs, each stage's summary at
          <stage output>/_summary.json, and a summary dict that `format_report` turns into the
          text the CLI prints
"""

from __future__ import annotations

import dataclasses
import logging
import time

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


def run(spark, cfg) -> dict:
    from laion_spark.demo.crawl import CRAWL_FILES, PAGES, TRUNCATED_FILE, write_demo_crawl
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
    return {
        "outputs": uris,
        "crawl": crawl,
        "extract": extract,
        "dedupe": dedupe,
        "pairs": dedupe.get("pairs"),
        "languages": dict(sorted(languages.items(), key=lambda kv: (-kv[1], kv[0]))),
        "sample_pairs": [r.asDict() for r in sample],
        "sample_errors": [r.asDict() for r in errors],
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


def format_report(summary: dict) -> str:
    """The demo's summary -> the text `laion-spark demo` prints."""
    crawl, extract, dedupe, out = summary["crawl"], summary["extract"], summary["dedupe"], summary["outputs"]
    dropped = ", ".join(f"{k} {v}" for k, v in extract.get("dropped", {}).items()) or "none"
    languages = ", ".join(f"{k} {v}" for k, v in summary["languages"].items())
    lines = [
        "laion-spark demo: generated crawl -> extract -> dedupe",
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
        f"languages of the pairs: {languages}",
        "summaries: <each output>/_summary.json",
    ]
    if summary["sample_errors"]:
        lines += ["", "extract_errors (first rows):"]
        for row in summary["sample_errors"]:
            name = str(row[S.SOURCE_URI]).rsplit("/", 1)[-1]
            lines.append(f"  {name} @ {row[S.SOURCE_OFFSET]}: {_cut(row[S.ERROR], 90)}")
    lines += ["", f"pairs (first {len(summary['sample_pairs'])} by language, url):"]
    lines += ["  " + line for line in _table(summary["sample_pairs"], [(S.URL, 48), (S.TEXT, 52), (S.LANGUAGE, 8)])]
    return "\n".join(line.rstrip() for line in lines)
