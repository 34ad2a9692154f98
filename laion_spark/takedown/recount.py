"""After a takedown, the counts the run publishes counted again from the files it left.

INPUT  -> the run's table URIs (pipeline/plan.table_uris), a SparkSession (export_removed's reasons) and
          the index folders the takedown changed
OUTPUT -> export/_summary.json's released, removed, reasons, subsets' rows, webdataset and emb counts; the
          dataset card's Counts section (export/README.md); each index's _summary.json indexed and
          taken_down counts -> the files rewritten

Counted, not adjusted by a difference: a takedown resumed after a crash writes the same numbers. Row
counts come from the parquet footers (no data read), the webdataset counts from the shards' _stats.json,
the reasons from export_removed, which the takedown appended to: all read by Spark's executors
(locate.py), the driver receiving sums. The markers keep every other key (their output_hash too), so the
stages stay complete; their own hash changes, so the steps that read them rebuild on the next pipeline run.
"""

from __future__ import annotations

import json

from laion_spark.takedown.rewrite import _fs, _replace


def _read(fs, path: str) -> dict | None:
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as fh:
        return json.load(fh)


def _write(fs, path: str, data: dict) -> None:
    _replace(fs, path, (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode())


def export_marker(spark, u: dict) -> list[dict]:
    """export/_summary.json and README.md -> recounted (see the module docstring) -> the files written."""
    from pyspark.sql import functions as F

    from laion_spark import schemas as S
    from laion_spark.export.card import recounted
    from laion_spark.takedown import locate as L

    fs, export = _fs(u["export"])
    export = export.rstrip("/")
    summary = _read(fs, f"{export}/_summary.json")
    if summary is None:
        return []
    before = json.dumps(summary, sort_keys=True, default=str)
    summary["released"] = L.count_rows(spark, L.Source("release", u["release"], "SAMPLE_ID"))
    removed = spark.read.parquet(u["export_removed"])
    reasons = {r[S.REASON]: r["n"] for r in removed.groupBy(S.REASON).agg(F.count(F.lit(1)).alias("n")).collect()}
    summary["reasons"] = dict(sorted(reasons.items()))
    summary["removed"] = sum(reasons.values())
    for name, sub in (summary.get("subsets") or {}).items():
        sub["rows"] = L.count_rows(spark, L.Source(name, f"{u['export']}/subsets/{name}", "SAMPLE_ID"))
    shards = summary.get("webdataset")
    if shards:
        stats = L.webdataset_stats(spark, f"{u['export']}/webdataset")
        for key in ("successes", "skipped", "failed_to_download", "failed_to_resize", "tar_bytes"):
            shards[key] = stats[key]
        shards["rows"] = shards["rows_in"] = stats["count"]
        shards["statuses"] = stats["status_dict"]
    if summary.get("emb"):
        summary["emb"]["rows"] = L.count_rows(spark, L.npy_metadata("emb", f"{u['export']}/emb"))
    if json.dumps(summary, sort_keys=True, default=str) == before:
        return []
    _write(fs, f"{export}/_summary.json", summary)
    done = [{"file": f"{export}/_summary.json", "removed": 0}]
    card = f"{export}/README.md"
    if fs.exists(card):
        with fs.open(card, "r") as fh:
            text = fh.read()
        try:
            new = recounted(text, summary)
        except ValueError:  # a card without the Counts section (edited by hand): left as it is
            new = text
        if new != text:
            _replace(fs, card, new.encode())
            done.append({"file": card, "removed": 0})
    return done


def index_marker(marker_folder_uri: str) -> list[dict]:
    """An index stage's output (index/image: one index, or one per model below it) -> its _summary.json's
    indexed counted from each model's index_infos.json, taken_down from their tombstones -> files written."""
    fs, folder = _fs(marker_folder_uri)
    folder = folder.rstrip("/")
    summary = _read(fs, f"{folder}/_summary.json")
    if summary is None:
        return []
    before = json.dumps(summary, sort_keys=True, default=str)
    # the folders as they lie now (a copied run's markers name the old place): this one, or one per model
    counts, tombstoned = {}, 0
    for path in [folder, *sorted(p.rstrip("/").rsplit("/", 1)[0] for p in fs.glob(f"{folder}/*/index_infos.json"))]:
        infos = _read(fs, f"{path}/index_infos.json")
        if infos and "nb_vectors" in infos:
            counts[path.rsplit("/", 1)[-1]] = int(infos["nb_vectors"])
            tombstoned += int(infos.get("tombstones", 0))
    for model in (summary.get("models") or {}).values():
        name = str(model.get("folder") or "").rstrip("/").rsplit("/", 1)[-1]
        if name in counts:
            model["nb_vectors"] = counts[name]
    summary["indexed"] = sum(counts.values())
    summary["taken_down"] = tombstoned
    if json.dumps(summary, sort_keys=True, default=str) == before:
        return []
    _write(fs, f"{folder}/_summary.json", summary)
    return [{"file": f"{folder}/_summary.json", "removed": 0}]
