"""The index job: embeddings (+ dataset) -> check -> plan -> train on a sample -> add in Spark tasks ->
merge (or keep shards) -> tune on measured recall -> measure on held-out queries -> metadata +
index_infos.json.

INPUT  -> JobConfig with input (the embed stage's output), index.dataset (`dataset=`: the rows to
          index, e.g. filter's dataset or export's release; empty: every row), output (a folder URI)
OUTPUT -> in `output` (or `output/<model>/` per model with index.per_model=true): knn.index (+ knn.ivfdata
          with on-disk lists) or shards/knn_NNNNN.index, metadata/ (parquet sorted by sample_id),
          index_infos.json; the rows left out at index.rejected_output (sample_id, clip_model, reason);
          a summary dict (rows in, indexed, rejected per reason, not selected, per index its infos)

The Spark work is DataFrame API only (mapInArrow), so it runs on Spark Connect. Two passes read the
vectors: the scan (index/scan.py: every row's verdict, written as a small table the counts, the
rejected rows and the metadata are read from, and the random training and query samples), then the
add. The query sample is cut in two (heldout.py): tuning queries, on which the plan and nprobe are
chosen, and held-out ones, which play no part in any choice (nor in training) and give the recall
index_infos.json reports; the held-out rows' other embedding (their captions' for an image index) is
read by a filter on their ids, for the cross-modal recall. The trained empty index goes to
`<output>/_build/` through fsspec, each add task adds its vectors (sample_ids as faiss ids) and writes
its part there (temporary name, then renamed; a retried task keeps a finished part), and writes the
exact top-k (with ties) of every query over its own vectors to `_build/added/`; Spark merges them per
query (exact_lists), so the driver holds the ground truth of the recall checks (queries x (k + ties)
entries, whatever the number of parts) without a third pass. Shards are tuned memory-mapped, never
read whole into the driver's memory.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import tempfile
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import Window
from pyspark.sql import functions as F

from laion_spark import __version__
from laion_spark import schemas as S
from laion_spark.config import ConfigError
from laion_spark.export.npy import matrix, model_folder_name
from laion_spark.export.shards import commit, new_token, remove_quietly, temporary_path
from laion_spark.index import build as B
from laion_spark.index import heldout as H
from laion_spark.index import scan as SC
from laion_spark.index import tune as T
from laion_spark.index.choose import choose
from laion_spark.index.plan import IndexPlanError, format_bytes, parse_bytes, plan_candidates
from laion_spark.index.recall import CI_METHOD, TIES
from laion_spark.index.transform import REASON, REASONS, VECTOR, metadata_columns, normalise_names, selected
from laion_spark.io import exists, fsspec_uri, read_json

log = logging.getLogger(__name__)

USAGE = "laion-spark index input=<embeddings> [dataset=<dataset>] output=<dir>"
ONDISK_AUTO_BYTES = 2**30
METADATA_ROW_GROUP_BYTES = 4 * 2**20
K = T.K
INFOS = "index_infos.json"
OTHER = "other_vector"  # the embedding not indexed (text for an image index): the cross-modal queries
CROSS_MODAL = {"image": ("text", "text_to_image"), "text": ("image", "image_to_text")}
RECALL_DEFINITION = (f"k-recall@k against the exact inner-product top-k over every indexed vector; a result whose "
                     f"score is within {B.TIE_TOLERANCE:g} of the k-th exact score counts as found; a held-out query "
                     "is an indexed vector, left out of both lists; intervals: Wilson 95% over queries")


class IndexBuildError(RuntimeError):
    """The index built does not hold the rows it should (row accounting), or a part is missing."""


def rejected_uri(cfg) -> str:
    return cfg.index.rejected_output or cfg.output.rstrip("/") + "_rejected"


def prepare(cfg) -> None:
    """Checks that need no Spark: inputs exist, the budget parses, outputs do not overlap inputs."""
    ix = cfg.index
    for name, uri in (("input", cfg.input), ("dataset", ix.dataset)):
        if uri and not exists(uri):
            raise ConfigError(f"{name} not found: {uri}")
    try:
        parse_bytes(ix.max_index_memory)
    except IndexPlanError as exc:
        raise ConfigError(f"index.max_index_memory: {exc}") from None
    out = fsspec_uri(cfg.output).rstrip("/")
    for name, uri in (("input", cfg.input), ("dataset", ix.dataset)):
        if uri and (fsspec_uri(uri).rstrip("/") == out or fsspec_uri(uri).startswith(out + "/")):
            raise ConfigError(f"output {cfg.output} overlaps {name} {uri}; write elsewhere")
    if ix.per_model and ix.clip_model:
        raise ConfigError("index.per_model=true builds every model's index; do not also give index.clip_model")


# --------------------------------------------------------------------------------------------- helpers
def _fs(uri: str):
    import fsspec

    return fsspec.core.url_to_fs(fsspec_uri(uri))


def _model_specs(embeddings_uri: str) -> dict:
    """The embeddings table's marker -> {clip_model: {model, pretrained, model_config}} (what search loads)."""
    try:
        summary = read_json(embeddings_uri.rstrip("/") + "/_summary.json")
    except Exception:  # noqa: BLE001  (no marker: search then needs the model named by hand)
        return {}
    return summary.get("model_specs") or {}


