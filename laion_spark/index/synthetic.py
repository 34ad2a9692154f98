"""Vectors with the structure of CLIP embeddings, for tests and benchmarks (no Spark).

INPUT  -> n, d, the number of clusters, their spread, a seed
OUTPUT -> an n x d float32 matrix of unit vectors: a deterministic mixture of Gaussian clusters on the
          unit sphere (cluster sizes uneven, as topics on the web are), and each row's cluster

Why not uniform random vectors: in high dimension every pair of them is nearly orthogonal, the
nearest neighbours are barely nearer than the rest, and every approximate index looks broken
(autofaiss reached recall@10 0.08 on them); real embeddings are clustered.
"""

from __future__ import annotations

import numpy as np


def clustered_vectors(n: int, d: int, clusters: int = 1000, spread: float = 0.5, seed: int = 0,
                      intrinsic: int = 12, noise: float = 0.05, chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """-> (vectors n x d float32, unit rows; cluster id of each row).

    Each cluster varies along its own `intrinsic` random directions (as embeddings of one topic vary
    along a few factors: pose, colour, background), plus a little isotropic noise; so distances
    inside a cluster are graded and the k nearest neighbours are well defined, as they are in CLIP's
    space, rather than the near-ties of isotropic high-dimensional noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = rng.standard_normal((clusters, intrinsic, d)).astype(np.float32) / np.sqrt(d)
    weights = rng.pareto(1.5, clusters) + 1.0
    labels = rng.choice(clusters, size=n, p=weights / weights.sum())
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, chunk):  # in chunks: 1M x 512 at once would double the memory
        stop = min(n, start + chunk)
        lab = labels[start:stop]
        z = rng.standard_normal((stop - start, intrinsic)).astype(np.float32) * spread
        block = centres[lab].copy()
        for c in np.unique(lab):  # per cluster: its rows times its basis (no rows x intrinsic x d array)
            rows = np.flatnonzero(lab == c)
            block[rows] += z[rows] @ bases[c]
        block += rng.standard_normal((stop - start, d)).astype(np.float32) * (noise / np.sqrt(d))
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out, labels
