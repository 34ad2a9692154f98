"""index recall arithmetic (no Spark): ties counted as found, Wilson's interval, the exact lists that keep the
tied vectors across parts, and the held-out / tuning split. Expectations are written here by hand or with
numpy over every vector."""

from __future__ import annotations

import numpy as np
import pytest

from laion_spark.index import build as B
from laion_spark.index import heldout as H
from laion_spark.index.recall import TIES, per_query, summary, wilson

K = 10


def test_wilson_matches_the_textbook_values():
    lo, hi = wilson(0.5, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.4038, 0.5962)  # Wilson (1927), z = 1.96
    lo, hi = wilson(1.0, 1000)
    assert hi == 1.0 and lo == pytest.approx(1 / (1 + 1.959964**2 / 1000))  # never a point at 1.0
    lo, hi = wilson(0.0, 50)
    assert lo == 0.0 and 0.0 < hi < 0.08


def test_a_found_duplicate_of_the_kth_counts_and_a_lower_score_does_not():
    # one query; rows 0..11 score 0.9 (twelve tied copies), row 12 scores 0.5
    scores = np.array([0.9] * 12 + [0.5], np.float32)
    ids = np.arange(13, dtype=np.int64)
    exact_s = np.full((1, K + TIES), -np.inf, np.float32)
    exact_i = np.full((1, K + TIES), B.NO_ID, np.int64)
    exact_s[0, :13], exact_i[0, :13] = scores, ids
    twins = np.array([[11, 10, 9, 8, 7, 6, 5, 4, 3, 2]])  # ten of the twelve, not the ten smallest ids
    assert per_query(twins, exact_s, exact_i, K)[0] == 1.0
    assert per_query(twins, exact_s, exact_i, 1)[0] == 1.0
    worse = np.array([[12, 10, 9, 8, 7, 6, 5, 4, 3, 2]])  # one of them the 0.5 row: a miss
    assert per_query(worse, exact_s, exact_i, K)[0] == pytest.approx(0.9)
    missing = np.array([[11, 10, 9, -1, -1, -1, -1, -1, -1, -1]])
    assert per_query(missing, exact_s, exact_i, K)[0] == pytest.approx(0.3)


def test_the_merged_lists_hold_every_tie_of_the_global_kth_across_parts():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((30, 8)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    vectors = np.repeat(base, 25, axis=0)  # 25 copies each
    ids = rng.permutation(len(vectors)).astype(np.int64) + 100
    qi = rng.choice(len(vectors), 40, replace=False)
    queries, query_ids = vectors[qi], ids[qi]
    parts = np.array_split(rng.permutation(len(vectors)), 4)
    merged = B.merge_topk([B.exact_topk(queries, query_ids, vectors[p], ids[p], K, TIES) for p in parts], K, TIES)
    for row in range(len(qi)):
        s = vectors @ queries[row]
        s[qi[row]] = -np.inf
        kth = np.sort(s)[-K]
        want = set(ids[s >= kth - 1e-5].tolist())  # numpy over every vector: the top-10 and all that tie it
        assert set(merged[1][row][merged[1][row] != B.NO_ID].tolist()) == want
    # any ten of them, found, is recall 1; ten others are not
    found = np.array([[i for i in merged[1][r] if i != B.NO_ID][-K:] for r in range(len(qi))])
    assert summary(found, *merged)["recall_at_10"] == 1.0
    assert summary(found, *merged)["ties_truncated"] == 0


def test_a_tie_group_larger_than_the_lists_is_counted():
    vectors = np.tile(np.array([[1.0, 0.0]], np.float32), (K + TIES + 20, 1))
    ids = np.arange(len(vectors), dtype=np.int64)
    exact = B.exact_topk(vectors[:3], ids[:3], vectors, ids, K, TIES)
    assert summary(exact[1][:, :K], *exact)["ties_truncated"] == 3


def test_the_heldout_queries_are_disjoint_from_the_tuning_ones_and_fixed_in_size():
    ids = np.arange(5000, dtype=np.int64)
    x = np.zeros((5000, 4), np.float32)
    assert H.sizes(10**9, 1000, 1000) == (1000, 1000)  # fixed, whatever the rows
    assert H.sizes(300, 1000, 1000) == (150, 150) and H.sizes(1, 1000, 1000) == (0, 1)
    held, tuning = H.split(ids[:1500], x[:1500], 1000)
    assert len(held) == 1000 and len(tuning) == 500 and not set(held.ids) & set(tuning.ids)
    # fewer tuning queries: the same held-out rows
    assert np.array_equal(H.split(ids[:1100], x[:1100], 1000)[0].ids, held.ids)


def test_cross_modal_queries_keep_usable_vectors_and_leave_nothing_out():
    q = H.cross_modal(np.array([1, 2, 3, 4]), [[1.0, 0.0], None, [float("nan"), 1.0], [0.0, 0.0]], 2)
    assert len(q) == 1 and q.ids.tolist() == [B.NO_ID] and q.vectors.tolist() == [[1.0, 0.0]]
