"""The demo job: a generated crawl -> extract -> dedupe -> download -> embed -> filter -> export, all
under one output folder.

INPUT  -> JobConfig with output (no input: the crawl is generated), demo.seed / demo.rows, and
          download.* / embed.* / filter.* / export.* (kept, except the demo's own settings below)
OUTPUT -> <output>/crawl/ (3 WARC files, one of them truncated on purpose, and a WAT file),
          <output>/candidates, <output>/candidates_errors, <output>/pairs, <output>/images (one row per
          pair, failures included), <output>/embeddings (one row per downloaded image),
          <output>/dataset (the pairs the filter keeps) and <output>/dataset_rejected (every other
          images row, with its reason), <output>/webdataset/ (shards of the dataset), each stage's
          summary at <stage output>/_summary.json, and a summary dict that `format_report` turns
          into the text the CLI prints

Download fetches from the demo image server (demo/images.py), started in the driver on 127.0.0.1 for
that stage only: `download.connect_to` sends every host's port 80 there, keeping the crawl's URLs and
Host headers, and `download.allowed_networks` lets 127.0.0.1 through the address guard. The demo has
no TLS server, so https URLs go to a closed loopback port and end as connect_error rows ("connection
refused"): nothing leaves the machine. The server binds to 127.0.0.1, so the demo needs the Spark
workers on the driver's machine (local mode, as `laion-spark demo` runs by default).

Embed and filter score with the project's toy CLIP (laion_spark/toy/; no real CLIP can be
downloaded here): the demo sets embed.model / embed.pretrained / embed.model_config to its
checkpoint (`ensure_checkpoint()`: the one shipped in the package, or one trained and cached when
the toy recipe changed), clears embed.models.*, and sets filter.threshold.en / .multi / .nolang
all to the toy model's validation threshold (the cosine that best separates true captions from
one-attribute mismatches on held-out scenes; the metrics JSON beside the checkpoint). The crawl's
toy shop (demo/toyshop.py) is what that model understands: its true captions are kept, its
mismatched ones rejected. The
other pictures (gradients with a disc) have alt texts about vases, cities and food, which the toy
model's world has no words for: most are rejected as below_threshold. filter.embeddings and
filter.rejected_output are the demo's folders; other embed.* and filter.* keys (batch sizes, device,
filter.npy, ...) are the user's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import textwrap
import time
from pathlib import Path

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
        "embeddings": f"{root}/embeddings",
        "dataset": f"{root}/dataset",
        "dataset_rejected": f"{root}/dataset_rejected",
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


def toy_threshold(checkpoint) -> float:
    """ToyCheckpoint -> the cosine threshold chosen on its validation split (the metrics JSON beside it)."""
    metrics = Path(checkpoint.checkpoint).with_suffix(".json")
    try:
        return float(json.loads(metrics.read_text())["validation"]["threshold"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(f"the toy CLIP's metrics {metrics} give no validation threshold ({exc}); "
                           "rebuild it with `make toy-clip`") from exc


def demo_embed_config(embed, checkpoint):
    """cfg.embed + ToyCheckpoint -> the same settings embedding with the toy CLIP for every language group."""
    from laion_spark.config import EmbedGroupModels

    return dataclasses.replace(
        embed, model=checkpoint.model, pretrained=checkpoint.checkpoint, model_config=checkpoint.model_config,
        models=EmbedGroupModels(),
    )


def demo_filter_config(filter_cfg, embeddings: str, rejected: str, threshold: float):
    """cfg.filter + the embeddings and rejected URIs + one threshold -> the demo's filter settings."""
    from laion_spark.config import FilterThresholds

    return dataclasses.replace(
        filter_cfg, embeddings=embeddings, rejected_output=rejected,
        threshold=FilterThresholds(en=threshold, multi=threshold, nolang=threshold),
    )


def _toy_pairs(spark, uris: dict, seed: int) -> dict:
    """The written dataset and rejected tables -> what the filter did with the toy shop's pairs:
    kept / rejected per kind of alt text (true caption, mismatched) and every toy row, in shop order."""
    from laion_spark.demo.toyshop import toy_images

    toys = {t.url: t for t in toy_images(seed)}
    columns = [S.URL, S.TEXT, S.SIMILARITY]
    kept = spark.read.parquet(uris["dataset"]).select(*columns, F.lit(None).cast("string").alias(S.REASON))
    rejected = spark.read.parquet(uris["dataset_rejected"]).select(*columns, S.REASON)
    counts = {kind: {"pairs": 0, "kept": 0, "rejected": 0} for kind in ("true", "mismatched")}
    rows = []
    for r in kept.unionByName(rejected).where(F.col(S.URL).isin(list(toys))).collect():
        toy = toys[r[S.URL]]
        kind = "mismatched" if toy.mismatched else "true"
        counts[kind]["pairs"] += 1
        counts[kind]["kept" if r[S.REASON] is None else "rejected"] += 1
        rows.append({**r.asDict(), "index": toy.index, "caption": toy.caption, "mismatched": toy.mismatched})
    rows.sort(key=lambda row: row["index"])
    return {"counts": counts, "rows": rows}


