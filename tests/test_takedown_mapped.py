"""Issue 28: an index whose lists are in knn.index (merged in memory, or shards/knn_*.index) loses the ids
without being read into memory: the file is opened memory-mapped and written anew list by list (no Spark).

The expectation is computed independently here: the same file read whole by faiss, each list's kept
entries put back in their order through faiss' own ArrayInvertedLists, serialised by faiss. The takedown's
file must be byte for byte that; and while it runs, faiss may neither deserialise an index nor read one
without IO_FLAG_MMAP (the test fails if the code loads a whole index).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import faiss
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laion_spark.takedown import index_files as I

D = 16
READ_WHOLE = faiss.read_index  # for the expectations: the code under test gets a guarded one


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)


def _ids(n: int) -> np.ndarray:
    # spread like the pipeline's hashed sample_ids, negative ones included
    with np.errstate(over="ignore"):
        return ((np.arange(n, dtype=np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)).astype(np.int64)


def _index(key: str, n: int, train: int = 600):
    index = faiss.index_factory(D, key)
    index.train(_vectors(train, 1))
    index.add_with_ids(_vectors(n), _ids(n))
    return index


def _folder(root: Path, indices: list, shards: bool) -> Path:
    folder = root / "run" / "index" / "image"
    (folder / "metadata").mkdir(parents=True)
    if shards:
        (folder / "shards").mkdir()
        for s, index in enumerate(indices):
            faiss.write_index(index, str(folder / "shards" / f"knn_{s:05d}.index"))
    else:
        faiss.write_index(indices[0], str(folder / "knn.index"))
    total = sum(int(i.ntotal) for i in indices)
    pq.write_table(pa.table({"sample_id": np.sort(_ids(total))}), folder / "metadata" / "part-00000.parquet")
    (folder / "index_infos.json").write_text(json.dumps({"nb_vectors": total, "dimension": D}))
    return folder


def expected_bytes(path: Path, gone) -> bytes:
    """The file read whole, each list without the ids (kept entries in their order), serialised by faiss."""
    index = READ_WHOLE(str(path))
    ivf = faiss.extract_index_ivf(index)
    inv = faiss.downcast_InvertedLists(ivf.invlists)
    removed = 0
    for lst in range(inv.nlist):
        n = inv.list_size(lst)
        if not n:
            continue
        ids = faiss.rev_swig_ptr(inv.get_ids(lst), n).copy()
        codes = faiss.rev_swig_ptr(inv.get_codes(lst), n * inv.code_size).copy().reshape(n, inv.code_size)
        keep = ~np.isin(ids, gone)
        if keep.all():
            continue
        inv.resize(lst, 0)
        kept_ids, kept_codes = np.ascontiguousarray(ids[keep]), np.ascontiguousarray(codes[keep])  # alive for faiss
        if keep.any():
            inv.add_entries(lst, int(keep.sum()), faiss.swig_ptr(kept_ids), faiss.swig_ptr(kept_codes))
        removed += int((~keep).sum())
    ivf.ntotal -= removed
    index.ntotal = ivf.ntotal
    return faiss.serialize_index(index).tobytes()


@pytest.fixture
def no_whole_index(monkeypatch):
    """faiss may read an index only memory-mapped while the takedown runs."""
    real = faiss.read_index
    reads = []

    def mapped_only(path, flags=0):
        assert flags & faiss.IO_FLAG_MMAP == faiss.IO_FLAG_MMAP, f"{path} read whole (flags {flags})"
        reads.append(path)
        return real(path, flags)

    def refuse(*a, **k):
        raise AssertionError("an index deserialised whole")

    monkeypatch.setattr(faiss, "read_index", mapped_only)
    monkeypatch.setattr(faiss, "deserialize_index", refuse)
    return reads


# IVF4: every list holds entries (faiss writes "full" sizes); IVF64 over 40 vectors: most lists are empty
# ("sprs"); PCA in front of IVF-PQ: a transform before the lists and a code size of its own; SQ8
@pytest.mark.parametrize("key,n", [("IVF4,Flat", 300), ("IVF64,Flat", 40), ("PCA8,IVF8,PQ4x4", 300),
                                   ("IVF4,SQ8", 300)])
def test_a_merged_index_is_written_list_by_list_as_faiss_would_write_it(tmp_path, key, n, no_whole_index):
    folder = _folder(tmp_path, [_index(key, n)], shards=False)
    ids = _ids(n)
    gone = [int(ids[0]), int(ids[n // 2]), int(ids[-1]), 12345]  # 12345: in no list
    want = expected_bytes(folder / "knn.index", gone)
    done = I.remove(str(folder), gone)
    assert [(Path(d["file"]).name, d["removed"]) for d in done] == [("knn.index", 3), ("part-00000.parquet", 3)]
    assert (folder / "knn.index").read_bytes() == want
    assert no_whole_index == [str(folder / "knn.index")]  # opened once, mapped
    assert json.loads((folder / "index_infos.json").read_text())["nb_vectors"] == n - 3
    before = (folder / "knn.index").read_bytes()
    assert I.remove(str(folder), gone) == [] and (folder / "knn.index").read_bytes() == before  # resumed: no-op


def test_shards_holding_none_of_the_ids_are_not_rewritten(tmp_path, no_whole_index):
    parts = [_index("IVF4,Flat", 300) for _ in range(3)]
    # three shards of distinct ids: shard s holds ids[s*100:(s+1)*100] (rebuilt so)
    all_ids, x = _ids(300), _vectors(300)
    for s, part in enumerate(parts):
        part.reset()
        part.add_with_ids(x[s * 100:(s + 1) * 100], all_ids[s * 100:(s + 1) * 100])
    folder = _folder(tmp_path, parts, shards=True)
    files = sorted((folder / "shards").glob("*.index"))
    stat = {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files}
    gone = [int(all_ids[150]), int(all_ids[199])]
    want = expected_bytes(files[1], gone)
    done = I.remove(str(folder), gone)
    assert [Path(d["file"]).name for d in done] == ["knn_00001.index", "part-00000.parquet"]
    assert files[1].read_bytes() == want
    for f in (files[0], files[2]):
        assert (f.read_bytes(), f.stat().st_mtime_ns) == stat[f]
    assert json.loads((folder / "index_infos.json").read_text())["nb_vectors"] == 298
    found = set()
    for f in files:
        index = faiss.read_index(str(f), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        faiss.extract_index_ivf(index).nprobe = 4
        found |= set(index.search(x, 100)[1].ravel().tolist()) - {-1}
    assert found == set(all_ids.tolist()) - set(gone)


def test_a_remote_index_is_mapped_from_a_local_copy(tmp_path, no_whole_index):
    local = _folder(tmp_path, [_index("IVF4,Flat", 300)], shards=False)
    gone = [int(_ids(300)[7])]
    want = expected_bytes(local / "knn.index", gone)
    fs = fsspec.filesystem("memory")
    fs.put(str(local), "/takedown-mapped/image", recursive=True)
    try:
        done = I.remove("memory://takedown-mapped/image", gone)
        assert [d["removed"] for d in done] == [1, 1]
        assert fs.cat("/takedown-mapped/image/knn.index") == want
        assert not any(".takedown-" in p for p in fs.find("/takedown-mapped"))
    finally:
        fs.rm("/takedown-mapped", recursive=True)


def test_an_index_faiss_cannot_map_is_still_taken_down_whole_with_a_warning(tmp_path, caplog):
    # fast-scan lists are blocks faiss does not map: the fallback reads the file whole and says so
    folder = _folder(tmp_path, [_index("IVF4,PQ4x4fs", 300)], shards=False)
    gone = [int(_ids(300)[3]), int(_ids(300)[100])]
    with caplog.at_level(logging.WARNING, logger="laion_spark.takedown.index_files"):
        done = I.remove(str(folder), gone)
    assert done[0]["removed"] == 2 and "read whole into memory" in caplog.text
    index = faiss.read_index(str(folder / "knn.index"))
    assert index.ntotal == 298
    faiss.extract_index_ivf(index).nprobe = 4
    assert not set(gone) & set(index.search(_vectors(300), 50)[1].ravel().tolist())
