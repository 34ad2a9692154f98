"""The search stage: `laion-spark search input=<index dir> query="a red circle" k=10` -> results on stdout.

INPUT  -> an index folder (or a folder of several: the text query goes to each), search.query or
          search.image (a local image file), k and the filters (search.*)
OUTPUT -> a summary holding the results; format_report prints them as a table (search.format=table)
          or one JSON object a line (jsonl, for scripts)
"""

from __future__ import annotations

import json
import os

from laion_spark.config import ConfigError
from laion_spark.io import exists


def prepare(cfg) -> None:
    s = cfg.search
    if not exists(cfg.input):
        raise ConfigError(f"input not found: {cfg.input}")
    if bool(s.query.strip()) == bool(s.image):
        raise ConfigError("give one of query=TEXT or image=FILE")
    if s.image and not os.path.isfile(s.image):
        raise ConfigError(f"image file not found: {s.image}")


def run(spark, cfg) -> dict:
    from laion_spark.search.searcher import SearchError, open_indices

    s = cfg.search
    searchers = open_indices(cfg.input, s.cache_dir)
    image = None
    if s.image:
        with open(s.image, "rb") as fh:
            image = fh.read()
    results = {}
    for name, searcher in searchers.items():
        try:
            results[name] = searcher.query(
                text=s.query if image is None else None, image=image, k=s.k, deduplicate=s.deduplicate,
                dedup_threshold=s.dedup_threshold, unique_urls=s.unique_urls,
                max_punsafe=s.max_punsafe if s.max_punsafe >= 0 else None,
                max_pwatermark=s.max_pwatermark if s.max_pwatermark >= 0 else None)
        except SearchError as exc:
            raise ConfigError(f"search {name}: {exc}") from None
    return {"query": s.query or s.image, "k": s.k, "format": s.format, "results": results}


def _cell(value, width: int) -> str:
    text = "" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_report(summary: dict) -> str:
    results = summary["results"]
    if summary.get("format") == "jsonl":
        lines = [json.dumps({"index": name, "rank": rank, **row}, default=str, ensure_ascii=False)
                 for name, rows in results.items() for rank, row in enumerate(rows, 1)]
        return "\n".join(lines)
    out = []
    for name, rows in results.items():
        out.append(f"{name}: {len(rows)} results for {summary['query']!r}")
        out.append(f"{'#':>3}  {'similarity':>10}  {'sample_id':>20}  {'text':<40}  url")
        for rank, row in enumerate(rows, 1):
            out.append(f"{rank:>3}  {_cell(row.get('similarity'), 10):>10}  {row['sample_id']:>20}  "
                       f"{_cell(row.get('text'), 40):<40}  {_cell(row.get('url'), 70)}")
    return "\n".join(out)
