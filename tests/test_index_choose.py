"""index: the plans weighed (plan_candidates) and the choice between them by recall measured on a sample
(choose.py), without Spark. The expectations are computed here: each candidate rebuilt with faiss
directly on the same rows, its recall against IndexFlatIP written in the test."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from laion_spark.index.choose import TIE, choose, trial_key
from laion_spark.index.plan import IndexPlanError, nlist_for, parse_bytes, plan_candidates
from laion_spark.index.synthetic import clustered_vectors


def test_the_candidates_fit_with_distinct_codes_best_by_the_rule_first():
    plans = plan_candidates(1_000_000, 512, "256M")
    assert [p.key for p in plans] == ["IVF1024,PQ256x8", f"OPQ128_512,IVF{nlist_for(1_000_000)},PQ128x8"]
    assert all(p.memory_bytes <= parse_bytes("256M") for p in plans)
    three = plan_candidates(100_000, 64, 100_000 * 64 * 4 // 4, count=3)
    assert len(three) == 3 and len({p.encoding for p in three}) == 3
    assert plan_candidates(1_000_000, 512, "256M", count=1)[0].key == "IVF1024,PQ256x8"
    assert [p.key for p in plan_candidates(500, 64, "4G")] == ["IVF1,Flat"]  # exact: nothing to weigh
    forced = plan_candidates(50_000, 64, "4G", "IVF256,SQ4; IVF256,SQ8")
    assert [p.key for p in forced] == ["IVF256,SQ4", "IVF256,SQ8"]
    with pytest.raises(IndexPlanError):
        plan_candidates(50_000, 64, "4G", "IVF256,SQ4;HNSW32")


def test_a_trial_keeps_the_vectors_per_list():
    plans = plan_candidates(1_000_000, 512, "256M")
    assert trial_key(plans[0], 20_000) == "IVF16,PQ256x8"  # 1024 lists x 20k / 1M = 20.5 -> 16
    assert trial_key(plans[1], 20_000) == "OPQ128_512,IVF64,PQ128x8"
    hnsw = plan_candidates(100_000_000, 512, "64G")[0]
    scaled = 2 ** round(np.log2(hnsw.nlist * 50_000 / 100_000_000))
    assert "_HNSW32" in hnsw.key and trial_key(hnsw, 50_000).split(",")[0] == f"IVF{scaled}_HNSW32"
    assert trial_key(plans[0], 100) == "IVF1,PQ256x8"  # under one list's worth: one list


@pytest.fixture(scope="module")
def rows():
    vectors, _ = clustered_vectors(30_000, 64, clusters=60, seed=11)
    ids = np.arange(10, 30_010, dtype=np.int64)
    rng = np.random.default_rng(4)
    q = rng.choice(len(ids), 200, replace=False)
    return ids, vectors, ids[q], vectors[q]


def recall_here(key: str, ids, vectors, qids, queries, param: str) -> float:
    """The trial's index built again with faiss directly, its recall against IndexFlatIP."""
    flat = faiss.IndexIDMap(faiss.IndexFlatIP(vectors.shape[1]))
    flat.add_with_ids(vectors, ids)
    _, exact = flat.search(queries, 11)
    index = faiss.index_factory(vectors.shape[1], key, faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(index).cp.seed = 0
    index.train(vectors)
    index.add_with_ids(vectors, ids)
    faiss.ParameterSpace().set_index_parameters(index, param)
    _, got = index.search(queries, 11)
    total = 0.0
    for q, e, g in zip(qids, exact, got, strict=True):
        want = [i for i in e if i != q][:10]
        total += len(set(want) & set(i for i in g if i != q)) / 10
    return total / len(qids)


def test_the_better_measured_plan_wins_even_when_the_rule_ranks_it_second(rows):
    ids, vectors, qids, queries = rows
    # a 4-bit scalar code listed before an 8-bit one: the order says SQ4, the measurement must say SQ8
    plans = plan_candidates(len(ids), 64, "4G", "IVF256,SQ4;IVF256,SQ8")
    pick, report = choose(plans, ids, vectors, queries, qids, 0.95, 1000.0, trial_vectors=len(ids))
    assert report["measured"] and report["trial_vectors"] == len(ids)
    tried = {r["index_key"]: r for r in report["tried"]}
    assert pick == 1 and report["chosen"] == "IVF256,SQ8"
    assert tried["IVF256,SQ8"]["recall_at_10"] > tried["IVF256,SQ4"]["recall_at_10"] + TIE
    for r in report["tried"]:  # what it measured is what the same index does, rebuilt here
        assert r["trial_key"] == r["index_key"]  # the trial holds every row: lists unscaled
        assert abs(recall_here(r["trial_key"], ids, vectors, qids, queries, r["index_param"])
                   - r["recall_at_10"]) < 0.01


def test_a_tie_goes_to_the_rules_first_and_one_plan_is_not_measured(rows):
    ids, vectors, qids, queries = rows
    plans = plan_candidates(len(ids), 64, "4G", "IVF128,SQ8;IVF128,SQ8")
    pick, report = choose(plans, ids, vectors, queries, qids, 0.95, 1000.0, trial_vectors=10_000)
    assert pick == 0 and report["trial_vectors"] == 10_000
    assert report["tried"][0]["recall_at_10"] == report["tried"][1]["recall_at_10"]
    one = plan_candidates(len(ids), 64, "4G", "IVF128,SQ8")
    assert choose(one, ids, vectors, queries, qids, 0.95, 1000.0, 10_000) == (0, {
        "measured": False, "why": "one plan fits the rule's order (or was forced)"})


def test_a_trial_past_its_time_is_stopped_and_not_taken(rows, caplog):
    ids, vectors, qids, queries = rows
    plans = plan_candidates(len(ids), 64, "4G", "IVF256,SQ4;IVF256,SQ8")
    # no child process starts Python and faiss in 10 ms: both trials are stopped, the rule's first is built
    pick, report = choose(plans, ids, vectors, queries, qids, 0.95, 1000.0, 10_000, trial_seconds=0.01)
    assert pick == 0 and not report["measured"] and report["chosen"] == "IVF256,SQ4"
    assert [r["error"] for r in report["tried"]] == ["not measured: its trial ran past index.trial_seconds=0.01"] * 2
    assert "no candidate could be measured" in caplog.text
