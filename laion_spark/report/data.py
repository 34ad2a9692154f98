"""What the report shows, gathered from a run directory's tables and markers (Spark aggregates).

INPUT  -> a SparkSession and a run directory (pipeline.plan.table_uris); any table may be missing (a run
          stopped with pipeline.until): its part of the report is left out
OUTPUT -> a dict of plain values: the markers (each stage's counts), the funnel (rows at each stage with
          what was removed and why), histograms (similarity per language group, with the filter's
          thresholds; punsafe / pwatermark / aesthetic_score), languages, image sizes and aspect
          ratios, download statuses, top domains, the indices' recall measured on held-out queries (with
          its 95% interval, the cross-modal recall) and latency (one client and under load), and sample
          kept and rejected pairs (with their image bytes, for thumbnails): kept ones from the release,
          and none that a list of the run reaches (sample_pools)

Samples are chosen on their narrow columns (the sample_id's hash orders the table, the same on every run)
with each row's place in its file (_metadata.file_path, row_index); only the chosen rows' image bytes are
read, from their row groups (read_images): never the table's bytes, to show 8 thumbnails.

Every number comes from a table or a marker; nothing is estimated. Histograms are counts per bin,
computed by Spark over every row.
"""

from __future__ import annotations

import math

from pyspark.sql import functions as F

from laion_spark import schemas as S
from laion_spark.filter.transform import language_group_column
from laion_spark.pipeline.plan import INDEX_FIELDS, read_marker, table_uris

TOP = 15  # languages and domains shown
# what the report shows of an index_infos.json: recall on held-out queries with its interval and their count,
# the tuning queries' own figure (for contrast: it reaches the target by construction), the cross-modal
# recall, latency of one client and under load; keys an older index lacks are shown as absent
INDEX_FIGURES = ("index_key", "index_param", "nb_vectors", "dimension", "recall_at_1", "recall_at_10",
                 "recall_at_1_ci95", "recall_at_10_ci95", "recall_ci", "eval_queries", "tune_queries",
                 "tuning_recall_at_10", "cross_modal", "latency_ms_p50", "latency_ms_p99", "latency_under_load",
                 "size_bytes")
BINS = 40


def _read_json(uri: str) -> dict | None:
    from laion_spark.io import read_json

    try:
        return read_json(uri)
    except (FileNotFoundError, OSError, ValueError):
        return None


def markers(run_dir: str) -> dict:
    """-> {table: its completion marker} for the tables of the run that have one."""
    u = table_uris(run_dir)
    names = ["candidates", "pairs", "images", "embeddings", "dataset", "tags", "export",
             *[f"index_{f}" for f in INDEX_FIELDS]]
    out = {}
    for name in names:
        m = read_marker(u[name])
        if m is not None:
            out[name] = m
    return out


def funnel(m: dict) -> list[dict]:
    """Markers -> the funnel: one step per table, its rows, and what the step removed, per reason."""
    steps = []
    if "candidates" in m:
        c = m["candidates"]
        steps.append({"table": "candidates", "label": "image-alt candidates (extract)", "rows": c["candidates"],
                      "removed": {f"rule:{k}": v for k, v in c.get("dropped", {}).items()},
                      "note": f"{c['images_seen']} <img> with alt text in {c['html_pages']} HTML pages; "
                              f"{c['error_rows']} error rows"})
    if "pairs" in m:
        p = m["pairs"]
        steps.append({"table": "pairs", "label": "unique pairs (dedupe)", "rows": p["pairs"],
                      "removed": {k: v for k, v in (("duplicate", p["duplicates_removed"]),
                                                    ("in an earlier run", p["removed_previous"]),
                                                    ("dedupe blocklist", p["removed_blocklist"])) if v}})
    if "images" in m:
        i = m["images"]
        statuses = dict(i["statuses"])
        ok = statuses.pop(S.SUCCESS, 0)
        steps.append({"table": "images", "label": "downloaded images (download)", "rows": ok,
                      "removed": {f"download:{k}": v for k, v in statuses.items()},
                      "note": f"{i['rows_out']} images rows, one per pair"})
    if "dataset" in m:
        d = m["dataset"]
        reasons = {k: v for k, v in d["reasons"].items() if not k.startswith("download_failed:")}
        steps.append({"table": "dataset", "label": "kept by the CLIP filter (filter)", "rows": d["dataset"],
                      "removed": reasons})
    if "export" in m and m["export"].get("format") == "release":
        e = m["export"]
        steps.append({"table": "export/laion", "label": "released (export)", "rows": e["released"],
                      "removed": dict(e["reasons"])})
    for f in INDEX_FIELDS:
        if f"index_{f}" in m:
            steps.append({"table": f"index/{f}", "label": f"in the {f} index (index)",
                          "rows": m[f"index_{f}"]["indexed"], "removed": {}})
    return steps


