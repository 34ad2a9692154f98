"""Query-time result filters, as clip-retrieval has them (no faiss, no model).

INPUT  -> ranked candidate rows (best first), their reconstructed embeddings, the filter settings
OUTPUT -> the rows kept, best first, and per filter how many it dropped

Why each: a web crawl holds the same picture many times under different URLs (near duplicates,
clip-retrieval's cosine 0.94); one URL may appear under several sample_ids (duplicate URLs); a
search page shown to people drops what the safety scores flag, where the metadata has them.
"""

from __future__ import annotations

import numpy as np

BLOCK_ROWS = 256  # rows compared at once: one block against the rows kept before it, then within itself


def near_duplicates(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """Ranked embeddings (n x d) -> a keep mask: a row is dropped when its cosine with a better kept row
    is above threshold (the greedy rule: rows are taken best first, each kept unless a kept row is near it).

    Why blocks: a row-at-a-time loop takes a Python step and a copy of every row kept so far for each
    row, at a search's depth of up to 16,000 rows. Here each block of rows meets the rows kept before it
    in one matrix product, and the greedy order inside a block runs over the few rows that have a near
    neighbour later in that block; the rows kept sit in one buffer filled once. The comparisons are the
    same (each row against the kept rows before it, cosine > threshold), so the rows kept are too.
    """
    v = np.asarray(vectors, dtype=np.float32)
    n = len(v)
    if n == 0:
        return np.zeros(0, dtype=bool)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    v = v / np.where(norms > 0, norms, 1)
    keep = np.zeros(n, dtype=bool)
    kept = np.empty_like(v)  # the rows kept so far, in rank order: kept[:m]
    m = 0
    for start in range(0, n, BLOCK_ROWS):
        block = v[start:start + BLOCK_ROWS]
        alive = np.ones(len(block), dtype=bool)
        if m:
            alive &= ~((kept[:m] @ block.T) > threshold).any(axis=0)
        near = np.triu((block @ block.T) > threshold, k=1)  # near[i, j]: j is after i in the block and near it
        for i in np.flatnonzero(near.any(axis=1)).tolist():  # rows with no later neighbour drop nothing
            if alive[i]:
                alive &= ~near[i]
        keep[start:start + len(block)] = alive
        taken = block[alive]
        kept[m:m + len(taken)] = taken
        m += len(taken)
    return keep


def apply_filters(rows: list[dict], vectors: np.ndarray | None, deduplicate: bool, dedup_threshold: float,
                  unique_urls: bool, max_punsafe: float | None, max_pwatermark: float | None
                  ) -> tuple[list[dict], dict[str, int]]:
    """-> (rows kept, {filter: rows dropped})."""
    dropped = {"near_duplicate": 0, "duplicate_url": 0, "punsafe": 0, "pwatermark": 0}
    keep = np.ones(len(rows), dtype=bool)
    for i, row in enumerate(rows):
        if max_punsafe is not None and row.get("punsafe") is not None and row["punsafe"] > max_punsafe:
            keep[i] = False
            dropped["punsafe"] += 1
        elif max_pwatermark is not None and row.get("pwatermark") is not None and row["pwatermark"] > max_pwatermark:
            keep[i] = False
            dropped["pwatermark"] += 1
    if deduplicate and vectors is not None and len(rows):
        idx = np.flatnonzero(keep)
        mask = near_duplicates(vectors[idx], dedup_threshold)
        dropped["near_duplicate"] = int((~mask).sum())
        keep[idx[~mask]] = False
    if unique_urls:
        seen: set = set()
        for i in np.flatnonzero(keep):
            url = rows[i].get("url")
            if url is None:
                continue
            if url in seen:
                keep[i] = False
                dropped["duplicate_url"] += 1
            seen.add(url)
    return [r for r, k in zip(rows, keep, strict=True) if k], dropped
