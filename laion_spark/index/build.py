"""faiss work of the index stage, without Spark: train, add a part, merge parts, exact top-k.

INPUT  -> float32 matrices (rows L2-normalised by embed), int64 sample_ids, a Plan's factory key,
          serialized indices (bytes) or local index files
OUTPUT -> trained empty indices, populated parts (bytes), one merged index file (inverted lists in
          the file, or on disk in `knn.ivfdata` beside it), exact top-k lists for the recall check (with
          the vectors that tie the k-th score, so that a tied duplicate found in place of another counts)

Every index here is an IVF (plan.py: IVF1,Flat is the exact one), so every part takes sample_ids as
its faiss ids, merges into one index and memory-maps. The metric is inner product: on unit vectors,
the cosine.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

NO_ID = -1  # faiss marks a missing result with id -1; no sample_id may be -1 in an index
# two inner products of unit float32 vectors closer than this are one score: an exact duplicate scored by two
# code paths (BLAS here, an inverted list scan in the index) differs by a few 1e-7
TIE_TOLERANCE = 1e-5


def _faiss():
    import faiss

    return faiss


def new_index(key: str, d: int):
    faiss = _faiss()
    return faiss.index_factory(d, key, faiss.METRIC_INNER_PRODUCT)


def ivf_of(index):
    """Any index of ours (IVF, or a rotation in front of one) -> its IndexIVF."""
    return _faiss().extract_index_ivf(index)


def train(key: str, sample: np.ndarray, seed: int = 0):
    """Factory key + training sample (n x d float32) -> the trained, empty index."""
    index = new_index(key, sample.shape[1])
    ivf = ivf_of(index)
    ivf.cp.seed = seed  # k-means seeding: the same sample gives the same index
    pq = _faiss().downcast_index(ivf)
    if hasattr(pq, "do_polysemous_training"):
        # index_factory turns on polysemous training for IVF-PQ: two thirds of the training time (measured:
        # 47.6 s against 16.5 s for IVF512,PQ32x8 on 20k x 64) for codes that only a Hamming threshold
        # (the `ht` search parameter) uses, which the tuning never sets
        pq.do_polysemous_training = False
    if not index.is_trained:
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def to_bytes(index) -> bytes:
    return _faiss().serialize_index(index).tobytes()


def from_bytes(data: bytes):
    return _faiss().deserialize_index(np.frombuffer(data, dtype=np.uint8))


def add_part(trained: bytes, ids: np.ndarray, vectors: np.ndarray) -> bytes:
    """Trained index bytes + one part's ids and vectors -> the populated part (bytes)."""
    index = from_bytes(trained)
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    return to_bytes(index)


def merge_parts(trained: bytes, part_files: Iterable[str], out_file: str, ondisk: bool) -> int:
    """Trained index + local part files -> one index at out_file -> its vector count. With ondisk the
    inverted lists go to `knn.ivfdata` in out_file's folder (read back with IO_FLAG_ONDISK_SAME_DIR)."""
    faiss = _faiss()
    parts = list(part_files)
    if ondisk:
        from faiss.contrib.ondisk import merge_ondisk

        index = from_bytes(trained)
        ivfdata = os.path.join(os.path.dirname(out_file), "knn.ivfdata")
        if parts:
            merge_ondisk(index, parts, ivfdata)
        faiss.write_index(index, out_file)
        return int(index.ntotal)
    index = from_bytes(trained)
    target = ivf_of(index)
    for path in parts:
        part = faiss.read_index(path)  # read whole: merge_from empties its source, which a mapped file cannot be
        target.merge_from(ivf_of(part), 0)  # add_id 0: the parts' ids are the sample_ids already
        index.ntotal = target.ntotal  # a rotation in front of the IVF keeps its own count
        del part
    faiss.write_index(index, out_file)
    return int(index.ntotal)


