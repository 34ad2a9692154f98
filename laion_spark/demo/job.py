"""The demo job: a generated crawl -> `pipeline` (extract -> dedupe -> download -> embed -> filter -> tag
-> export -> index -> report), all under one output folder, the run directory.

INPUT  -> JobConfig with output (no input: the crawl is generated), demo.seed / demo.rows, and every
          stage's keys (kept, except the demo's own settings below)
OUTPUT -> <output>/crawl/ (3 WARC files, one of them truncated on purpose, and a WAT file),
          <output>/lists/ (takedowns.txt: one toy URL the export must remove; known-images.txt: the
          SHA-256s of two toy images' bytes, removed whatever their URL), the run directory's
          tables (pipeline/plan.py: candidates ... export/, index/image, index/text, report/,
          manifest.json), and a summary dict that `format_report` turns into the text the CLI
          prints (each stage's counts as its completion marker holds them, a few text searches)

Download fetches from the demo image server (demo/images.py), started in the driver on 127.0.0.1 for
that stage only: `download.connect_to` sends every host's port 80 there, keeping the crawl's URLs and
Host headers, and `download.allowed_networks` lets 127.0.0.1 through the address guard. The demo has
no TLS server, so https URLs go to a closed loopback port and end as connect_error rows ("connection
refused"): nothing leaves the machine. The server binds to 127.0.0.1, so the demo needs the Spark
workers on the driver's machine (local mode, as `laion-spark demo` runs by default). Download keeps
images smaller than download.image_size at their own size (`resize_only_if_bigger`, never an
upscale): the toy shop's watermarked previews are 64x64, and the toy watermark head recognises the
overlay only as drawn, not blurred by an upscale and the tag stage's downscale.

Embed and filter score with the project's toy CLIP (laion_spark/toy/; no real CLIP can be
downloaded here): the demo sets embed.model / embed.pretrained / embed.model_config to its
checkpoint (`ensure_checkpoint()`: the one shipped in the package, or one trained and cached when
the toy recipe changed), clears embed.models.*, and sets filter.threshold.en / .multi / .nolang
all to the toy model's validation threshold (the cosine that best separates true captions from
one-attribute mismatches on held-out scenes; the metrics JSON beside the checkpoint). The crawl's
toy shop (demo/toyshop.py) is what that model understands: its true captions are kept, its
mismatched ones rejected. The
other pictures (gradients with a disc) have alt texts about vases, cities and food, which the toy
model's world has no words for: most are rejected as below_threshold. tag scores with the toy heads
(toy/heads.py); the shop plants red scenes (punsafe) and watermarked previews (pwatermark) for them,
and the report counts how many of each the filter kept and the heads flagged (score >= FLAGGED), and
how many released rows are flagged: LAION released such rows with their scores (subsets and users
filter on them), so only the blocklists remove rows. The tables' places are the pipeline's; other
keys (batch sizes, devices, index budget, ...) are the user's.
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
FLAGGED = 0.5  # a punsafe / pwatermark score from which the report counts a row as flagged
HASH_LISTED = 2  # planted unsafe toy images whose bytes' SHA-256 the demo's image list names


def stage_uris(cfg) -> dict[str, str]:
    """Where each part of the demo goes, under cfg.output: the crawl, the blocklists and the run
    directory's tables (the pipeline's places)."""
    from laion_spark.pipeline.plan import table_uris

    root = cfg.output.rstrip("/")
    uris = table_uris(root)
    uris.update(crawl=f"{root}/crawl", lists=f"{root}/lists", extract_errors=uris["candidates_errors"],
                webdataset=f"{uris['export']}/webdataset")
    return uris


def prepare(cfg) -> None:
    """The toy shop's settings (the input is generated; the CLI checks the output)."""
    from laion_spark.config import ConfigError
    from laion_spark.demo.toyshop import Shop

    try:
        Shop.of(cfg.demo)
    except ValueError:
        raise ConfigError(f"demo.wrong_captions ({cfg.demo.wrong_captions}) + demo.unrelated_captions "
                          f"({cfg.demo.unrelated_captions}) must be at most 1") from None


