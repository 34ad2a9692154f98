"""The near-duplicate filter a served query runs (search/filters.py, issue 27): the rows it keeps are those
of the greedy rule written plainly here, on random data with exact ties and duplicates across its blocks,
and a search's full depth costs matrix products, not a Python step and a copy per row.

The reference is the rule as words say it: rows best first; a row is kept unless its cosine with a row
kept before it is above the threshold. It computes in float64 with Python's own loops; the data where
ties matter is built so that every cosine is exact in float32 too (entries 0 or 1/2, four of them a row).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from laion_spark.search.filters import BLOCK_ROWS, apply_filters, near_duplicates


def greedy(vectors: np.ndarray, threshold: float) -> list[bool]:
    """The rule, plainly: one row at a time, against every row kept before it."""
    rows = []
    for v in np.asarray(vectors, dtype=np.float64):
        norm = float(np.sqrt(sum(x * x for x in v)))
        rows.append([x / norm for x in v] if norm > 0 else [0.0] * len(v))
    kept: list[int] = []
    keep = []
    for i, row in enumerate(rows):
        near = any(sum(a * b for a, b in zip(rows[j], row)) > threshold for j in kept)
        keep.append(not near)
        if not near:
            kept.append(i)
    return keep


def tied(n: int, d: int, rng) -> np.ndarray:
    """-> n rows of d entries, four of them 1 and the rest 0, as float32: every cosine is a multiple of 1/4,
    exact in any order of summation; many rows repeat (a crawl's copies of one picture); a few are zero."""
    out = np.zeros((n, d), dtype=np.float32)
    for r in range(n):
        out[r, rng.choice(d, 4, replace=False)] = 1.0
    copies = rng.integers(0, n, size=n // 3)
    out[rng.integers(0, n, size=n // 3)] = out[copies] * rng.choice([1.0, 3.0], size=(n // 3, 1))  # scale: same cosine
    out[rng.integers(0, n, size=5)] = 0.0
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.75, 0.5, 0.25, 0.0, -0.25])
def test_the_rows_kept_are_the_greedy_rules_with_exact_ties(seed, threshold):
    rng = np.random.default_rng(seed)
    vectors = tied(3 * BLOCK_ROWS + 37, 8, rng)  # several blocks, the last one short
    got = near_duplicates(vectors, threshold)
    want = greedy(vectors, threshold)
    assert got.tolist() == want
    assert 0 < sum(want) < len(want)  # the case decides something: rows dropped and rows kept
    if threshold == 0.75:  # a cosine of exactly 0.75 is no near duplicate (above, not at, the threshold)
        unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1)
        kept = unit[np.asarray(want)]
        assert ((kept @ kept.T) == 0.75).any()


@pytest.mark.parametrize("seed", [3, 4])
def test_the_rows_kept_are_the_greedy_rules_on_clustered_floats(seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, 12))
    vectors = (centres[rng.integers(0, 40, size=700)] + 0.25 * rng.normal(size=(700, 12))).astype(np.float32)
    threshold = 0.94
    unit = vectors.astype(np.float64) / np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
    # no cosine so close to the threshold that float32 and float64 could disagree on which side it is
    assert np.abs(unit @ unit.T - threshold).min() > 1e-6  # float32 errs by about 1e-7 here
    want = greedy(vectors, threshold)
    assert near_duplicates(vectors, threshold).tolist() == want
    assert 0 < sum(want) < len(want)


def test_apply_filters_drops_the_near_duplicates_of_the_rows_the_other_filters_left():
    rng = np.random.default_rng(5)
    vectors = tied(600, 8, rng)
    rows = [{"sample_id": i, "url": f"http://x.test/{i}", "punsafe": float(rng.random())} for i in range(600)]
    kept, dropped = apply_filters(rows, vectors, True, 0.5, True, 0.5, None)
    safe = [i for i, r in enumerate(rows) if r["punsafe"] <= 0.5]
    want = [safe[j] for j, k in enumerate(greedy(vectors[safe], 0.5)) if k]
    assert [r["sample_id"] for r in kept] == want
    assert dropped["near_duplicate"] == len(safe) - len(want) and dropped["punsafe"] == 600 - len(safe)


def test_a_search_deep_at_max_k_costs_matrix_products_not_a_loop():
    # 4,000 rows of 256 (a depth the Searcher reaches at k=1000, with filters dropping many), nearly all kept:
    # the worst case, each row compared with every row before it. A Python step and a copy of the kept rows
    # per row took 46 s on a busy 2-core machine; the matrix products 1.5 s there.
    rng = np.random.default_rng(6)
    vectors = rng.normal(size=(4000, 256)).astype(np.float32)
    vectors[2000:2100] = vectors[:100]  # and some copies, so the rule has work to do
    started = time.perf_counter()
    keep = near_duplicates(vectors, 0.94)
    took = time.perf_counter() - started
    assert keep[:2000].all() and not keep[2000:2100].any() and keep[2100:].all()
    assert took < 8.0, f"near_duplicates took {took:.1f} s over 4,000 x 256"
