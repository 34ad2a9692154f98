"""Choosing between index plans by measured recall on a sample (no Spark).

INPUT  -> the plans that fit (plan.plan_candidates, best by the rule first), the training sample (random
          rows, ids and vectors), the tuning queries with their ids (never the held-out ones the job
          reports recall on: heldout.py), the target recall@10, max query ms
OUTPUT -> the position of the plan to build, and what was measured: per plan the key it was tried as,
          its best recall@1 / @10 within max_query_ms (the code's ceiling), that setting, and seconds

How: each plan is built at the sample's scale, in a child process stopped after `trial_seconds` (the
same code, the lists scaled so that a list holds as many vectors as it will in the full index), trained
and filled with the first `trial_vectors` rows of the sample, and tuned on the tuning queries against
their exact top-10 over those rows (ties counted as found, recall.py). The plan with the best recall@10
is taken; one within TIE of it that the rule ranks higher wins (its finer code is the better bet at full
scale, and a tie at this scale is noise). Why measure at all: the rule orders codes by bytes per vector,
which is only a guess about recall (SQ6's 384 bytes against PQ32's 32 measured 0.97 against 0.93 on
100k x 64 here, but a code with fewer lists against a coarser one with more depends on the data);
autofaiss never measures before it chooses (reference: peers-index-tag-export.md).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

from laion_spark.index import build as B
from laion_spark.index import tune as T
from laion_spark.index.plan import MIN_POINTS_PER_LIST, PQ_TRAIN_MIN, Plan
from laion_spark.index.recall import TIES

log = logging.getLogger(__name__)
TIE = 0.005


def trial_key(plan: Plan, n_trial: int) -> str:
    """A plan's factory key with its list count scaled from nb_vectors to n_trial vectors (a power of
    two, at least 1, at most n_trial / MIN_POINTS_PER_LIST)."""
    scaled = plan.nlist * n_trial / max(plan.nb_vectors, 1)
    c = 2 ** max(0, round(math.log2(scaled))) if scaled >= 1 else 1
    while c > 1 and n_trial / c < MIN_POINTS_PER_LIST:
        c //= 2
    return re.sub(r"IVF\d+", f"IVF{c}", plan.key, count=1)


def measure(key: str, hnsw_quantizer: bool, folder: str, max_query_ms: float, seed: int) -> dict:
    """One trial (the child process's work): the rows and queries saved in folder -> key trained and filled
    with the rows -> its best recall within max_query_ms (the code's ceiling, not the first setting past
    the target: two codes that both reach it would otherwise tie at the target)."""
    base = np.load(os.path.join(folder, "base.npy"))
    base_ids = np.load(os.path.join(folder, "base_ids.npy"))
    queries = np.load(os.path.join(folder, "queries.npy"))
    query_ids = np.load(os.path.join(folder, "query_ids.npy"))
    exact = np.load(os.path.join(folder, "exact_scores.npy")), np.load(os.path.join(folder, "exact_ids.npy"))
    index = B.train(key, base, seed)
    index.add_with_ids(base, base_ids)
    tuning = T.tune(index, queries, query_ids, exact, 2.0, max_query_ms, hnsw_quantizer, warn=False)
    return {"recall_at_1": tuning.recall_at_1, "recall_at_10": tuning.recall_at_10,
            "index_param": tuning.index_param, "latency_ms_p99": tuning.latency_ms_p99}


def _run_trial(key: str, hnsw: bool, folder: str, max_query_ms: float, seed: int, seconds: float) -> dict:
    """-> measure()'s result from a child process, or {"error": why} when it failed or ran past seconds.

    A child, so that a trial can be stopped: faiss' training cannot be interrupted in a thread, and one
    candidate's training can take minutes (OPQ128 on 20k x 512: 406 s on 2 cores, its PQ256 rival 58 s)."""
    out = os.path.join(folder, "result.json")
    if os.path.exists(out):
        os.remove(out)
    args = json.dumps({"key": key, "hnsw": hnsw, "folder": folder, "max_query_ms": max_query_ms, "seed": seed,
                       "out": out})
    proc = subprocess.Popen([sys.executable, "-m", "laion_spark.index.choose", args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"error": f"not measured: its trial ran past index.trial_seconds={seconds:g}"}
    if proc.returncode != 0 or not os.path.exists(out):
        last = (err or "").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return {"error": f"its trial failed: {last[0]}"}
    with open(out) as fh:
        return json.load(fh)


def choose(plans: list[Plan], sample_ids: np.ndarray, sample: np.ndarray, queries: np.ndarray,
           query_ids: np.ndarray, target_recall: float, max_query_ms: float, trial_vectors: int,
           seed: int = 0, trial_seconds: float = 60.0) -> tuple[int, dict]:
    """-> (position in plans of the one to build, the trial's report); a single plan is taken unmeasured.
    A plan whose trial fails or runs past trial_seconds is reported and not taken (the rule's first is,
    when none of them could be measured)."""
    if len(plans) <= 1:
        return 0, {"measured": False, "why": "one plan fits the rule's order (or was forced)"}
    n = min(len(sample), max(trial_vectors, PQ_TRAIN_MIN))  # PQ's codebooks need ~10k vectors to train
    base_ids, base = sample_ids[:n], np.ascontiguousarray(sample[:n], dtype=np.float32)
    tried = []
    exact_scores, exact_ids = B.exact_topk(queries, query_ids, base, base_ids, T.K, TIES)
    with tempfile.TemporaryDirectory(prefix="laion-spark-choose-") as folder:
        for name, array in (("base", base), ("base_ids", base_ids), ("queries", queries),
                            ("query_ids", query_ids), ("exact_scores", exact_scores), ("exact_ids", exact_ids)):
            np.save(os.path.join(folder, f"{name}.npy"), np.ascontiguousarray(array))
        for plan in plans:
            key = trial_key(plan, n)
            t = time.time()
            got = _run_trial(key, plan.hnsw_quantizer, folder, max_query_ms, seed, trial_seconds)
            row = {"index_key": plan.key, "trial_key": key, **got, "seconds": round(time.time() - t, 3)}
            if "error" not in got:
                row["reaches_target"] = got["recall_at_10"] >= target_recall
            tried.append(row)
    measured = [r["recall_at_10"] for r in tried if "error" not in r]
    if not measured:
        log.warning("index: no candidate could be measured (%s); the rule's first, %s, is built",
                    "; ".join(r["error"] for r in tried), plans[0].key)
        return 0, {"measured": False, "why": "no trial finished", "trial_vectors": n, "tried": tried,
                   "chosen": plans[0].key}
    best = max(measured)
    pick = next(i for i, r in enumerate(tried) if "error" not in r and r["recall_at_10"] >= best - TIE)
    log.info("index: measured on %d sampled vectors: %s -> %s", n,
             ", ".join(f"{r['index_key']} " + (f"recall@10 {r['recall_at_10']}" if "error" not in r else r["error"])
                       for r in tried), plans[pick].key)
    return pick, {"measured": True, "trial_vectors": n, "tie": TIE, "tried": tried, "chosen": plans[pick].key}


def _main(argv: list[str]) -> int:
    args = json.loads(argv[0])
    result = measure(args["key"], args["hnsw"], args["folder"], args["max_query_ms"], args["seed"])
    with open(args["out"] + ".tmp", "w") as fh:
        json.dump(result, fh)
    os.replace(args["out"] + ".tmp", args["out"])
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