def demo_download_config(download, port: int, closed_port: int):
    """cfg.download -> the same settings aimed at the demo image server, small images kept at their
    size (every other key kept)."""
    return dataclasses.replace(
        download,
        allowed_networks=("127.0.0.1/32",),
        resize_only_if_bigger=True,
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


def _toy_pairs(spark, uris: dict, seed: int, shop) -> dict:
    """The written dataset, rejected and tags tables -> what the filter and the toy heads did with the toy
    shop's pairs: kept / rejected per kind of alt text (true caption, mismatched, unrelated, watermarked preview),
    per planted kind how many the heads flagged and the filter kept, and every toy row, in index order."""
    from laion_spark.demo.toyshop import shop_images

    toys = {t.url: t for t in shop_images(seed, shop)}
    columns = [S.SAMPLE_ID, S.URL, S.TEXT, S.SIMILARITY]
    kept = spark.read.parquet(uris["dataset"]).select(*columns, F.lit(None).cast("string").alias(S.REASON))
    rejected = spark.read.parquet(uris["dataset_rejected"]).select(*columns, S.REASON)
    # tag scores every images row, the filter's rejects too (pwatermark: the dataset's rows only)
    tags = spark.read.parquet(uris["tags"]).select(S.SAMPLE_ID, "punsafe", "pwatermark")
    counts = {kind: {"pairs": 0, "kept": 0, "rejected": 0}
              for kind in ("true", "mismatched", "unrelated", "watermarked")}
    planted = {kind: {"images": 0, "kept": 0, "flagged": 0} for kind in ("unsafe", "watermarked")}
    score = {"unsafe": "punsafe", "watermarked": "pwatermark"}
    rows = []
    toy_rows = kept.unionByName(rejected).where(F.col(S.URL).isin(list(toys))).join(tags, S.SAMPLE_ID, "left")
    for r in toy_rows.drop(S.SAMPLE_ID).collect():
        toy = toys[r[S.URL]]
        kind = (toy.mismatched if toy.mismatched == "unrelated" else "mismatched" if toy.mismatched
                else "watermarked" if toy.planted == "watermarked" else "true")
        counts[kind]["pairs"] += 1
        counts[kind]["kept" if r[S.REASON] is None else "rejected"] += 1
        if toy.planted:
            value = r[score[toy.planted]]
            planted[toy.planted]["images"] += 1
            planted[toy.planted]["kept"] += r[S.REASON] is None
            planted[toy.planted]["flagged"] += value is not None and value >= FLAGGED
        rows.append({**r.asDict(), "index": toy.index, "caption": toy.caption, "mismatched": toy.mismatched,
                     "planted": toy.planted})
    rows.sort(key=lambda row: row["index"])
    return {"counts": counts, "planted": planted, "rows": rows}


def _flagged(spark, release_uri: str) -> dict:
    """The release -> how many of its rows the toy heads flag (score >= FLAGGED), per score."""
    release = spark.read.parquet(release_uri)
    row = release.agg(*(F.sum((F.col(c) >= FLAGGED).cast("int")).alias(c) for c in ("punsafe", "pwatermark"))).first()
    return {c: row[c] or 0 for c in ("punsafe", "pwatermark")}


def demo_tag_config(tag):
    """cfg.tag -> the toy heads (punsafe: red, aesthetic: 2 x count + 2.5, pwatermark: a text overlay) scoring."""
    from laion_spark.config import load_config
    from laion_spark.toy.heads import ensure_heads

    return dataclasses.replace(load_config([], ensure_heads().overrides()).tag,
                               rows_per_task=tag.rows_per_task, nsfw_zero_shot=tag.nsfw_zero_shot)


def _blocklists(uris: dict, seed: int, shop) -> dict[str, str]:
    """The demo's two blocklists under <output>/lists/ -> {export.blocklist kind: file}: takedowns.txt, a
    removal request for one toy shop URL whose caption is true (so the filter would keep it), and
    known-images.txt, the SHA-256s of the bytes the image server sends for the first HASH_LISTED
    planted unsafe toy images (a list of known images is matched by content, whatever the URL). The
    export removes both from the release, the shards and the indices."""
    import hashlib

    from laion_spark.demo.toyshop import planted_images, toy_images, toy_png

    url = next(t.url for t in toy_images(seed, shop) if not t.mismatched)
    known = [t for t in planted_images(seed, shop) if t.planted == "unsafe"][:HASH_LISTED]
    folder = Path(uris["lists"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "takedowns.txt").write_text(f"# a removal request the release must honour\n{url}\n")
    (folder / "known-images.txt").write_text(
        "# SHA-256 of images the release must not hold, whatever their URL\n"
        + "".join(f"{hashlib.sha256(toy_png(t.path)).hexdigest()}  # {t.url}\n" for t in known))
    return {"url": str(folder / "takedowns.txt"), "image_sha256": str(folder / "known-images.txt")}


def _searches(uris: dict, seed: int, shop, k: int = 3) -> list[dict]:
    """A few text queries (toy shop captions) against the image index -> their top results."""
    from laion_spark.demo.toyshop import toy_images
    from laion_spark.io import exists
    from laion_spark.search.searcher import Searcher

    if not exists(uris["index_image"] + "/index_infos.json"):
        return []
    searcher = Searcher(uris["index_image"])
    queries = list(dict.fromkeys(t.caption for t in toy_images(seed, shop) if not t.mismatched))[:3]
    return [{"query": q, "results": [{"score": r.get(S.SIMILARITY), S.URL: r.get(S.URL), S.TEXT: r.get(S.TEXT)}
                                     for r in searcher.query(text=q, k=k)]} for q in queries]


def _infos(index_uri: str) -> dict:
    """An index folder -> what index_infos.json says of it (key, measured recall), {} where it has none."""
    from laion_spark.io import read_json

    try:
        infos = read_json(index_uri + "/index_infos.json")
    except (FileNotFoundError, OSError, ValueError):
        return {}
    return {k: infos.get(k) for k in ("index_key", "recall_at_10")}


def run(spark, cfg) -> dict:
    from laion_spark.config import ExportBlocklist
    from laion_spark.demo.crawl import TRUNCATED_FILE, crawl_files, demo_pages, write_demo_crawl
    from laion_spark.demo.images import DemoImageServer
    from laion_spark.demo.toyshop import Shop
    from laion_spark.io import read_json, read_table
    from laion_spark.pipeline import job as pipeline_job
    from laion_spark.toy.train import ensure_checkpoint

    uris = stage_uris(cfg)
    shop = Shop.of(cfg.demo)
    # first: should the toy recipe have changed, training takes minutes; better before the crawl than after
    checkpoint = ensure_checkpoint()
    log.info("demo: embedding with the toy CLIP %s", checkpoint.checkpoint)
    threshold = toy_threshold(checkpoint)
    started = time.time()
    files = write_demo_crawl(uris["crawl"], seed=cfg.demo.seed, shop=shop)
    crawl = {
        "output": uris["crawl"],
        "files": files,
        "warc_files": sum(f.endswith(".warc.gz") for f in files),
        "wat_files": sum(f.endswith(".wat.gz") for f in files),
        "pages": len(demo_pages(cfg.demo.seed, shop)),
        "fetches": sum(len(urls) for urls in crawl_files(shop).values()),
        "truncated_file": TRUNCATED_FILE,
        "seconds": round(time.time() - started, 3),
    }
    log.info("demo: wrote %d crawl files under %s", len(files), uris["crawl"])
    blocklists = _blocklists(uris, cfg.demo.seed, shop)

    with DemoImageServer() as server:
        run_cfg = dataclasses.replace(
            cfg, input=",".join(files), mode="overwrite",
            download=demo_download_config(cfg.download, server.port, server.closed_port),
            embed=demo_embed_config(cfg.embed, checkpoint),
            filter=demo_filter_config(cfg.filter, "", "", threshold),
            tag=demo_tag_config(cfg.tag),
            export=dataclasses.replace(cfg.export, blocklist=ExportBlocklist(
                **{kind: (uri,) for kind, uri in blocklists.items()})),
        )
        pipeline = pipeline_job.run(spark, run_cfg)
        image_server = {"address": f"127.0.0.1:{server.port}", "requests": server.requests}
    log.info("demo: the image server answered %d requests", image_server["requests"])
    # each stage's summary as its completion marker holds it
    marker = {name: read_json(uris[name] + "/_summary.json") for name in
              ("candidates", "pairs", "images", "embeddings", "dataset", "tags", "export", "index_image",
               "index_text", "report") if (Path(uris[name]) / "_summary.json").is_file()}
    extract, dedupe, download, embed, filtered = (marker[n] for n in ("candidates", "pairs", "images", "embeddings",
                                                                       "dataset"))
    export = marker["export"]

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
        "pipeline": [{k: s[k] for k in ("step", "action", "why", "seconds")} for s in pipeline["steps"]],
        "extract": extract,
        "dedupe": dedupe,
        "download": download,
        "image_server": image_server,
        "embed": embed,
        "filter": filtered,
        "tag": marker.get("tags", {}),
        "index": {f: {**marker.get(f"index_{f}", {}), **_infos(uris[f"index_{f}"])} for f in ("image", "text")},
        "blocklists": blocklists,
        "flagged": _flagged(spark, uris["release"]),
        "searches": _searches(uris, cfg.demo.seed, shop),
        "toy_model": {"model": checkpoint.model, "checkpoint": checkpoint.checkpoint, "threshold": threshold},
        "toy_shop": _toy_pairs(spark, uris, cfg.demo.seed, shop),
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
    scene = ("the true caption" if not row["mismatched"] else f"unrelated to {row['caption']}"
             if row["mismatched"] == "unrelated" else f"wrong {row['mismatched']}: {row['caption']}")
    scene += {"unsafe": " (red: unsafe to the toy head)", "watermarked": " (watermarked preview)"}.get(
        row["planted"], "")
    similarity = row[S.SIMILARITY]
    return {S.SIMILARITY: "" if similarity is None else f"{similarity:.3f}", S.TEXT: row[S.TEXT], "scene": scene}


def format_report(summary: dict) -> str:
    """The demo's summary -> the text `laion-spark demo` prints."""
    crawl, extract, dedupe, out = summary["crawl"], summary["extract"], summary["dedupe"], summary["outputs"]
    download, export, server = summary["download"], summary["export"], summary["image_server"]
    tag, index, shards = summary["tag"], summary["index"], summary["export"]["webdataset"]
    subsets = ", ".join(f"{name} {s['rows']}" for name, s in export["subsets"].items())
    embed, filtered, toy_model = summary["embed"], summary["filter"], summary["toy_model"]
    toy, planted = summary["toy_shop"]["counts"], summary["toy_shop"]["planted"]
    unsafe, marked = planted["unsafe"], planted["watermarked"]
    lists = ", ".join(f"{Path(b['uri']).name} ({b['kind']})" for b in export.get("blocklists", []))
    lists += f" -> {out['lists']}/" if lists else ""
    models = ", ".join(embed["models"]) or toy_model["model"]
    kept_groups = ", ".join(f"{g} {c['kept']}" for g, c in filtered["groups"].items())
    dropped = ", ".join(f"{k} {v}" for k, v in extract.get("dropped", {}).items()) or "none"
    languages = ", ".join(f"{k} {v}" for k, v in summary["languages"].items())
    successes = download["statuses"].get(S.SUCCESS, 0)
    lines = [
        "laion-spark demo: generated crawl -> laion-spark pipeline: extract -> dedupe -> download -> embed -> filter"
        " -> tag -> export -> index -> report",
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
        f" {toy['mismatched']['rejected']} of {toy['mismatched']['pairs']} one-attribute mismatches rejected,"
        + (f" {toy['unrelated']['rejected']} of {toy['unrelated']['pairs']} unrelated alt texts rejected,"
           if toy["unrelated"]["pairs"] else ""),
        f"         {toy['watermarked']['kept']} of {toy['watermarked']['pairs']} watermarked previews kept (true"
        " captions, but the toy CLIP never saw text on a picture)",
        f"         -> {out['dataset']}  (rejected: {out['dataset_rejected']})  {filtered.get('seconds', 0):.1f}s",
        f"tag      {tag.get('tagged', 0)} images rows scored by the toy heads: "
        + ", ".join(f"{k} {v}" for k, v in (tag.get("scored") or {}).items()),
        f"         planted in the toy shop: {unsafe['images']} red scenes, {unsafe['flagged']} with punsafe"
        f" >= {FLAGGED} ({unsafe['kept']} kept by the filter);",
        f"         {marked['images']} watermarked previews, {marked['flagged']} with pwatermark >= {FLAGGED}"
        f" ({marked['kept']} kept)",
        f"         -> {out['tags']}  {tag.get('seconds', 0):.1f}s",
        f"export   {export['rows_in']} dataset rows -> {export['released']} released, {export['removed']} removed"
        f" ({_by_count(export['reasons']) or 'none'})",
        f"         blocklists: {lists or 'none'}",
        f"         released rows with punsafe >= {FLAGGED}: {summary['flagged']['punsafe']}, pwatermark >= {FLAGGED}:"
        f" {summary['flagged']['pwatermark']} (scores, not removals: subsets filter on them)",
        f"         subsets: {subsets}",
        f"         webdataset: {shards['shards']} shard{'s' * (shards['shards'] != 1)}, {shards['successes']} samples"
        f" ({shards['tar_bytes'] / 1e6:.1f} MB of tar); emb: {export.get('emb', {}).get('rows', 0)} rows of .npy",
        f"         -> {out['export']}/ (laion/ the release, subsets/, webdataset/, emb/, README.md the card)"
        f"  {export.get('seconds', 0):.1f}s",
        *[f"index    {f}: {ix.get('indexed', 0)} vectors, {ix.get('index_key')}, recall@10 {ix.get('recall_at_10')}"
          f" -> {out['index_' + f]}" for f, ix in index.items() if ix],
        f"report   -> {out['report']}/index.html",
        f"run      {sum(s['action'] == 'run' for s in summary['pipeline'])} pipeline steps run; manifest:"
        f" {out['manifest']}",
        f"serve    laion-spark serve input={out['index_image']} images={out['images']} port=8080",
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
    for search in summary["searches"]:
        lines += ["", f"search the image index: {search['query']!r} (top {len(search['results'])})"]
        shown = [{"score": f"{r['score']:.3f}" if r["score"] is not None else "", S.TEXT: r[S.TEXT], S.URL: r[S.URL]}
                 for r in search["results"]]
        lines += ["  " + line for line in _table(shown, [("score", 6), (S.TEXT, 44), (S.URL, 56)])]
    lines += ["", f"pairs (first {len(summary['sample_pairs'])} by language, url):"]
    lines += ["  " + line for line in _table(summary["sample_pairs"], [(S.URL, 48), (S.TEXT, 52), (S.LANGUAGE, 8)])]
    return "\n".join(line.rstrip() for line in lines)