def histogram(df, column: str, low: float, high: float, bins: int = BINS, by=None) -> dict:
    """Rows -> counts of `column` in `bins` equal bins over [low, high] (values outside are put in the end
    bins), per `by` when given; nulls and NaNs left out."""
    width = (high - low) / bins
    value = F.col(column).cast("double")
    b = F.least(F.greatest(F.floor((value - F.lit(low)) / F.lit(width)), F.lit(0)), F.lit(bins - 1)).cast("int")
    keys = [by] if by else []
    rows = (df.where(value.isNotNull() & ~F.isnan(value)).groupBy(*keys, b.alias("bin"))
            .agg(F.count(F.lit(1)).alias("n")).collect())
    edges = [low + k * width for k in range(bins + 1)]
    out: dict = {}
    for r in rows:
        key = r[by] if by else "all"
        out.setdefault(key, [0] * bins)[r["bin"]] += r["n"]
    return {"edges": edges, "counts": out}


def _exists(uri: str) -> bool:
    from laion_spark.io import exists

    return exists(uri)


PLACE_FILE, PLACE_ROW = "_place_file", "_place_row"
READ_BATCH_ROWS = 256


def with_place(df):
    """A table as read -> the same with each row's place in its file (for read_images)."""
    return df.select("*", F.col("_metadata.file_path").alias(PLACE_FILE), F.col("_metadata.row_index").alias(PLACE_ROW))


def _local(path: str) -> str:
    """A file path as Spark's _metadata names it -> what fsspec opens (file:/a%20b -> /a b)."""
    from urllib.parse import unquote, urlparse

    from laion_spark.io import fsspec_uri

    return unquote(urlparse(path).path) if path.startswith("file:") else fsspec_uri(path)


def read_images(places: list[tuple[str, int]], column: str = S.IMAGE) -> list:
    """[(file path as Spark names it, row index)] -> each row's value of `column`, read with pyarrow from
    the row group that holds it (one row group's column per file and group, whatever the table's size)."""
    import fsspec
    import pyarrow.parquet as pq

    out: dict[tuple[str, int], object] = {}
    by_file: dict[str, list[int]] = {}
    for path, row in places:
        by_file.setdefault(path, []).append(int(row))
    for path, rows in by_file.items():
        with fsspec.open(_local(path), "rb") as fh:
            pf = pq.ParquetFile(fh)
            starts, at = [], 0
            for g in range(pf.metadata.num_row_groups):
                starts.append(at)
                at += pf.metadata.row_group(g).num_rows
            groups: dict[int, list[int]] = {}
            for row in rows:
                g = max(i for i, start in enumerate(starts) if start <= row)
                groups.setdefault(g, []).append(row)
            for g, wanted in groups.items():
                # batch by batch: one batch of the group's images decoded at a time, not the whole group
                at, todo = starts[g], sorted(wanted)
                for batch in pf.iter_batches(batch_size=READ_BATCH_ROWS, row_groups=[g], columns=[column]):
                    while todo and todo[0] < at + batch.num_rows:
                        out[(path, todo[0])] = batch.column(0)[todo[0] - at].as_py()
                        todo.pop(0)
                    at += batch.num_rows
                    if not todo:
                        break
    return [out[(path, int(row))] for path, row in places]


def _samples(rows, where, extra: list[str], n: int) -> list[dict]:
    """Rows (with_place's columns) + a condition + extra columns + n -> up to n of them with their image
    bytes, a spread of the table (by the sample_id's hash), rows without an image skipped."""
    if S.IMAGE not in rows.columns or n <= 0:
        return []
    columns = [S.SAMPLE_ID, S.URL, S.TEXT, *[c for c in extra if c in rows.columns]]
    ordered = (rows.where(where).orderBy(F.xxhash64(F.col(S.SAMPLE_ID)))  # the same on every run
               .select(*columns, PLACE_FILE, PLACE_ROW))
    want = n
    while True:
        picked = ordered.limit(want).collect()  # narrow rows: no image bytes cross the network
        images = read_images([(r[PLACE_FILE], r[PLACE_ROW]) for r in picked])
        out = [{**{c: r[c] for c in columns}, S.IMAGE: image}
               for r, image in zip(picked, images, strict=True) if image is not None][:n]
        if len(out) >= n or len(picked) < want:
            return out
        want *= 4  # rows without an image (none in a dataset the filter wrote): look further


def sample_pools(spark, run_dir: str) -> dict:
    """run_dir -> {"kept": rows the release holds (the dataset's rows, only those in export/laion once
    export wrote it), "rejected": the filter's rejected rows}, each less every row a list of the run
    reaches (evaluate.subsets.without_listed): a listed image is not published in the report, not even
    before export or among the rows the filter rejected. A table the run lacks is left out."""
    from laion_spark.evaluate.subsets import run_lists, without_listed

    u = table_uris(run_dir)
    lists = run_lists(run_dir)
    pools = {}
    if _exists(u["dataset"]):
        kept = with_place(spark.read.parquet(u["dataset"]))
        if _exists(u["release"]):
            released = spark.read.parquet(u["release"]).select(F.col("SAMPLE_ID").alias(S.SAMPLE_ID))
            kept = kept.join(released, S.SAMPLE_ID, "left_semi")
        pools["kept"] = without_listed(spark, run_dir, kept, lists)
    if _exists(u["dataset_rejected"]):
        pools["rejected"] = without_listed(spark, run_dir, with_place(spark.read.parquet(u["dataset_rejected"])),
                                          lists)
    return pools


