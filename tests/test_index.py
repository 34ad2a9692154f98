"""index: embeddings -> faiss index. Recall is recomputed here on queries the test draws itself, with numpy
brute force over the vectors the test wrote (not read from the index), and must fall within the 95%
interval the job claims; the ids and metadata are compared with the rows the test wrote, and bad rows are
built on purpose and must be counted, never crash a worker."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from laion_spark import cli
from laion_spark import schemas as S
from laion_spark.config import ConfigError
from laion_spark.index.build import ShardSet
from laion_spark.index.choose import TIE
from laion_spark.index.plan import IndexPlanError, nlist_for, parse_bytes, plan_index
from laion_spark.index.synthetic import clustered_vectors

MODEL = "ViT-T/test"


def write_embeddings(spark, path: Path, ids, vectors, model=MODEL, extra=()) -> str:
    rows = [(int(i), [float(x) for x in v], [float(x) for x in v[::-1]], 0.3, model, None)
            for i, v in zip(ids, vectors, strict=True)]
    rows += list(extra)
    spark.createDataFrame(rows, S.EMBEDDINGS).write.mode("overwrite").parquet(str(path))
    return str(path)


def ids_for(n: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = rng.choice(2**62, size=n, replace=False).astype(np.int64)
    return ids * np.where(np.arange(n) % 2, -1, 1)  # negative ids too, as xxhash64 gives


def build(spark, *args) -> dict:
    cfg, module = cli.prepare("index", [], list(args))
    return cli.run("index", cfg, module, spark)


def exact_recall(index_path, ids, vectors, param: str, queries: int = 300, k: int = 10, seed: int = 123) -> float:
    """Independent recall on the test's own queries: numpy scores against every vector the test wrote (the
    query's own row left out), the index (a file, or a ShardSet of shards) searched here; a found id counts
    when its true score reaches the k-th exact score (less 1e-5): a tied duplicate is as near as its twin."""
    qi = np.random.default_rng(seed).choice(len(ids), queries, replace=False)
    index = index_path if isinstance(index_path, ShardSet) else faiss.read_index(str(index_path))
    for part in index.shards if isinstance(index, ShardSet) else [index]:
        faiss.ParameterSpace().set_index_parameters(part, param)
    _, got = index.search(vectors[qi], k + 1)
    row_of = {int(i): r for r, i in enumerate(ids)}
    total = 0.0
    for row, q in enumerate(qi):
        scores = vectors @ vectors[q]
        scores[q] = -np.inf
        kth = np.partition(scores, -k)[-k]
        have = [row_of[int(i)] for i in got[row] if i != ids[q] and i != -1][:k]
        total += min(k, int(np.sum(scores[have] >= kth - 1e-5))) / k
    return total / len(qi)


def ids_in(index) -> np.ndarray:
    """An IVF index -> every id in its inverted lists."""
    ivf = faiss.extract_index_ivf(index)
    inv = ivf.invlists
    return np.concatenate([faiss.rev_swig_ptr(inv.get_ids(lst), inv.list_size(lst)).copy()
                           for lst in range(ivf.nlist) if inv.list_size(lst)])


# ------------------------------------------------------------------------------------------------ plan
def test_memory_sizes_are_powers_of_two():
    assert parse_bytes("4G") == 4 * 2**30
    assert parse_bytes("256M") == 256 * 2**20
    assert parse_bytes("1.5K") == 1536
    assert parse_bytes("800GB") == 800 * 2**30
    assert parse_bytes(1000) == 1000
    for bad in ("", "4X", "-1G", "G", 0):
        with pytest.raises(IndexPlanError):
            parse_bytes(bad)


def test_plans_fit_their_budget_and_quantise_when_they_must():
    small = plan_index(500, 64, "4G")
    assert small.exact and small.key == "IVF1,Flat"
    raw = 100_000 * 64 * 4
    roomy = plan_index(100_000, 64, raw * 2)
    assert roomy.encoding == "Flat" and roomy.memory_bytes <= raw * 2
    quarter = plan_index(100_000, 64, raw // 4)
    assert quarter.memory_bytes <= raw // 4 and quarter.code_bytes < 64 * 4 / 4
    for n, d, budget in ((1_000_000, 512, "256M"), (1_000_000, 512, "2G"), (5_850_000_000, 768, "800G")):
        plan = plan_index(n, d, budget)
        assert plan.memory_bytes <= parse_bytes(budget)
        assert plan.train_size >= 39 * plan.nlist and plan.train_size <= n
    # 1M x 512 in 256M: the 256-byte code fits with a quarter of the lists, not with all of them; it is taken
    # over the 128-byte code that fits with all of them
    tight = plan_index(1_000_000, 512, "256M")
    assert tight.code_bytes == 256 and tight.nlist == nlist_for(1_000_000) // 4
    assert any(c.key == f"IVF{nlist_for(1_000_000)},PQ256x8" and not c.fits for c in tight.candidates)
    assert any(c.key.endswith(f"IVF{nlist_for(1_000_000)},PQ128x8") and c.fits for c in tight.candidates)
    laion = plan_index(5_850_000_000, 768, "800G")
    assert "PQ" in laion.encoding and laion.hnsw_quantizer  # LAION ran OPQ/IVF-HNSW/PQ128 at 800G


def test_a_budget_too_small_names_the_smallest_that_fits():
    with pytest.raises(IndexPlanError, match=r"set index.max_index_memory=(\S+) or more") as err:
        plan_index(100_000, 64, "1M")
    needed = err.value.args[0].split("set index.max_index_memory=")[1].split()[0]
    plan = plan_index(100_000, 64, needed)  # the budget it names is enough
    assert plan.memory_bytes <= parse_bytes(needed)


# ------------------------------------------------------------------------------------------------ build
@pytest.fixture(scope="module")
def clustered(spark, tmp_path_factory):
    n, d = 100_000, 64
    vectors, _ = clustered_vectors(n, d, clusters=400, seed=3)
    ids = ids_for(n)
    path = write_embeddings(spark, tmp_path_factory.mktemp("index_in") / "embeddings", ids, vectors)
    return path, ids, vectors


@pytest.mark.slow
def test_quantised_index_reaches_the_recall_it_claims(spark, clustered, tmp_path):
    path, ids, vectors = clustered
    budget = vectors.nbytes // 4  # a quarter of the raw vectors: the index must quantise
    out = tmp_path / "index"
    summary = build(spark, f"input={path}", f"output={out}", f"index.max_index_memory={budget}",
                    "index.max_query_ms=1000", "index.partitions=8", "index.eval_queries=500")
    infos = json.loads((out / "index_infos.json").read_text())
    assert infos["nb_vectors"] == len(ids) == summary["indexed"]
    assert infos["memory_to_search_bytes"] <= budget and infos["size_bytes"] <= budget * 1.05
    assert "Flat" not in infos["index_key"].split(",")[-1]
    # two plans fit; both were measured on a sample, and the one built is the best measured (or within the tie)
    choice = infos["choice"]
    assert choice["measured"] and len(choice["tried"]) == 2 and choice["chosen"] == infos["index_key"]
    taken = next(r for r in choice["tried"] if r["index_key"] == infos["index_key"])
    assert taken["recall_at_10"] >= max(r["recall_at_10"] for r in choice["tried"]) - TIE
    recall = exact_recall(out / "knn.index", ids, vectors, infos["index_param"])
    assert recall >= 0.95
    lo, hi = infos["recall_at_10_ci95"]  # what it claims (on 500 held-out queries) is what it does on the test's
    assert infos["eval_queries"] == 500 and lo <= recall <= hi
    index = faiss.read_index(str(out / "knn.index"))
    assert index.ntotal == len(ids)
    # faiss ids are the sample_ids: every one of them is in the index's lists, and no other
    assert np.array_equal(np.sort(ids_in(index)), np.sort(ids))
    meta = pq.read_table(out / "metadata")
    assert meta.column("sample_id").to_pylist() == sorted(ids.tolist())


@pytest.mark.slow
def test_eight_partitions_build_the_same_index_as_one(spark, clustered, tmp_path):
    path, ids, vectors = clustered
    budget = vectors.nbytes // 4
    common = [f"input={path}", f"index.max_index_memory={budget}", "index.max_query_ms=1000", "index.eval_queries=200"]
    build(spark, *common, f"output={tmp_path / 'one'}", "index.partitions=1")
    build(spark, *common, f"output={tmp_path / 'eight'}", "index.partitions=8")
    build(spark, *common, f"output={tmp_path / 'shards'}", "index.shards=4")
    one = faiss.read_index(str(tmp_path / "one" / "knn.index"))
    eight = faiss.read_index(str(tmp_path / "eight" / "knn.index"))
    shard_files = sorted((tmp_path / "shards" / "shards").glob("knn_*.index"))
    assert [p.name for p in shard_files] == [f"knn_{i:05d}.index" for i in range(4)]
    held = [faiss.read_index(str(p)) for p in shard_files]
    assert one.ntotal == eight.ntotal == sum(h.ntotal for h in held) == len(ids)
    want = np.sort(ids)
    assert np.array_equal(np.sort(ids_in(one)), want) and np.array_equal(np.sort(ids_in(eight)), want)
    assert np.array_equal(np.sort(np.concatenate([ids_in(h) for h in held])), want)
    param = "nprobe=64"
    for ix in (one, eight, *held):
        faiss.ParameterSpace().set_index_parameters(ix, param)
    q = vectors[np.random.default_rng(5).choice(len(ids), 300, replace=False)]
    _, a = one.search(q, 10)
    _, b = eight.search(q, 10)
    # the shards' lists merged here by score, as a reader of the layout would; and through ShardSet
    per_shard = [h.search(q, 10) for h in held]
    merged = [[i for _, i in sorted(((float(s[r, j]), int(ids_[r, j])) for s, ids_ in per_shard for j in range(10)
                                     if ids_[r, j] != -1), reverse=True)[:10]] for r in range(len(q))]
    _, c = ShardSet(held).search(q, 10)
    for other in (b, merged, c):
        overlap = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, other, strict=True)])
        assert overlap >= 0.99
    shard_infos = json.loads((tmp_path / "shards" / "index_infos.json").read_text())
    recall = exact_recall(ShardSet(held), ids, vectors, shard_infos["index_param"], seed=9)  # the shards' merge
    lo, hi = shard_infos["recall_at_10_ci95"]
    assert recall >= 0.9 and lo <= recall <= hi


def test_bad_rows_are_counted_and_left_out(spark, tmp_path):
    d = 16
    vectors, _ = clustered_vectors(300, d, clusters=5, seed=1)
    ids = ids_for(300, seed=2)
    nan = [float("nan")] + [0.1] * (d - 1)
    bad = [
        (11, None, None, None, MODEL, "image_decode_error: x"),  # no vector (embed failed)
        (12, [0.1] * (d + 1), [0.1] * (d + 1), 0.1, MODEL, None),  # wrong dimension
        (13, nan, nan, 0.1, MODEL, None),
        (14, [float("inf")] + [0.0] * (d - 1), [0.0] * d, 0.1, MODEL, None),
        (15, [0.0] * d, [0.0] * d, 0.0, MODEL, None),  # zero vector
        (-1, [1.0] + [0.0] * (d - 1), [1.0] + [0.0] * (d - 1), 1.0, MODEL, None),  # faiss's "no result" id
    ]
    path = write_embeddings(spark, tmp_path / "emb", ids, vectors, extra=bad)
    out = tmp_path / "index"
    summary = build(spark, f"input={path}", f"output={out}")
    assert summary["indexed"] == 300
    assert summary["reasons"] == {"no_vector": 1, "wrong_dimension": 1, "not_finite": 2, "zero_vector": 1,
                                  "reserved_id": 1}
    assert summary["rows_in"] == summary["indexed"] + summary["rejected"] + summary["not_selected"]
    rejected = {r["sample_id"]: r["reason"] for r in spark.read.parquet(str(out) + "_rejected").collect()}
    assert rejected == {11: "no_vector", 12: "wrong_dimension", 13: "not_finite", 14: "not_finite",
                        15: "zero_vector", -1: "reserved_id"}
    infos = json.loads((out / "index_infos.json").read_text())
    assert infos["index_key"] == "IVF1,Flat"
    # the claim against the test's own queries, searched here: a flat scan finds every neighbour
    recall = exact_recall(out / "knn.index", ids, vectors, infos["index_param"], queries=100, seed=8)
    lo, hi = infos["recall_at_10_ci95"]
    assert recall == 1.0 and lo <= recall <= hi and infos["eval_queries"] == 150  # half of 300 rows, at most


def test_dataset_selects_the_rows_and_supplies_the_metadata(spark, tmp_path):
    d = 8
    vectors, _ = clustered_vectors(200, d, clusters=4, seed=4)
    ids = ids_for(200, seed=9)
    path = write_embeddings(spark, tmp_path / "emb", ids, vectors)
    keep = sorted(int(i) for i in ids[::3])
    # LAION's release spelling: SAMPLE_ID, URL, TEXT, WIDTH, HEIGHT
    release = [(i, f"https://example.com/{i}.jpg", f"caption {i}", 640, 480, 0.05) for i in keep]
    release.append((123456789, "https://example.com/none.jpg", "no embedding", 1, 1, 0.0))
    spark.createDataFrame(release, "SAMPLE_ID long, URL string, TEXT string, WIDTH int, HEIGHT int, punsafe double"
                          ).write.parquet(str(tmp_path / "release"))
    out = tmp_path / "index"
    summary = build(spark, f"input={path}", f"dataset={tmp_path / 'release'}", f"output={out}")
    assert summary["indexed"] == len(keep) and summary["not_selected"] == 200 - len(keep)
    assert summary["dataset_rows_without_embedding"] == 1
    meta = pq.read_table(out / "metadata").to_pylist()
    assert [m["sample_id"] for m in meta] == keep
    assert meta[0]["url"] == f"https://example.com/{keep[0]}.jpg" and meta[0]["original_width"] == 640
    assert meta[0]["punsafe"] == pytest.approx(0.05) and meta[0]["similarity"] == pytest.approx(0.3)


def test_several_models_need_a_choice(spark, tmp_path):
    d = 8
    a, _ = clustered_vectors(100, d, clusters=3, seed=5)
    ids = ids_for(200, seed=11)
    other = [(int(i), [float(x) for x in v], [float(x) for x in v], 0.2, "ViT-Other/x", None)
             for i, v in zip(ids[100:], a, strict=True)]
    path = write_embeddings(spark, tmp_path / "emb", ids[:100], a, extra=other)
    with pytest.raises(ConfigError, match="2 embedding spaces"):
        build(spark, f"input={path}", f"output={tmp_path / 'x'}")
    summary = build(spark, f"input={path}", f"output={tmp_path / 'per'}", "index.per_model=true")
    folders = sorted(p.name for p in (tmp_path / "per").iterdir() if p.is_dir())
    assert folders == ["ViT-Other_x", "ViT-T_test"]
    assert summary["indexed"] == 200
    chosen = build(spark, f"input={path}", f"output={tmp_path / 'one'}", "index.clip_model=ViT-Other/x")
    assert chosen["indexed"] == 100 and chosen["not_selected"] == 100
    infos = json.loads((tmp_path / "one" / "index_infos.json").read_text())
    assert infos["model"] == {"model": "ViT-Other", "pretrained": "x", "model_config": None}


def test_empty_table_is_a_clear_error(spark, tmp_path):
    path = write_embeddings(spark, tmp_path / "emb", [], [])
    with pytest.raises(ConfigError, match="no rows to index"):
        build(spark, f"input={path}", f"output={tmp_path / 'x'}")


def test_a_budget_too_small_for_the_rows_is_a_one_line_error(spark, tmp_path, capsys):
    vectors, _ = clustered_vectors(300, 16, clusters=5, seed=1)
    path = write_embeddings(spark, tmp_path / "emb", ids_for(300), vectors)
    rc = cli.main(["index", f"input={path}", f"output={tmp_path / 'x'}", "index.max_index_memory=1K"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "laion-spark: error: no index of 300 vectors x 16 dimensions fits" in err and "Traceback" not in err
    needed = err.split("set index.max_index_memory=")[1].split()[0]
    assert cli.main(["index", f"input={path}", f"output={tmp_path / 'y'}", f"index.max_index_memory={needed}"]) == 0


def test_the_training_sample_is_random_and_the_same_for_any_partitioning(spark, tmp_path):
    from pyspark.sql import functions as F

    from laion_spark.index import scan as SC

    n, d, want = 20_000, 4, 1_000
    vectors = np.random.default_rng(3).standard_normal((n, d)).astype(np.float32)
    ids = np.arange(n, dtype=np.int64)  # ids in input order: "the first rows" would be the smallest ids
    rows = spark.createDataFrame([(int(i), [float(x) for x in v]) for i, v in zip(ids, vectors, strict=True)],
                                 "sample_id long, vector array<float>")

    def sample(frame, seed, name):
        folder = str(tmp_path / name)
        verdicts = frame.mapInArrow(SC.scan_partition(folder, d, {"s": (seed, SC.threshold(want, n))}, "sample_id",
                                                      "vector"), SC.SCAN_DDL).count()
        assert verdicts == n  # one verdict per row, whatever the sample keeps
        got_ids, got_x, held = SC.read_sample(folder + "/s", want, d)
        assert want < held < 2 * want  # about the share asked for, and enough
        return got_ids, got_x

    one = sample(rows.coalesce(1), 5, "one")
    eight = sample(rows.repartition(8, F.rand(1)), 5, "eight")
    assert np.array_equal(one[0], eight[0]) and np.array_equal(one[1], eight[1])
    got = one[0]
    assert len(got) == want == len(set(got.tolist()))
    assert np.array_equal(one[1], vectors[got])  # each id with its own vector
    # spread over the input: every tenth of it holds 5% - 15% of the sample (the first rows would give 100%, 0 ...)
    deciles = np.bincount(got * 10 // n, minlength=10) / want
    assert deciles.min() > 0.05 and deciles.max() < 0.15
    other = sample(rows, 6, "other")[0]  # another seed, another sample
    assert len(set(other.tolist()) & set(got.tolist())) < want // 2


def test_file_uris_in_and_out_with_shards(spark, tmp_path):
    from laion_spark.search.searcher import Searcher

    vectors, _ = clustered_vectors(3_000, 16, clusters=8, seed=6)
    ids = ids_for(3_000, seed=4)
    path = write_embeddings(spark, tmp_path / "emb", ids, vectors)
    out = tmp_path / "index"
    summary = build(spark, f"input={Path(path).as_uri()}", f"output={out.as_uri()}", "index.shards=2",
                    "index.eval_queries=100")
    assert summary["indexed"] == 3_000
    infos = json.loads((out / "index_infos.json").read_text())
    assert infos["layout"]["shards"] == ["knn_00000.index", "knn_00001.index"]
    assert sum(faiss.read_index(str(out / "shards" / s)).ntotal for s in infos["layout"]["shards"]) == 3_000
    assert not (out / "_build").exists()  # the build folder is cleaned up through the same URI
    by_uri = Searcher(out.as_uri(), cache_dir=str(tmp_path / "cache"))
    by_path = Searcher(str(out), cache_dir=str(tmp_path / "cache2"))
    exact = np.argsort(-(vectors @ vectors[5]), kind="stable")[:5]
    for s in (by_uri, by_path):
        got = s.query(embedding=vectors[5].tolist(), k=5, deduplicate=False)
        assert [r["sample_id"] for r in got] == [int(ids[i]) for i in exact]
