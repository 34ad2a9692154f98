"""index tuning (no Spark): the search parameters index_infos.json records are the smallest that reach the
target recall within the time limit; where the limit or the target cannot be met, the best within the
limit (or the fastest), flagged. Recall is recomputed here from an IndexFlatIP ranking written in the test."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from laion_spark.index.synthetic import clustered_vectors
from laion_spark.index.tune import tune

N, D, Q = 6000, 32, 200


@pytest.fixture(scope="module")
def ivf():
    vectors, _ = clustered_vectors(N, D, clusters=60, seed=2)
    index = faiss.index_factory(D, "IVF64,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)  # ids = positions
    qi = np.random.default_rng(1).choice(N, Q, replace=False).astype(np.int64)
    flat = faiss.IndexFlatIP(D)
    flat.add(vectors)
    _, ids = flat.search(vectors[qi], 11)
    exact = np.array([[i for i in row if i != q][:10] for row, q in zip(ids, qi, strict=True)])
    return index, vectors, qi, exact


def recall_with(index, vectors, qi, exact, nprobe: int) -> float:
    index.nprobe = nprobe
    _, got = index.search(vectors[qi], 11)
    return float(np.mean([len(set([i for i in g if i != q][:10]) & set(e)) / 10
                          for g, q, e in zip(got, qi, exact, strict=True)]))


def test_the_smallest_setting_that_reaches_the_target_is_taken(ivf):
    index, vectors, qi, exact = ivf
    t = tune(index, vectors[qi], qi, exact, target_recall=0.95, max_query_ms=1000, hnsw_quantizer=False)
    assert t.reached_target
    nprobe = int(t.index_param.split("=")[1])
    assert index.nprobe == nprobe  # left applied
    recall = recall_with(index, vectors, qi, exact, nprobe)
    assert recall == pytest.approx(t.recall_at_10, abs=1e-4) and recall >= 0.95
    assert nprobe == 1 or recall_with(index, vectors, qi, exact, nprobe // 2) < 0.95  # half as many fall short


def test_an_unreachable_target_takes_the_best_recall_and_says_so(ivf, caplog):
    index, vectors, qi, exact = ivf
    t = tune(index, vectors[qi], qi, exact, target_recall=1.01, max_query_ms=1000, hnsw_quantizer=False)
    assert not t.reached_target and "recall@10" in caplog.text
    assert t.recall_at_10 == max(r["recall_at_10"] for r in t.tried)


def test_a_time_limit_nothing_meets_takes_the_fastest_and_says_so(ivf, caplog):
    index, vectors, qi, exact = ivf
    t = tune(index, vectors[qi], qi, exact, target_recall=0.95, max_query_ms=1e-9, hnsw_quantizer=False)
    assert not t.reached_target and "within 1e-09 ms" in caplog.text
    assert t.index_param == "nprobe=1" and len(t.tried) == 1  # dearer settings are not tried once one is too slow