def run(spark, cfg) -> dict:
    from laion_spark.demo.crawl import CRAWL_FILES, TRUNCATED_FILE, demo_pages, write_demo_crawl
    from laion_spark.demo.images import DemoImageServer
    from laion_spark.io import read_table
    from laion_spark.toy.train import ensure_checkpoint

    uris = stage_uris(cfg)
    # first: should the toy recipe have changed, training takes minutes; better before the crawl than after
    checkpoint = ensure_checkpoint()
    log.info("demo: embedding with the toy CLIP %s", checkpoint.checkpoint)
    threshold = toy_threshold(checkpoint)
    started = time.time()
    files = write_demo_crawl(uris["crawl"], seed=cfg.demo.seed)
    crawl = {
        "output": uris["crawl"],
        "files": files,
        "warc_files": sum(f.endswith(".warc.gz") for f in files),
        "wat_files": sum(f.endswith(".wat.gz") for f in files),
        "pages": len(demo_pages(cfg.demo.seed)),
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
    embed_cfg = dataclasses.replace(cfg, input=uris["images"], output=uris["embeddings"],
                                    embed=demo_embed_config(cfg.embed, checkpoint))
    embed = _run_stage(spark, "embed", embed_cfg)
    filter_cfg = dataclasses.replace(
        cfg, input=uris["images"], output=uris["dataset"],
        filter=demo_filter_config(cfg.filter, uris["embeddings"], uris["dataset_rejected"], threshold),
    )
    filtered = _run_stage(spark, "filter", filter_cfg)
    # the webdataset is made of the kept pairs, as LAION's was; export takes the dataset table as it
    # takes images (it has every images column, plus similarity and clip_model, carried into the json)
    # (format=webdataset: the shards straight into webdataset/; the release with tags is issue 12's demo)
    shards_only = dataclasses.replace(cfg.export, format="webdataset")
    export = _run_stage(spark, "export", dataclasses.replace(cfg, input=uris["dataset"], output=uris["webdataset"],
                                                             export=shards_only))

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
        "embed": embed,
        "filter": filtered,
        "toy_model": {"model": checkpoint.model, "checkpoint": checkpoint.checkpoint, "threshold": threshold},
        "toy_shop": _toy_pairs(spark, uris, cfg.demo.seed),
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


TOY_EXAMPLES = 4  # toy-shop rows shown per outcome in the report


def _toy_row(row: dict) -> dict:
    """A toy-shop row of the summary -> the report's columns: similarity, alt text, what the scene is."""
    scene = "the true caption" if not row["mismatched"] else f"wrong {row['mismatched']}: {row['caption']}"
    similarity = row[S.SIMILARITY]
    return {S.SIMILARITY: "" if similarity is None else f"{similarity:.3f}", S.TEXT: row[S.TEXT], "scene": scene}


def format_report(summary: dict) -> str:
    """The demo's summary -> the text `laion-spark demo` prints."""
    crawl, extract, dedupe, out = summary["crawl"], summary["extract"], summary["dedupe"], summary["outputs"]
    download, export, server = summary["download"], summary["export"], summary["image_server"]
    embed, filtered, toy_model = summary["embed"], summary["filter"], summary["toy_model"]
    toy = summary["toy_shop"]["counts"]
    models = ", ".join(embed["models"]) or toy_model["model"]
    kept_groups = ", ".join(f"{g} {c['kept']}" for g, c in filtered["groups"].items())
    dropped = ", ".join(f"{k} {v}" for k, v in extract.get("dropped", {}).items()) or "none"
    languages = ", ".join(f"{k} {v}" for k, v in summary["languages"].items())
    successes = download["statuses"].get(S.SUCCESS, 0)
    lines = [
        "laion-spark demo: generated crawl -> extract -> dedupe -> download -> embed -> filter -> export",
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
        f"embed    {embed['success_rows']} downloaded images -> {embed['embedded']} embedded, {embed['failed']} failed"
        f" ({embed['partitions']} tasks, {embed['images_per_s'] or 0:.1f} images/s)",
        f"         model: {models} (the project's toy CLIP, laion_spark/toy/)",
        f"         -> {out['embeddings']}  {embed.get('seconds', 0):.1f}s",
        f"filter   {filtered['rows_in']} images rows -> {filtered['dataset']} kept, {filtered['rejected']} rejected",
        f"         threshold {toy_model['threshold']:.3f} for en, multi and nolang (the toy CLIP's, chosen on its"
        " validation scenes)",
        *textwrap.wrap(f"rejected: {_by_count(filtered['reasons']) or 'none'}", 100, initial_indent=" " * 9,
                       subsequent_indent=" " * 19),
        f"         kept per language group: {kept_groups}",
        f"         toy shop: {toy['true']['kept']} of {toy['true']['pairs']} true captions kept,"
        f" {toy['mismatched']['rejected']} of {toy['mismatched']['pairs']} one-attribute mismatches rejected",
        f"         -> {out['dataset']}  (rejected: {out['dataset_rejected']})  {filtered.get('seconds', 0):.1f}s",
        f"export   {export['rows']} dataset rows -> {export['shards']} webdataset shard"
        f"{'s' * (export['shards'] != 1)}: {export['successes']} samples ({export['tar_bytes'] / 1e6:.1f} MB of"
        " tar), every row in the shards' parquet",
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
    rows = summary["toy_shop"]["rows"]
    for title, chosen in (("kept", [r for r in rows if r[S.REASON] is None]),
                          ("rejected", [r for r in rows if r[S.REASON] is not None])):
        if not chosen:
            continue
        shown = [_toy_row(r) for r in chosen[:TOY_EXAMPLES]]
        lines += ["", f"toy shop pairs {title} (first {len(shown)} of {len(chosen)}):"]
        lines += ["  " + line for line in _table(shown, [(S.SIMILARITY, 10), (S.TEXT, 44), ("scene", 60)])]
    lines += ["", f"pairs (first {len(summary['sample_pairs'])} by language, url):"]
    lines += ["  " + line for line in _table(summary["sample_pairs"], [(S.URL, 48), (S.TEXT, 52), (S.LANGUAGE, 8)])]
    return "\n".join(line.rstrip() for line in lines)