def input_errors(spark, uri: str, top: int = TOP) -> list[dict]:
    """extract's error rows -> per input file (most errors first): the rows and the first error message,
    so that a corrupt archive shows on the page with what was wrong with it."""
    errors = spark.read.parquet(uri)
    rows = (errors.groupBy(S.SOURCE_URI)
            .agg(F.count(F.lit(1)).alias("rows"), F.min_by(S.ERROR, F.coalesce(S.SOURCE_OFFSET, F.lit(-1)))
                 .alias("first_error"))
            .orderBy(F.desc("rows"), S.SOURCE_URI).limit(top).collect())
    return [{"file": r[S.SOURCE_URI], "rows": r["rows"], "first_error": r["first_error"]} for r in rows]


def gather(spark, run_dir: str, samples: int = 8) -> dict:
    u = table_uris(run_dir)
    m = markers(run_dir)
    out: dict = {"run_dir": run_dir, "markers": m, "funnel": funnel(m),
                 "manifest": _read_json(u["manifest"]),
                 # `laion-spark evaluate` (its default output): CLIPs trained on the filtered pairs and baselines
                 "evaluate": _read_json(f"{run_dir.rstrip('/')}/evaluate/results.json")}
    if "pairs" in m:
        pairs = spark.read.parquet(u["pairs"])
        out["languages"] = [(r[S.LANGUAGE], r["n"]) for r in pairs.groupBy(S.LANGUAGE).agg(
            F.count(F.lit(1)).alias("n")).orderBy(F.desc("n"), S.LANGUAGE).limit(TOP).collect()]
        host = F.lower(F.expr(f"parse_url({S.URL}, 'HOST')"))
        out["domains"] = [(r["host"], r["n"]) for r in pairs.select(host.alias("host")).groupBy("host").agg(
            F.count(F.lit(1)).alias("n")).orderBy(F.desc("n"), "host").limit(TOP).collect()]
    if "candidates" in m and _exists(u["candidates_errors"]):
        out["input_errors"] = input_errors(spark, u["candidates_errors"])
    if "images" in m:
        out["statuses"] = m["images"]["statuses"]
        ok = spark.read.parquet(u["images"]).where(F.col(S.STATUS) == S.SUCCESS)
        sides = ok.select(F.greatest("original_width", "original_height").alias("side"),
                          (F.col("original_width") / F.col("original_height")).alias("aspect"))
        out["sizes"] = histogram(sides.select(F.log10("side").alias("log_side")), "log_side", 1.0, 4.0, 30)
        out["aspects"] = histogram(sides.select(F.log2("aspect").alias("log_aspect")), "log_aspect", -2.0, 2.0, 32)
    if "embeddings" in m and "images" in m:
        emb = spark.read.parquet(u["embeddings"]).select(S.SAMPLE_ID, S.SIMILARITY)
        lang = spark.read.parquet(u["images"]).select(S.SAMPLE_ID, language_group_column(F.col(S.LANGUAGE))
                                                      .alias("group"))
        scored = emb.join(lang, S.SAMPLE_ID)
        low, high = scored.agg(F.min(S.SIMILARITY), F.max(S.SIMILARITY)).first()
        low, high = (math.floor((low or 0.0) * 20) / 20, math.ceil((high or 0.5) * 20) / 20)
        out["similarity"] = histogram(scored, S.SIMILARITY, low, max(high, low + 0.05), by="group")
        if "dataset" in m:
            out["thresholds"] = m["dataset"]["thresholds"]
    if "tags" in m:
        tags = spark.read.parquet(u["tags"])
        out["tags"] = {"punsafe": histogram(tags, "punsafe", 0.0, 1.0, 20),
                       "pwatermark": histogram(tags, "pwatermark", 0.0, 1.0, 20),
                       "aesthetic_score": histogram(tags, "aesthetic_score", 0.0, 10.0, 20)}
    out["indices"] = {}
    for f in INDEX_FIELDS:
        infos = _read_json(u[f"index_{f}"] + "/index_infos.json")
        if infos is not None:
            out["indices"][f] = {k: infos.get(k) for k in INDEX_FIGURES}
    pools = sample_pools(spark, run_dir)
    if "kept" in pools:
        out["kept"] = _samples(pools["kept"], F.lit(True), [S.SIMILARITY, S.LANGUAGE], samples)
    if "rejected" in pools:
        out["rejected"] = _samples(pools["rejected"], F.col(S.REASON) == "below_threshold",
                                   [S.SIMILARITY, S.LANGUAGE, S.REASON], samples)
    return out
