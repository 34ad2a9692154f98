"""What a built index does on queries that played no part in choosing it (no Spark).

INPUT  -> the query sample the scan drew (ids and vectors, in hash-key order: any prefix is a random sample),
          index.eval_queries and index.tune_queries; later the built index with its search parameter
          applied, the held-out queries and their exact lists (build.exact_topk / merge_topk), the
          cross-modal queries (the other embedding of held-out rows: their captions' text embeddings for
          an image index) with theirs, and the number of concurrent clients
OUTPUT -> `split`: the sample cut into disjoint held-out and tuning queries; `measure`: the figures
          index_infos.json reports: recall@1 / @10 with Wilson 95% intervals and the query count
          (recall.py), the same for the cross-modal queries, single-query latency p50 / p99, and
          latency under load (tune.latency_under_load)

Why held-out: the plan (choose.py) and nprobe (tune.py) are picked as the cheapest that reach the target
recall on the tuning queries, so recall measured on those same queries reaches the target by
construction. The held-out queries are kept out of the training sample too (job.py), so nothing the index
is made of saw them. Both sets are a fixed number of rows (at most eval_queries + tune_queries), whatever
the size of the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from laion_spark.index import recall as R
from laion_spark.index import tune as T
from laion_spark.index.build import NO_ID


@dataclass(frozen=True)
class Queries:
    """Queries with the ids left out of their own results (NO_ID: none) and their exact lists."""

    ids: np.ndarray
    vectors: np.ndarray
    exact_scores: np.ndarray | None = None
    exact_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


def sizes(n: int, eval_queries: int, tune_queries: int) -> tuple[int, int]:
    """n indexable vectors -> (held-out, tuning) query counts: as configured when the data has room for
    both, else at most half of it held out and the rest (at least one row) for tuning."""
    heldout = min(eval_queries, n // 2)
    return heldout, min(tune_queries, n - heldout)


def split(ids: np.ndarray, vectors: np.ndarray, heldout: int) -> tuple[Queries, Queries]:
    """The query sample (key order) -> (held-out: its first `heldout` rows, tuning: the rest). Disjoint by
    construction; the held-out rows stay the same when tune_queries changes."""
    return Queries(ids[:heldout], vectors[:heldout]), Queries(ids[heldout:], vectors[heldout:])


def cross_modal(ids: np.ndarray, vectors: list, d: int) -> Queries:
    """Held-out rows' other embeddings (a list, None where missing) -> the usable ones as queries: d
    finite values, not zero. Their own row is not left out of the results (a caption's own image is a
    right answer), so their ids are NO_ID."""
    rows = []
    for v in vectors:
        x = None if v is None else np.asarray(v, dtype=np.float32)
        if x is not None and x.shape == (d,) and np.isfinite(x).all() and float(x @ x) > 1e-12:
            rows.append(x)
    matrix = np.stack(rows) if rows else np.empty((0, d), np.float32)
    return Queries(np.full(len(rows), NO_ID, np.int64), matrix)


def with_exact(q: Queries, scores: np.ndarray, ids: np.ndarray) -> Queries:
    return Queries(q.ids, q.vectors, scores, ids)


def recall_of(index, q: Queries) -> dict:
    """-> recall.summary of the index's top-10 for the queries (each searched without its own id)."""
    found = T.search(index, q.vectors, q.ids, T.K)
    return R.summary(found, q.exact_scores, q.exact_ids, (1, T.K))


def measure(index, heldout: Queries, cross: Queries | None, clients: int) -> dict:
    """The built index (its search parameter applied) -> {"heldout": recall summary, "cross_modal": recall
    summary or None, "latency": single-query p50 / p99 ms and batched q/s, "load": latency under load or
    None}. Latency is measured on the held-out queries (none when there are none: a table of one row)."""
    out: dict = {"heldout": recall_of(index, heldout) if len(heldout) else None,
                 "cross_modal": recall_of(index, cross) if cross is not None and len(cross) else None}
    timed = heldout.vectors
    if len(timed):
        p50, p99, qps = T.latency_ms(index, timed)
        out["latency"] = {"latency_ms_p50": round(p50, 3), "latency_ms_p99": round(p99, 3),
                          "queries_per_s": round(qps, 1)}
    else:
        out["latency"] = None
    out["load"] = T.latency_under_load(index, timed, clients) if clients > 0 and len(timed) else None
    return out