def _spec_from_name(clip_model: str | None) -> dict | None:
    """'MODEL/PRETRAINED' of a hub model -> its spec; a checkpoint's name (with @hash) says no path: None."""
    if not clip_model or "/" not in clip_model or "@" in clip_model:
        return None
    model, pretrained = clip_model.split("/", 1)
    return {"model": model, "pretrained": pretrained, "model_config": None}


PART_SCHEMA = pa.schema([
    pa.field("part", pa.int32(), False), pa.field("rows", pa.int64(), False), pa.field("file", pa.string(), True),
    pa.field("query", pa.int32(), False), pa.field("top_ids", pa.list_(pa.int64()), True),
    pa.field("top_scores", pa.list_(pa.float32()), True),
])
PART_DDL = "part int, rows long, file string, query int, top_ids array<long>, top_scores array<float>"


def add_partition(trained_uri: str, parts_uri: str, d: int, queries: np.ndarray, query_ids: np.ndarray):
    """-> the mapInArrow function: one partition's (sample_id, vector) batches -> its populated part in
    parts_uri (part_NNNNN.index) -> one row for the part, one per query (its exact top-k here, with the
    vectors that tie its k-th score: build.exact_topk)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import fsspec
        from pyspark import TaskContext

        pid = TaskContext.get().partitionId()
        with fsspec.open(trained_uri, "rb") as fh:
            index = B.from_bytes(fh.read())
        best_s = np.full((len(queries), K + TIES), -np.inf, np.float32)
        best_i = np.full((len(queries), K + TIES), B.NO_ID, np.int64)
        rows = 0
        for batch in batches:
            if not batch.num_rows:
                continue
            ids = batch.column(S.SAMPLE_ID).to_numpy(zero_copy_only=False).astype(np.int64)
            column = batch.column(VECTOR)
            keep = SC.indexable(ids, column, d)  # the scan's verdicts again: the same rows it counted
            if not keep.all():
                where = np.flatnonzero(keep)
                ids, column = ids[where], column.take(pa.array(where))
            if not len(ids):
                continue
            vectors = matrix(column, "float32", "add")
            index.add_with_ids(vectors, ids)
            rows += len(ids)
            if len(queries):
                here = B.exact_topk(queries, query_ids, vectors, ids, K, TIES)
                best_s, best_i = B.merge_topk([(best_s, best_i), here], K, TIES)
        file = None
        if rows:
            fs, folder = fsspec.core.url_to_fs(parts_uri)
            final = f"{folder}/part_{pid:05d}.index"
            tmp = temporary_path(final, new_token())
            try:
                with fs.open(tmp, "wb") as fh:
                    fh.write(B.to_bytes(index))
                commit(fs, [(tmp, final)])  # a finished part of another attempt is kept
            except BaseException:
                remove_quietly(fs, [tmp])
                raise
            file = final
        out = {"part": [pid], "rows": [rows], "file": [file], "query": [-1], "top_ids": [None], "top_scores": [None]}
        yield pa.RecordBatch.from_pydict(out, schema=PART_SCHEMA)
        if rows and len(queries):
            real = best_i != B.NO_ID  # the padding stays here: most queries have no ties
            yield pa.RecordBatch.from_pydict({
                "part": [pid] * len(queries), "rows": [rows] * len(queries), "file": [file] * len(queries),
                "query": list(range(len(queries))),
                "top_ids": [i[m].tolist() for i, m in zip(best_i, real, strict=True)],
                "top_scores": [s[m].tolist() for s, m in zip(best_s, real, strict=True)]}, schema=PART_SCHEMA)

    return run


def exact_lists(added, n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """The add tasks' rows (one list per part and query) -> each query's exact top-K with its ties
    (scores, ids: n_queries x (K + TIES), as build.merge_topk gives them): the lists merged per query in
    Spark, each query's best K + TIES entries (by score, then id) collected, so that the driver holds
    n_queries x (K + TIES) entries whatever the number of parts."""
    entries = (added.where(F.col("query") >= 0)
               .select("query", F.explode(F.arrays_zip("top_ids", "top_scores")).alias("e"))
               .select("query", F.col("e.top_ids").alias("id"), F.col("e.top_scores").alias("score")))
    best = Window.partitionBy("query").orderBy(F.desc("score"), F.asc("id"))
    merged = (entries.withColumn("rank", F.row_number().over(best)).where(F.col("rank") <= K + TIES)
              .groupBy("query").agg(F.sort_array(F.collect_list(F.struct("rank", "id", "score"))).alias("top")))
    exact_s = np.full((n_queries, K + TIES), -np.inf, np.float32)
    exact_i = np.full((n_queries, K + TIES), B.NO_ID, np.int64)
    for r in merged.toLocalIterator():
        s = np.asarray([e["score"] for e in r["top"]], np.float32)[None, :]
        i = np.asarray([e["id"] for e in r["top"]], np.int64)[None, :]
        s_q, i_q = B.merge_topk([(s, i)], K, TIES)  # the ties rule on the best K + TIES: what it keeps is among them
        exact_s[r["query"]], exact_i[r["query"]] = s_q[0], i_q[0]
    return exact_s, exact_i


def _local_copy(uri: str, folder: str) -> str:
    """A file URI -> a local path to it (itself when local; else copied into folder)."""
    fs, path = _fs(uri)
    if type(fs).__name__ == "LocalFileSystem":
        return path
    local = os.path.join(folder, os.path.basename(path))
    fs.get(path, local)
    return local


def _upload(local: str, uri: str) -> None:
    fs, path = _fs(uri)
    if type(fs).__name__ == "LocalFileSystem" and os.path.abspath(local) == os.path.abspath(path):
        return
    fs.makedirs(os.path.dirname(path), exist_ok=True)
    fs.put(local, path)


# --------------------------------------------------------------------------------------------- one index
def scan_model(rows, n_rows: int, build_uri: str, ix) -> dict:
    """One model's selected rows (sample_id, VECTOR) -> the scan pass (scan.scan_partition): verdicts as
    parquet at build_uri/scan, the training and query samples under build_uri/samples -> what it assumed.

    The samples need the dimension before the pass has counted them: the first row's is taken (one
    model's rows nearly always share it); build_one draws them again when that or the share kept was
    wrong, so the guess costs time, never correctness."""
    first = rows.select(F.size(VECTOR).alias("d")).where(F.col("d") > 0).limit(1).collect()
    d_guess = int(first[0]["d"]) if first else 0
    heldout, tuning = H.sizes(n_rows, ix.eval_queries, ix.tune_queries)
    try:
        want = _train_want(_plans(n_rows, d_guess, ix), heldout, n_rows)
    except IndexPlanError:
        want = 0  # the real plan, after the pass, gives the error
    samples = {"train": (ix.seed, SC.threshold(want, n_rows)),
               "queries": (ix.seed + 1, SC.threshold(heldout + tuning, n_rows))}
    (rows.mapInArrow(SC.scan_partition(f"{build_uri}/samples", d_guess, samples, S.SAMPLE_ID, VECTOR), SC.SCAN_DDL)
     .write.mode("overwrite").parquet(f"{build_uri}/scan"))
    return {"d": d_guess, "rows": n_rows, "samples": samples, "uri": f"{build_uri}/samples"}


def _plans(n: int, d: int, ix) -> list:
    return plan_candidates(n, d, ix.max_index_memory, ix.key, ix.max_train_vectors, ix.candidates)


def _train_want(plans: list, heldout: int, n: int) -> int:
    """-> the training sample to draw: the largest plan's, and as many more as the held-out queries it may
    hold (they are taken out of it: build_one)."""
    return min(n, max(p.train_size for p in plans) + heldout)


def _other_embeddings(other, ids: np.ndarray) -> list:
    """(sample_id, OTHER) rows, held-out ids -> their other embeddings in the order of ids (None where a row
    has none). A filter on the few ids (Spark tests sample_id first and copies only the rows that pass): the
    driver gets those rows only. It reads the other column once, in the JVM, not through Python."""
    if other is None or not len(ids):
        return [None] * len(ids)
    got = {r[S.SAMPLE_ID]: r[OTHER] for r in other.where(F.col(S.SAMPLE_ID).isin([int(i) for i in ids])).collect()}
    return [got.get(int(i)) for i in ids]


def _draw(rows, scanned: dict, name: str, want: int, d: int, n_valid: int, build_uri: str) -> tuple:
    """-> (ids, vectors) of a sample: from the scan pass when it holds the `want` smallest keys of the
    indexable rows at dimension d, else from a pass that draws it again with what is now known."""
    ids, x, held = SC.read_sample(f"{scanned['uri']}/{name}", want, d)
    seed, bound = scanned["samples"][name]
    if d == scanned["d"] and (held >= want or bound == SC.KEY_SPACE - 1):
        return ids, x
    log.info("index: the %s sample is drawn again (dimension %d, %d of %d rows held)", name, d, held, want)
    again = {name: (seed, SC.threshold(want, n_valid))}
    rows.mapInArrow(SC.scan_partition(f"{build_uri}/again", d, again, S.SAMPLE_ID, VECTOR), SC.SCAN_DDL).count()
    ids, x, _ = SC.read_sample(f"{build_uri}/again/{name}", want, d)
    return ids, x


def build_one(spark, cfg, rows, valid_ids, n_valid: int, d: int, out_uri: str, clip_model: str | None,
              spec: dict | None, meta_table, scanned: dict, other=None) -> dict:
    """One model's rows (sample_id, VECTOR), its indexable sample_ids (the scan's), its rows' other embedding
    (sample_id, OTHER; None: no cross-modal recall) -> the index folder at out_uri -> its index_infos dict."""
    ix = cfg.index
    seconds: dict[str, float] = {"scan": scanned["seconds"]}
    try:
        plans = _plans(n_valid, d, ix)
    except IndexPlanError as exc:  # the budget (or a forced key) is the user's to change: a config error
        raise ConfigError(str(exc)) from None
    fs, folder = _fs(out_uri)
    build = f"{folder}/_build"
    fs.makedirs(f"{build}/parts", exist_ok=True)
    build_uri = f"{_proto(out_uri)}{build}"

    t = time.time()
    n_heldout, n_tuning = H.sizes(n_valid, ix.eval_queries, ix.tune_queries)
    train_ids, train_x = _draw(rows, scanned, "train", _train_want(plans, n_heldout, n_valid), d, n_valid,
                               build_uri)
    sample_ids, sample_x = _draw(rows, scanned, "queries", n_heldout + n_tuning, d, n_valid, build_uri)
    heldout, tuning = H.split(sample_ids, sample_x, n_heldout)
    fresh = ~np.isin(train_ids, heldout.ids)  # nothing the index is made of has seen a held-out query
    train_ids, train_x = train_ids[fresh], train_x[fresh]
    cross = H.cross_modal(heldout.ids, _other_embeddings(other, heldout.ids), d)
    seconds["sample"] = time.time() - t
    t = time.time()
    pick, choice = choose(plans, train_ids, train_x, tuning.vectors, tuning.ids, ix.target_recall, ix.max_query_ms,
                          ix.trial_vectors, ix.seed, ix.trial_seconds)
    plan = plans[pick]
    train_x = train_x[: plan.train_size]  # the sample is in key order: a prefix is a smaller random sample
    if choice["measured"]:
        seconds["choose"] = time.time() - t
    log.info("index: %s vectors x %d -> %s (search holds %s of %s; training sample %d, %s)", n_valid, d, plan.key,
             format_bytes(plan.memory_bytes), format_bytes(plan.budget_bytes), plan.train_size,
             format_bytes(plan.train_memory_bytes))
    t = time.time()
    trained = B.to_bytes(B.train(plan.key, train_x if len(train_x) else tuning.vectors[:1], ix.seed))
    del train_x
    seconds["train"] = time.time() - t
    trained_uri = f"{_proto(out_uri)}{build}/trained.index"
    with fs.open(f"{build}/trained.index", "wb") as fh:
        fh.write(trained)

    t = time.time()
    # one list of queries for the add tasks' exact top-k: tuning, then held-out, then cross-modal
    queries = np.concatenate([tuning.vectors, heldout.vectors, cross.vectors]).astype(np.float32)
    query_ids = np.concatenate([tuning.ids, heldout.ids, cross.ids]).astype(np.int64)
    partitions = ix.shards or ix.partitions or max(1, math.ceil(n_valid / ix.rows_per_task))
    added_uri = f"{_proto(out_uri)}{build}/added"
    # written, not collected: the add tasks run once (they write the parts), and the driver reads back one
    # row per part and one merged list per query, never partitions x queries rows
    (rows.select(S.SAMPLE_ID, VECTOR).repartition(partitions, S.SAMPLE_ID)
     .mapInArrow(add_partition(trained_uri, f"{_proto(out_uri)}{build}/parts", d, queries, query_ids), PART_DDL)
     .write.mode("overwrite").parquet(added_uri))
    seconds["add"] = time.time() - t
    added_rows = spark.read.parquet(added_uri)
    part_rows = {r["part"]: (r["rows"], r["file"])
                 for r in added_rows.where(F.col("query") == -1).select("part", "rows", "file").collect()}
    added = sum(n for n, _ in part_rows.values())
    if added != n_valid:
        raise IndexBuildError(f"row accounting failed: {n_valid} indexable rows but the add tasks took {added}")
    exact_s, exact_i = exact_lists(added_rows, len(queries))
    cut = np.cumsum([len(tuning), len(heldout)])
    tuning = H.with_exact(tuning, exact_s[: cut[0]], exact_i[: cut[0]])
    heldout = H.with_exact(heldout, exact_s[cut[0]: cut[1]], exact_i[cut[0]: cut[1]])
    cross = H.with_exact(cross, exact_s[cut[1]:], exact_i[cut[1]:])

    t = time.time()
    files = [f for _, (n, f) in sorted(part_rows.items()) if n]
    for f in files:
        if not fs.exists(f):
            raise IndexBuildError(f"part {f} is missing after the add tasks")
    ondisk = ix.ondisk == "true" or (ix.ondisk == "auto" and plan.memory_bytes > ONDISK_AUTO_BYTES)
    layout: dict = {}
    with tempfile.TemporaryDirectory(prefix="laion-spark-index-") as tmp:
        local_parts = [_local_copy(f"{_proto(out_uri)}{f}", tmp) for f in files]
        if ix.shards:
            # read before the renames: a local part's path is the part itself
            search_index = _shards_index(local_parts)
            shard_files = []
            fs.makedirs(f"{folder}/shards", exist_ok=True)
            for n, f in enumerate(files):
                final = f"{folder}/shards/knn_{n:05d}.index"
                if fs.exists(final):
                    fs.rm(final)
                fs.mv(f, final)
                shard_files.append(final)
            layout = {"shards": [os.path.basename(p) for p in shard_files]}
            total = int(search_index.ntotal)
        else:
            local_out = os.path.join(tmp, "knn.index")
            total = B.merge_parts(trained, local_parts, local_out, ondisk)
            _upload(local_out, f"{_proto(out_uri)}{folder}/knn.index")
            if ondisk:
                _upload(os.path.join(tmp, "knn.ivfdata"), f"{_proto(out_uri)}{folder}/knn.ivfdata")
            layout = {"index_file": "knn.index", "ivfdata": "knn.ivfdata" if ondisk else None}
            search_index = B.read_index(local_out, mmap=False)
        seconds["merge"] = time.time() - t
        if total != n_valid:
            raise IndexBuildError(f"row accounting failed: {n_valid} indexable rows but the index holds {total}")
        t = time.time()
        tuned = T.tune(search_index, tuning.vectors, tuning.ids, (tuning.exact_scores, tuning.exact_ids),
                       ix.target_recall, ix.max_query_ms, plan.hnsw_quantizer)
        seconds["tune"] = time.time() - t
        t = time.time()
        measured = H.measure(search_index, heldout, cross, ix.load_clients)
        seconds["heldout"] = time.time() - t
        del search_index
    size = sum(fs.size(f"{folder}/{name}") for name in _index_files(fs, folder))

    t = time.time()
    meta_rows = valid_ids
    columns = metadata_columns(meta_table)
    if meta_table is not None and columns:
        meta_rows = meta_rows.join(meta_table.select(S.SAMPLE_ID, *columns).dropDuplicates([S.SAMPLE_ID]),
                                   S.SAMPLE_ID, "left")
    meta_parts = max(1, math.ceil(n_valid / 1_000_000))
    # small row groups: a search reads the row group that holds each result (search/lookup.py), so a group
    # of 4 MiB, not Parquet's 128 MiB, bounds what one result costs
    (meta_rows.repartitionByRange(meta_parts, S.SAMPLE_ID).sortWithinPartitions(S.SAMPLE_ID)
     .write.mode("overwrite").option("parquet.block.size", METADATA_ROW_GROUP_BYTES)
     .parquet(f"{_proto(out_uri)}{folder}/metadata"))
    seconds["metadata"] = time.time() - t

    import faiss
    import pyspark

    figures = _figures(measured, tuned, ix, len(heldout), len(tuning), len(cross))
    infos = {
        "index_key": plan.key, "index_param": tuned.index_param, "nb_vectors": total, "dimension": d,
        "field": ix.field, "clip_model": clip_model, "model": spec,
        "size_bytes": size, "memory_to_search_bytes": plan.memory_bytes if not ix.shards else size,
        "max_index_memory_bytes": plan.budget_bytes, **figures, "tuning": tuned.tried,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "plan": plan.as_dict(), "choice": choice, "layout": layout, "metadata_columns": [S.SAMPLE_ID, *columns],
        "versions": {"laion_spark": __version__, "faiss": faiss.__version__, "spark": pyspark.__version__,
                     "python": platform.python_version()},
    }
    with fs.open(f"{folder}/{INFOS}", "w") as fh:
        json.dump(infos, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
    return infos


def _figures(measured: dict, tuned, ix, n_heldout: int, n_tuning: int, n_cross: int) -> dict:
    """heldout.measure's result and the tuner's -> index_infos.json's figures: recall@1 / @10 with their
    intervals on the held-out queries (recall_at_1, recall_at_10 keep their names: readers rely on them),
    the tuning queries' own figures beside them (named so: they reach the target by construction), the
    cross-modal recall, latency of one client and under load. Warns when the held-out recall falls short
    of the target the tuning queries reached."""
    held = measured["heldout"] or {}
    latency = measured["latency"] or {"latency_ms_p50": tuned.latency_ms_p50, "latency_ms_p99": tuned.latency_ms_p99,
                                      "queries_per_s": tuned.queries_per_s}
    r10 = held.get("recall_at_10")
    out = {
        "recall_at_1": held.get("recall_at_1"), "recall_at_10": r10,
        "recall_at_1_ci95": held.get("recall_at_1_ci95"), "recall_at_10_ci95": held.get("recall_at_10_ci95"),
        "recall_ci": {"method": CI_METHOD, "level": 0.95, "over": "queries"},
        "recall_definition": RECALL_DEFINITION, "eval_queries": n_heldout, "tune_queries": n_tuning,
        "ties_truncated": held.get("ties_truncated", 0),
        "target_recall": ix.target_recall,
        "reached_target": tuned.reached_target if r10 is None else r10 >= ix.target_recall,
        "tuning_recall_at_1": tuned.recall_at_1, "tuning_recall_at_10": tuned.recall_at_10,
        "tuning_reached_target": tuned.reached_target,
        **latency, "latency_under_load": measured["load"],
    }
    query_field, direction = CROSS_MODAL[ix.field]
    cross = measured["cross_modal"]
    out["cross_modal"] = None if cross is None else {"direction": direction, "query_field": query_field,
                                                     "heldout_rows": n_heldout, **cross}
    if n_heldout and not n_cross:
        log.info("index: no held-out row has a %s embedding: no %s recall", query_field, direction)
    hi = (held.get("recall_at_10_ci95") or [None, None])[1]
    if tuned.reached_target and hi is not None and hi < ix.target_recall:
        log.warning("index: recall@10 on %d held-out queries is %.3f (95%% interval %s), below the target %.3f "
                    "that %d tuning queries reached (%.3f); more index.tune_queries choose a setting that holds",
                    n_heldout, r10, held["recall_at_10_ci95"], ix.target_recall, n_tuning, tuned.recall_at_10)
    return out


def _proto(uri: str) -> str:
    """The protocol prefix fsspec needs to reach a path of uri's filesystem again ('' for local paths)."""
    u = fsspec_uri(uri)
    return u.split("://", 1)[0] + "://" if "://" in u and not u.startswith("file://") else ""


