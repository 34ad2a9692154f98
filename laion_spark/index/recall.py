"""Recall of an index against the exact neighbours, ties counted as found, with its confidence interval
(no Spark, no faiss).

INPUT  -> the ids an index returned per query (nq x k, NO_ID padded), the exact lists of the same queries
          as build.exact_topk / merge_topk give them (scores and ids, nq x (k + ties), best first, with
          the vectors that tie the k-th score after the k-th)
OUTPUT -> `per_query`: each query's k-recall@k (NaN where it has no exact neighbour); `summary`: their
          mean with its Wilson interval and the number of queries behind it; `wilson`: the interval

Why ties count as found: recall by id overlap counts a duplicate returned in place of its tied twin as a
miss. On 3,000 embeddings with many exact copies (as web crawls hold), the exact index IVF1,Flat
reported recall@10 0.241 and recall@1 0.0 that way, and the tuner warned that more memory would help.
A result counts as found when it is among the exact top-k or scores within build.TIE_TOLERANCE of the
k-th exact score: the exact lists hold those tied vectors (up to TIES of them per query; a query with
more is counted with the ones held, which can only lower its recall).

Why Wilson's interval over queries: a query's recall is a share in [0, 1], so its variance is at most
p(1 - p) for a mean p, the variance of a yes/no outcome. Wilson's score interval with n = the number of
queries is therefore at least as wide as the per-query mean's own (conservative for recall@10, exact in
form for recall@1), and unlike a bootstrap it does not shrink to a point when every query found all of
its neighbours (1,000 queries at recall 1.0 still say "at least 0.9962").
"""

from __future__ import annotations

import math

import numpy as np

from laion_spark.index.build import NO_ID, TIE_TOLERANCE

TIES = 100  # tied vectors kept per query beyond the k-th: bounds the exact lists the driver holds
Z95 = 1.959963984540054
CI_METHOD = "wilson"  # what index_infos.json says its intervals are


def per_query(found: np.ndarray, exact_scores: np.ndarray, exact_ids: np.ndarray, k: int) -> np.ndarray:
    """-> per query, the share of its exact top-k found in found[:, :k], a found id that ties the k-th
    exact score counting as one of them; NaN for a query with no exact neighbour."""
    found = np.asarray(found)[:, :k]
    scores, ids = np.asarray(exact_scores), np.asarray(exact_ids)
    real = ids != NO_ID
    want = np.minimum(real.sum(axis=1), k)
    kth = np.take_along_axis(scores, np.maximum(want - 1, 0)[:, None], axis=1)[:, 0]
    acceptable = real & (scores >= (kth - TIE_TOLERANCE)[:, None])  # the top-k and what ties its k-th
    hit = ((found[:, :, None] == ids[:, None, :]) & acceptable[:, None, :]).any(axis=2) & (found != NO_ID)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(want > 0, np.minimum(hit.sum(axis=1), want) / want, np.nan)


def mean_recall(found: np.ndarray, exact_scores: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """-> the mean k-recall@k over the queries that have exact neighbours (1.0 when none has)."""
    r = per_query(found, exact_scores, exact_ids, k)
    r = r[~np.isnan(r)]
    return float(r.mean()) if len(r) else 1.0


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """A share p measured on n queries -> Wilson's score interval (lo, hi) at the level z gives."""
    if n <= 0:
        return 0.0, 1.0
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def truncated(exact_scores: np.ndarray, exact_ids: np.ndarray, k: int) -> int:
    """-> how many queries hold as many tied vectors as the lists have room for (more may tie)."""
    ids = np.asarray(exact_ids)
    if ids.shape[1] <= k:
        return 0
    last = np.asarray(exact_scores)[:, -1]
    kth = np.asarray(exact_scores)[:, k - 1]
    return int(np.count_nonzero((ids[:, -1] != NO_ID) & (last >= kth - TIE_TOLERANCE)))


def summary(found: np.ndarray, exact_scores: np.ndarray, exact_ids: np.ndarray, ks: tuple[int, ...] = (1, 10),
            digits: int = 4) -> dict:
    """-> {"queries": n, "recall_at_K": mean, "recall_at_K_ci95": [lo, hi] for each K in ks,
    "ties_truncated": queries whose tie group outgrew the lists}; n counts the queries with neighbours."""
    out: dict = {}
    for k in ks:
        r = per_query(found, exact_scores, exact_ids, k)
        r = r[~np.isnan(r)]
        p = float(r.mean()) if len(r) else None
        out.setdefault("queries", int(len(r)))
        out[f"recall_at_{k}"] = None if p is None else round(p, digits)
        if p is not None:
            lo, hi = wilson(p, len(r))
            scale = 10**digits  # rounded outwards: the interval printed holds the one computed
            out[f"recall_at_{k}_ci95"] = [math.floor(lo * scale) / scale, math.ceil(hi * scale) / scale]
        else:
            out[f"recall_at_{k}_ci95"] = None
    out["ties_truncated"] = truncated(exact_scores, exact_ids, max(ks))
    return out
