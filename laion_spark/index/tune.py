"""Recall, latency and search-parameter tuning of a built index (no Spark).

INPUT  -> a faiss index (or a build.ShardSet over several), the tuning queries with their own sample_ids,
          their exact lists (scores, ids: build.exact_topk's, itself left out, ties kept), the target
          recall@10 and max query time
OUTPUT -> `tune`: the chosen ParameterSpace string with its recall@1 / @10 (recall.py: a tied
          duplicate found counts) and latency, and every setting tried (so a user sees the curve, not
          only the point); `latency_ms`: one client's single queries; `latency_under_load`: single
          queries from several clients at once

The figures tune returns are measured on the queries it chose with: they reach the target by
construction. The figure a user reads is measured afterwards on held-out queries (heldout.py).

Why tune on measured recall: autofaiss picks nprobe by speed alone (reference #142: recall 0.1 at
1M vectors under 10 ms). Here the smallest setting that reaches the target is taken, and only when
the target cannot be met within max_query_ms is speed allowed to win (with a warning).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from laion_spark.index.build import NO_ID, ShardSet, ivf_of
from laion_spark.index.recall import mean_recall

log = logging.getLogger(__name__)
K = 10
LATENCY_QUERIES = 200  # single queries timed one at a time
LOAD_QUERIES = 50  # single queries each client sends under load


def search(index, queries: np.ndarray, query_ids: np.ndarray, k: int) -> np.ndarray:
    """-> the top-k ids of each query, the query itself left out (searched k + 1 deep)."""
    _, got = index.search(np.ascontiguousarray(queries, dtype=np.float32), k + 1)
    out = np.full((len(queries), k), NO_ID, dtype=np.int64)
    for q in range(len(queries)):
        keep = [i for i in got[q] if i != query_ids[q] and i != NO_ID][:k]
        out[q, : len(keep)] = keep
    return out


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


def latency_under_load(index, queries: np.ndarray, clients: int, per_client: int = LOAD_QUERIES,
                       k: int = K) -> dict:
    """-> p50 / p99 ms of single queries sent by `clients` threads at once (each `per_client` queries back to
    back, as many users of one served index do), and the queries/s they got through together. faiss
    searches without the GIL, so the threads contend for the cores and the index as a service's would."""
    qs = np.ascontiguousarray(queries, dtype=np.float32)
    times: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        mine = qs[(np.arange(per_client) * clients + c) % len(qs)]  # each client its own queries
        start.wait()
        try:
            for q in mine:
                t = time.perf_counter()
                index.search(q[None, :], k)
                times[c].append((time.perf_counter() - t) * 1000)
        except BaseException as exc:  # noqa: BLE001  (raised again in the caller's thread)
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    flat = [x for per in times for x in per]
    return {"clients": clients, "queries": len(flat), "latency_ms_p50": round(float(np.percentile(flat, 50)), 3),
            "latency_ms_p99": round(float(np.percentile(flat, 99)), 3),
            "queries_per_s": round(len(flat) / max(wall, 1e-9), 1)}


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


def tune(index, queries: np.ndarray, query_ids: np.ndarray, exact: tuple[np.ndarray, np.ndarray],
         target_recall: float, max_query_ms: float, hnsw_quantizer: bool, warn: bool = True) -> Tuning:
    """exact: the queries' exact lists (scores, ids) as build.exact_topk gives them ->
    the smallest setting whose recall@10 reaches target_recall with p99 within max_query_ms; else
    the best recall within max_query_ms; else the fastest (each with a warning, unless warn is off: a
    trial on a sample, index/choose.py, is not the index a user gets)."""
    tried = []
    probe = _parts(index)[0]
    chosen = None
    for param in settings(probe, hnsw_quantizer):
        apply(index, param)
        found = search(index, queries, query_ids, K)
        r10, r1 = mean_recall(found, *exact, K), mean_recall(found, *exact, 1)
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
