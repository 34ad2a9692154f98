"""Takedown on a real-size on-disk index: time to remove a few ids from an IVF index whose inverted lists are
in knn.ivfdata (index.ondisk, every index over 1 GiB), against faiss' own remove_ids on the same file
opened read-write (which swaps entries in place and leaves the freed slots as they were).

    SPARK_LOCAL_IP=127.0.0.1 .venv/bin/python bench/takedown.py [--vectors 4000000] [--remove 100]

INPUT  -> sizes on the command line; random vectors (the cost depends on the list sizes and code size,
          not on the values)
OUTPUT -> per method: seconds, vectors scanned per second, how many removed ids are still readable in
          knn.ivfdata; the ratio; both checked to remove every id

The ondisk method is laion_spark/takedown/index_files.py (tombstones, then each list holding an id
rewritten in place with its freed tail zeroed, then knn.index written beside and moved over). No Spark.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np


def sample_ids(rows: np.ndarray) -> np.ndarray:
    """Row numbers -> 63-bit ids spread like the pipeline's hashed sample_ids (so that the byte search for a
    removed id cannot match a small number's zero bytes by chance)."""
    with np.errstate(over="ignore"):
        return ((rows.astype(np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15) >> np.uint64(1)).astype(
            np.int64)


def build(folder: str, n: int, d: int, key: str, chunk: int = 500_000) -> None:
    """An on-disk IVF index of n random vectors in folder (ids: sample_ids(0..n-1)), as the index stage
    lays it out."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    rng = np.random.default_rng(0)
    trained = faiss.index_factory(d, key)
    trained.train(rng.standard_normal((min(n, 100_000), d)).astype(np.float32))
    parts = []
    for start in range(0, n, chunk):
        part = faiss.clone_index(trained)
        ids = sample_ids(np.arange(start, min(n, start + chunk)))
        part.add_with_ids(rng.standard_normal((len(ids), d)).astype(np.float32), ids)
        path = os.path.join(folder, f"part{start}.index")
        faiss.write_index(part, path)
        parts.append(path)
        del part
    index = faiss.clone_index(trained)
    merge_ondisk(index, parts, os.path.join(folder, "knn.ivfdata"))
    faiss.write_index(index, os.path.join(folder, "knn.index"))
    for p in parts:
        os.remove(p)
    os.makedirs(os.path.join(folder, "metadata"))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"sample_id": np.sort(sample_ids(np.arange(n)))}),
                   os.path.join(folder, "metadata", "p.parquet"))
    with open(os.path.join(folder, "index_infos.json"), "w") as fh:
        json.dump({"nb_vectors": n, "dimension": d, "layout": {"index_file": "knn.index", "ivfdata": "knn.ivfdata"}},
                  fh)


def last_ids(folder: str, lists: int) -> np.ndarray:
    """-> the last id of each of the first `lists` non-empty inverted lists (faiss' in-place remove keeps
    the bytes of a removed entry that was last in its list)."""
    import faiss

    index = faiss.read_index(os.path.join(folder, "knn.index"), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
    inv = faiss.extract_index_ivf(index).invlists
    out = []
    for lst in range(inv.nlist):
        n = inv.list_size(lst)
        if n and len(out) < lists:
            out.append(int(faiss.rev_swig_ptr(inv.get_ids(lst), n)[n - 1]))
    return np.array(out, dtype=np.int64)


def faiss_in_place(folder: str, gone: np.ndarray) -> int:
    """The baseline: faiss' own remove_ids on the on-disk index opened read-write (its lists edited in place
    by swapping the last entry in), then knn.index written again."""
    import faiss

    index = faiss.read_index(os.path.join(folder, "knn.index"), faiss.IO_FLAG_ONDISK_SAME_DIR)
    removed = int(index.remove_ids(faiss.IDSelectorBatch(gone)))
    faiss.write_index(index, os.path.join(folder, "knn.index"))
    return removed


def left_in_file(folder: str, gone: np.ndarray) -> int:
    """-> how many removed ids still have their 8 bytes somewhere in knn.ivfdata (freed slots not cleared)."""
    with open(os.path.join(folder, "knn.ivfdata"), "rb") as fh:
        data = fh.read()
    return sum(int(i).to_bytes(8, "little", signed=True) in data for i in gone)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vectors", type=int, default=4_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--key", default="IVF4096,PQ32")
    parser.add_argument("--remove", type=int, default=100, help="random ids to remove")
    parser.add_argument("--last", type=int, default=10, help="and the last id of this many lists")
    args = parser.parse_args()
    from laion_spark.takedown import index_files as I

    root = tempfile.mkdtemp(prefix="bench-takedown-")
    try:
        folder = os.path.join(root, "index", "image")
        os.makedirs(folder)
        started = time.time()
        build(folder, args.vectors, args.dim, args.key)
        size = os.path.getsize(os.path.join(folder, "knn.ivfdata"))
        print(f"built {args.vectors:,} vectors ({args.key}, d={args.dim}): knn.ivfdata {size / 2**20:,.0f} MiB "
              f"in {time.time() - started:.1f} s")
        gone = sample_ids(np.random.default_rng(1).choice(args.vectors, args.remove, replace=False))
        gone = np.unique(np.concatenate([gone, last_ids(folder, args.last)]))
        baseline_copy = os.path.join(root, "baseline")
        shutil.copytree(folder, baseline_copy)

        from laion_spark.takedown.rewrite import _fs

        _fs(folder)  # imports (fsspec, pyspark through laion_spark.io) before the clock starts
        t0 = time.time()
        removed_base = faiss_in_place(baseline_copy, gone)
        base_s = time.time() - t0

        t1 = time.time()
        I.tombstone(folder, gone)
        files = I.remove(folder, gone)
        ours_s = time.time() - t1
        removed_ours = files[0]["removed"] if files else 0
        assert removed_ours == removed_base == len(gone), (removed_ours, removed_base)
        n = args.vectors
        print(f"faiss remove_ids in place: {base_s:.2f} s, {n / base_s:,.0f} vectors/s; "
              f"removed ids still in knn.ivfdata: {left_in_file(baseline_copy, gone)} of {len(gone)}")
        print(f"laion-spark (tombstones, lists in place, tails zeroed, header): {ours_s:.2f} s, {n / ours_s:,.0f} "
              f"vectors/s; removed ids still in "
              f"knn.ivfdata: {left_in_file(folder, gone)} of {len(gone)}")
        print(f"ratio (baseline time / ours): {base_s / ours_s:.2f}x; removed {removed_ours} of {len(gone)} "
              f"({args.remove} random, {args.last} last in their list)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
