"""Recall, latency and search-parameter tuning of a built index (no Spark).

INPUT  -> a faiss index (or a build.ShardSet over several), eval queries with their own sample_ids, the
          exact top-k ids of each query (itself left out), the target recall@10 and max query time
OUTPUT -> `recall_at`: k-recall@k (the share of the exact top-k found in the returned top-k);
          `tune`: the chosen ParameterSpace string with its recall@1 / @10 and latency, and every
          setting tried (so a user sees the curve, not only the point)

Why tune on measured recall: autofaiss picks nprobe by speed alone (reference #142: recall 0.1 at
1M vectors under 10 ms). Here the smallest setting that reaches the target is taken, and only when
the target cannot be met within max_query_ms is speed allowed to win (with a warning).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from laion_spark.index.build import NO_ID, ShardSet, ivf_of

log = logging.getLogger(__name__)
K = 10
LATENCY_QUERIES = 200  # single queries timed one at a time


def search(index, queries: np.ndarray, query_ids: np.ndarray, k: int) -> np.ndarray:
    """-> the top-k ids of each query, the query itself left out (searched k + 1 deep)."""
    _, got = index.search(np.ascontiguousarray(queries, dtype=np.float32), k + 1)
    out = np.full((len(queries), k), NO_ID, dtype=np.int64)
    for q in range(len(queries)):
        keep = [i for i in got[q] if i != query_ids[q] and i != NO_ID][:k]
        out[q, : len(keep)] = keep
    return out


def recall_at(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """k-recall@k: mean over queries of |found top-k & exact top-k| / |exact top-k|."""
    total, n = 0.0, 0
    for f, e in zip(found, exact, strict=True):
        want = {i for i in e[:k] if i != NO_ID}
        if not want:
            continue
        total += len(want & {i for i in f[:k] if i != NO_ID}) / len(want)
        n += 1
    return total / n if n else 1.0


def latency_ms(index, queries: np.ndarray, k: int = K) -> tuple[float, float, float]:
    """-> (p50 ms, p99 ms) of single queries, and queries/s of one batch of all of them."""
    qs = np.ascontiguousarray(queries[:LATENCY_QUERIES], dtype=np.float32)
    times = []
    for q in qs:
        t = time.perf_counter()
        index.search(q[None, :], k)
        times.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    batch = time.perf_counter() - t
    return float(np.percentile(times, 50)), float(np.percentile(times, 99)), len(queries) / max(batch, 1e-9)


def settings(index, hnsw_quantizer: bool) -> list[str]:
    """The ParameterSpace strings to try, cheap to dear: nprobe 1, 2, 4, ... up to the list count
    (efSearch twice nprobe, at least 16, for an HNSW coarse quantiser)."""
    nlist = ivf_of(index).nlist if index is not None else 1
    if nlist <= 1:
        return ["nprobe=1"]
    out, p = [], 1
    while p < nlist:
        out.append(p)
        p *= 2
    out.append(nlist)
    if hnsw_quantizer:
        return [f"nprobe={p},efSearch={max(16, 2 * p)}" for p in out]
    return [f"nprobe={p}" for p in out]


def apply(index, param: str) -> None:
    import faiss

    space = faiss.ParameterSpace()
    for part in _parts(index):
        space.set_index_parameters(part, param)


def _parts(index) -> list:
    return index.shards if isinstance(index, ShardSet) else [index]


@dataclass
class Tuning:
    index_param: str
    recall_at_1: float
    recall_at_10: float
    latency_ms_p50: float
    latency_ms_p99: float
    queries_per_s: float
    reached_target: bool
    tried: list[dict]


def tune(index, queries: np.ndarray, query_ids: np.ndarray, exact: np.ndarray, target_recall: float,
         max_query_ms: float, hnsw_quantizer: bool, warn: bool = True) -> Tuning:
    """-> the smallest setting whose recall@10 reaches target_recall with p99 within max_query_ms; else
    the best recall within max_query_ms; else the fastest (each with a warning, unless warn is off: a
    trial on a sample, index/choose.py, is not the index a user gets)."""
    tried = []
    probe = _parts(index)[0]
    chosen = None
    for param in settings(probe, hnsw_quantizer):
        apply(index, param)
        found = search(index, queries, query_ids, K)
        r10, r1 = recall_at(found, exact, K), recall_at(found, exact, 1)
        p50, p99, qps = latency_ms(index, queries)
        row = {"index_param": param, "recall_at_1": round(r1, 4), "recall_at_10": round(r10, 4),
               "latency_ms_p50": round(p50, 3), "latency_ms_p99": round(p99, 3), "queries_per_s": round(qps, 1)}
        tried.append(row)
        if r10 >= target_recall and p99 <= max_query_ms:
            chosen = row
            break
        if p99 > max_query_ms:
            break  # dearer settings only get slower
        if len(tried) >= 3 and r10 - tried[-3]["recall_at_10"] < 0.001:
            break  # recall stopped growing: the quantisation, not the search, limits it
    reached = chosen is not None
    if chosen is None:
        fast = [r for r in tried if r["latency_ms_p99"] <= max_query_ms]
        chosen = max(fast or tried[:1], key=lambda r: (r["recall_at_10"], -r["latency_ms_p99"]))
        say = log.warning if warn else log.debug
        say("index: recall@10 %.3f < target %.3f within %s ms (best setting %s); a larger "
                    "index.max_index_memory or index.max_query_ms gets closer", chosen["recall_at_10"], target_recall,
                    max_query_ms, chosen["index_param"])
    apply(index, chosen["index_param"])
    return Tuning(chosen["index_param"], chosen["recall_at_1"], chosen["recall_at_10"], chosen["latency_ms_p50"],
                  chosen["latency_ms_p99"], chosen["queries_per_s"], reached, tried)