def _index_files(fs, folder: str) -> list[str]:
    names = ["knn.index", "knn.ivfdata"]
    out = [n for n in names if fs.exists(f"{folder}/{n}")]
    if fs.exists(f"{folder}/shards"):
        out += [f"shards/{p.rsplit('/', 1)[-1]}" for p in fs.ls(f"{folder}/shards", detail=False)]
    return out


def _shards_index(local_parts: list[str]):
    """Local shard files -> one searchable ShardSet over them, memory-mapped: the page cache holds what a
    search touches, not the driver's heap every shard (faiss maps IVF lists; other kinds are read)."""
    return B.ShardSet([B.read_index(p, mmap=True) for p in local_parts])


# --------------------------------------------------------------------------------------------- the job
def _tombstones(uri: str) -> np.ndarray:
    """An index folder -> the ids a takedown tombstoned there (index folders below it too: one per model)."""
    fs, folder = _fs(uri)
    found = [np.zeros(0, np.int64)]
    for path in fs.glob(folder.rstrip("/") + "/tombstones.npy") + fs.glob(folder.rstrip("/") + "/*/tombstones.npy"):
        with fs.open(path, "rb") as fh:
            found.append(np.load(fh))
    return np.unique(np.concatenate(found)).astype(np.int64)


def run(spark, cfg) -> dict:
    from laion_spark.filter.job import check_duplicates, read_embeddings

    ix = cfg.index
    embeddings = read_embeddings(spark, cfg.input)
    rows_in = check_duplicates(embeddings, cfg.input)
    dataset = None
    if ix.dataset:
        dataset = normalise_names(spark.read.parquet(ix.dataset))
        if S.SAMPLE_ID not in dataset.columns:
            raise ConfigError(f"dataset {ix.dataset} has no sample_id (or SAMPLE_ID) column")
    # the ids a takedown tombstoned in the folder this build replaces: never indexed again, and still
    # tombstoned in the new folder (search and serve keep refusing them)
    tombstones = _tombstones(cfg.output)
    if len(tombstones):
        embeddings = embeddings.join(spark.createDataFrame([(int(i),) for i in tombstones], f"{S.SAMPLE_ID} long"),
                                     S.SAMPLE_ID, "left_anti")
    chosen = selected(embeddings, dataset, None)
    per_model = {r[S.CLIP_MODEL]: r["n"] for r in chosen.groupBy(S.CLIP_MODEL).agg(F.count(F.lit(1)).alias("n"))
                 .collect()}
    if ix.clip_model:
        if ix.clip_model not in per_model:
            raise ConfigError(f"index.clip_model={ix.clip_model!r} is not in {cfg.input}; its models: "
                              f"{sorted(map(str, per_model))}")
        models = [ix.clip_model]
    elif len(per_model) > 1 and not ix.per_model:
        shown = ", ".join(f"{m} ({n} rows)" for m, n in sorted(per_model.items(), key=lambda kv: str(kv[0])))
        raise ConfigError(f"{cfg.input} holds {len(per_model)} embedding spaces: {shown}; choose one with "
                          "index.clip_model=..., or index.per_model=true for one index each")
    else:
        models = sorted(per_model, key=lambda m: (m is None, m or ""))
    selected_rows = sum(per_model.values())
    if not selected_rows:
        raise ConfigError(f"no rows to index: {cfg.input} has {rows_in} rows"
                          + (f", none of them in dataset {ix.dataset}" if ix.dataset else ""))
    specs = _model_specs(cfg.input)
    # what a result shows: the dataset's columns, and the similarity from embeddings where it has none
    meta_table = dataset if dataset is not None else embeddings.select(S.SAMPLE_ID)
    if S.SIMILARITY not in meta_table.columns:
        meta_table = meta_table.join(embeddings.select(S.SAMPLE_ID, S.SIMILARITY), S.SAMPLE_ID, "left")
    fs, out_folder = _fs(cfg.output)
    if cfg.mode == "overwrite" and fs.exists(out_folder):
        fs.rm(out_folder, recursive=True)
    fs.makedirs(out_folder, exist_ok=True)
    if len(tombstones):
        with fs.open(f"{out_folder}/tombstones.npy", "wb") as fh:
            np.save(fh, tombstones)

    vec_col, other_col = ((S.IMAGE_EMBEDDING, S.TEXT_EMBEDDING) if ix.field == "image"
                          else (S.TEXT_EMBEDDING, S.IMAGE_EMBEDDING))
    summary_models: dict = {}
    rejected_frames = []
    reasons_total: dict[str, int] = {}
    indexed = 0
    builds = []
    for model in models:
        sub = cfg.output if len(models) == 1 and not ix.per_model else (
            cfg.output.rstrip("/") + "/" + model_folder_name(model))
        sub_fs, sub_folder = _fs(sub)
        build = f"{sub_folder}/_build"
        if sub_fs.exists(build):
            sub_fs.rm(build, recursive=True)
        sub_fs.makedirs(build, exist_ok=True)
        builds.append((sub_fs, build))
        rows_m = (selected(embeddings, dataset, None).filter(F.col(S.CLIP_MODEL).eqNullSafe(F.lit(model)))
                  .select(S.SAMPLE_ID, F.col(vec_col).alias(VECTOR)))
        t = time.time()
        scanned = scan_model(rows_m, per_model[model], f"{_proto(sub)}{build}", ix)
        scanned["seconds"] = time.time() - t
        scan = spark.read.parquet(f"{_proto(sub)}{build}/scan")
        sizes = {r["size"]: r["n"] for r in scan.groupBy("size").agg(F.count(F.lit(1)).alias("n")).collect()
                 if r["size"] is not None and r["size"] > 0}
        if not sizes:
            raise ConfigError(f"{model}: no row of {cfg.input} has a {ix.field} embedding to index")
        d = max(sizes, key=lambda k: (sizes[k], -k))  # the dimension most rows have; the others are left out
        rows_c = scan.select(S.SAMPLE_ID, F.when(F.col("size").isNull(), F.lit("no_vector"))
                             .when(F.col("size") != d, F.lit("wrong_dimension"))
                             .otherwise(F.col("flaw")).alias(REASON))
        counts = {r[REASON]: r["n"] for r in rows_c.groupBy(REASON).agg(F.count(F.lit(1)).alias("n")).collect()}
        n_valid = counts.pop(None, 0)
        for reason, n in counts.items():
            reasons_total[reason] = reasons_total.get(reason, 0) + n
        rejected_frames.append(rows_c.filter(F.col(REASON).isNotNull())
                               .select(S.SAMPLE_ID, F.lit(model).cast("string").alias(S.CLIP_MODEL), REASON))
        if not n_valid:
            raise ConfigError(f"{model}: none of its {sum(counts.values())} rows can be indexed ({counts})")
        spec = specs.get(model) or _spec_from_name(model)
        infos = build_one(spark, cfg, rows_m, rows_c.filter(F.col(REASON).isNull()).select(S.SAMPLE_ID), n_valid, d,
                          sub, model, spec, meta_table, scanned,
                          embeddings.select(S.SAMPLE_ID, F.col(other_col).alias(OTHER)))
        infos_summary = {k: infos[k] for k in ("index_key", "index_param", "nb_vectors", "dimension", "size_bytes",
                                               "recall_at_1", "recall_at_10", "recall_at_10_ci95", "eval_queries",
                                               "cross_modal", "latency_ms_p50", "latency_ms_p99", "queries_per_s",
                                               "latency_under_load", "reached_target", "seconds")}
        summary_models[str(model)] = {"folder": sub, "rows": sum(counts.values()) + n_valid, "rejected": counts,
                                      **infos_summary}
        indexed += infos["nb_vectors"]

    rejected = rejected_frames[0]
    for frame in rejected_frames[1:]:
        rejected = rejected.unionByName(frame)
    rejected.write.mode("overwrite").parquet(rejected_uri(cfg))
    for build_fs, build in builds:  # the scan tables the rejected rows were read from are no longer needed
        build_fs.rm(build, recursive=True)
    rejected_rows = sum(reasons_total.values())
    not_selected = rows_in - selected_rows + sum(n for m, n in per_model.items() if m not in models)
    if indexed + rejected_rows + not_selected != rows_in:
        raise IndexBuildError(f"row accounting failed: {rows_in} embeddings rows but {indexed} indexed + "
                          f"{rejected_rows} rejected + {not_selected} not selected")
    summary = {
        "rows_in": rows_in, "indexed": indexed, "rejected": rejected_rows,
        "reasons": {r: reasons_total.get(r, 0) for r in REASONS if reasons_total.get(r)},
        "not_selected": not_selected, "dataset": ix.dataset or None, "field": ix.field,
        "models": summary_models, "rejected_output": rejected_uri(cfg),
    }
    if ix.dataset:
        summary["dataset_rows_without_embedding"] = (
            dataset.select(S.SAMPLE_ID).distinct().join(embeddings.select(S.SAMPLE_ID), S.SAMPLE_ID, "left_anti")
            .count())
    return summary