def read_index(path: str, mmap: bool = True):
    """Local index file -> the index, memory-mapped where faiss can (on-disk lists beside it found)."""
    faiss = _faiss()
    if os.path.exists(os.path.join(os.path.dirname(path) or ".", "knn.ivfdata")):
        return faiss.read_index(path, faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
    return faiss.read_index(path, (faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY) if mmap else 0)


def _keep_ties(s: np.ndarray, i: np.ndarray, k: int, ties: int) -> tuple[np.ndarray, np.ndarray]:
    """One query's candidates (scores, ids) -> its top-k by score then id, then up to `ties` more whose
    score ties the k-th (within TIE_TOLERANCE)."""
    order = np.lexsort((i, -s))[: k + ties]  # by score, then id: the same order in every merge
    s, i = s[order], i[order]
    if len(s) > k:
        keep = k + int(np.count_nonzero(s[k:] >= s[k - 1] - TIE_TOLERANCE))
        s, i = s[:keep], i[:keep]
    return s, i


def exact_topk(queries: np.ndarray, query_ids: np.ndarray, vectors: np.ndarray, ids: np.ndarray,
               k: int, ties: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of each query over (vectors, ids), the query's own id left out (NO_ID:
    nothing left out) -> (scores nq x (k + ties), ids nq x (k + ties)): the top k by score then id, then
    up to `ties` more that tie the k-th score, padded with (-inf, NO_ID)."""
    faiss = _faiss()
    nq = len(queries)
    scores = np.full((nq, k + ties), -np.inf, dtype=np.float32)
    found = np.full((nq, k + ties), NO_ID, dtype=np.int64)
    if not len(ids) or not nq:
        return scores, found
    take = min(k + ties + 1, len(ids))  # one more: the query itself may be among them
    sims, rows = faiss.knn(np.ascontiguousarray(queries, dtype=np.float32),
                           np.ascontiguousarray(vectors, dtype=np.float32), take, metric=faiss.METRIC_INNER_PRODUCT)
    got = ids[rows]
    for q in range(nq):
        keep = got[q] != query_ids[q]
        s, i = _keep_ties(sims[q][keep], got[q][keep], k, ties)
        scores[q, : len(s)] = s
        found[q, : len(s)] = i
    return scores, found


def merge_topk(parts: Iterable[tuple[np.ndarray, np.ndarray]], k: int, ties: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-part exact (scores, ids) lists of the same queries (each as exact_topk gives it) -> the global
    top-k (scores, ids), nq x (k + ties), by score then id, with up to `ties` more that tie the k-th score,
    padded with (-inf, NO_ID). A part's list holds every one of its vectors that ties its own k-th score,
    which is no higher than the global k-th: the global ties are all among them (up to `ties`)."""
    parts = list(parts)
    scores = np.concatenate([p[0] for p in parts], axis=1)
    ids = np.concatenate([p[1] for p in parts], axis=1)
    out_s = np.full((scores.shape[0], k + ties), -np.inf, dtype=np.float32)
    out_i = np.full((scores.shape[0], k + ties), NO_ID, dtype=np.int64)
    for q in range(scores.shape[0]):
        real = ids[q] != NO_ID
        s, i = _keep_ties(scores[q][real], ids[q][real], k, ties)
        out_s[q, : len(s)] = s
        out_i[q, : len(s)] = i
    return out_s, out_i


class ShardSet:
    """Several indices of one space -> one searchable set: each shard searched, the lists merged by score.

    Why not faiss.IndexShards: over IVF shards read from files, faiss 1.15's merge interleaved the
    shards' lists instead of ranking them by score (recall@10 0.25 over 4 shards where the merged
    index had 0.95), so the merge is done here, where a test can see it."""

    def __init__(self, shards: list):
        if not shards:
            raise ValueError("a ShardSet needs at least one shard")
        self.shards = list(shards)
        self.d = int(self.shards[0].d)

    @property
    def ntotal(self) -> int:
        return int(sum(s.ntotal for s in self.shards))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """nq x d queries -> (scores, ids), nq x k, best first, padded with (-inf, NO_ID)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        got = [s.search(q, k) for s in self.shards]
        scores = np.concatenate([g[0] for g in got], axis=1)
        ids = np.concatenate([g[1] for g in got], axis=1)
        scores = np.where(ids == NO_ID, -np.inf, scores).astype(np.float32)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)

    def search_and_reconstruct(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> (scores, ids, the results' vectors as the shards' codes give them back), as faiss' own."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        got = [s.search_and_reconstruct(q, k) for s in self.shards]
        scores = np.concatenate([g[0] for g in got], axis=1)
        ids = np.concatenate([g[1] for g in got], axis=1)
        vectors = np.concatenate([g[2] for g in got], axis=1)
        scores = np.where(ids == NO_ID, -np.inf, scores).astype(np.float32)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return (np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1),
                np.take_along_axis(vectors, order[:, :, None], 1))