def format_report(summary: dict) -> str:
    lines = [f"index: {summary['rows_in']} embeddings rows -> {summary['indexed']} indexed, "
             f"{summary['rejected']} rejected {summary['reasons'] or ''}, {summary['not_selected']} not selected"]
    for model, m in summary["models"].items():
        lines.append(f"  {model}: {m['index_key']} ({m['index_param']}), {m['nb_vectors']} vectors x {m['dimension']}, "
                     f"{format_bytes(m['size_bytes'])}; on {m['eval_queries']} held-out queries recall@1 "
                     f"{m['recall_at_1']}, recall@10 {m['recall_at_10']} (95% {m['recall_at_10_ci95']}); "
                     f"p50 {m['latency_ms_p50']} ms, p99 {m['latency_ms_p99']} ms, {m['queries_per_s']} queries/s")
        cross, load = m.get("cross_modal"), m.get("latency_under_load")
        if cross:
            lines.append(f"    {cross['direction']} on {cross['queries']} {cross['query_field']} queries: recall@10 "
                         f"{cross['recall_at_10']} (95% {cross['recall_at_10_ci95']})")
        if load:
            lines.append(f"    {load['clients']} clients at once: p50 {load['latency_ms_p50']} ms, "
                         f"p99 {load['latency_ms_p99']} ms, {load['queries_per_s']} queries/s")
        lines.append(f"    at {m['folder']}; seconds {m['seconds']}")
    return "\n".join(lines)

