"""A takedown on faiss index folders (no Spark): tombstones first, then the rows out of every index file.

INPUT  -> a run directory (its index folders: index/image, index/text, index/<field>/<model>/, any folder
          under index/ with an index_infos.json) and the sample_ids to remove
OUTPUT -> `folders`: those folders; `check`: TakedownError for one the takedown could not finish (no index
          file, on-disk lists missing, not an IVF index); `tombstone`: <folder>/tombstones.npy (sorted
          int64, every id ever taken down there) and index_infos.json's "tombstones" and "generation",
          which search and serve read, so the ids are never answered from the moment it is written;
          `remove`: each index file without the ids, the metadata parquet without their rows and
          index_infos.json's nb_vectors to match -> the files rewritten with their counts

Layouts: knn.index in memory (faiss remove_ids, written beside and moved over: a reader keeps the old
file until it reloads); shards/knn_*.index likewise; knn.index + knn.ivfdata (on-disk inverted lists,
every index over 1 GiB with index.ondisk=auto): each inverted list that holds an id is rewritten in
place in knn.ivfdata, its kept entries moved up and the freed tail zeroed (id -1), so no removed vector's
bytes stay in the file; then knn.index (which holds each list's size) is written beside and moved over.
A remote folder is copied to a local temporary folder, changed there and uploaded (ivfdata first).
Every step removes only what is still there: a takedown killed half-way is redone from its journal.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np

from laion_spark.takedown.rewrite import TakedownError, _fs, _replace, parquet_folder

INFOS = "index_infos.json"
TOMBSTONES = "tombstones.npy"


def folders(run_dir: str) -> list[str]:
    """-> every index folder under run_dir/index (an index_infos.json in it), as URIs, sorted."""
    fs, root = _fs(run_dir.rstrip("/") + "/index")
    if not fs.exists(root):
        return []
    prefix = run_dir.rstrip("/") + "/index"
    base = root.rstrip("/")
    from laion_spark.pipeline.job import BESIDE, REPLACED

    found = sorted(p.rstrip("/")[: -len(INFOS) - 1] for p in fs.glob(base + "/**/" + INFOS)
                   if BESIDE not in p and REPLACED not in p)  # a pipeline's leftovers: removed, not edited
    if fs.exists(f"{base}/{INFOS}"):
        found = sorted({base, *found})
    return [prefix + p[len(base):] for p in found]


def _infos(fs, folder: str) -> dict:
    with fs.open(f"{folder}/{INFOS}", "r") as fh:
        return json.load(fh)


def _write_infos(fs, folder: str, infos: dict) -> None:
    _replace(fs, f"{folder}/{INFOS}", (json.dumps(infos, indent=2, sort_keys=True) + "\n").encode())


def _index_files(fs, folder: str) -> list[str]:
    if fs.exists(folder + "/knn.index"):
        return [folder + "/knn.index"]
    return sorted(fs.glob(folder + "/shards/knn_*.index"))


def _ivfdata(fs, folder: str, infos: dict) -> str | None:
    name = (infos.get("layout") or {}).get("ivfdata")
    if name:
        return f"{folder}/{name}"
    return f"{folder}/knn.ivfdata" if fs.exists(f"{folder}/knn.ivfdata") else None


def check(uri: str) -> None:
    """An index folder -> TakedownError when the takedown could not remove rows from it."""
    fs, folder = _fs(uri)
    folder = folder.rstrip("/")
    try:
        infos = _infos(fs, folder)
    except (OSError, ValueError) as exc:
        raise TakedownError(f"{uri}: {INFOS} unreadable ({exc})") from None
    files = _index_files(fs, folder)
    if not files:
        raise TakedownError(f"{uri}: neither knn.index nor shards/knn_*.index")
    ivfdata = _ivfdata(fs, folder, infos)
    if ivfdata and not fs.exists(ivfdata):
        raise TakedownError(f"{uri}: its inverted lists {ivfdata} are missing")
    if not fs.exists(f"{folder}/metadata"):
        raise TakedownError(f"{uri}: no metadata/ folder")
    if type(fs).__name__ == "LocalFileSystem":
        import faiss

        from laion_spark.index.build import ivf_of

        flags = faiss.IO_FLAG_READ_ONLY | (faiss.IO_FLAG_ONDISK_SAME_DIR if ivfdata else faiss.IO_FLAG_MMAP)
        try:
            ivf_of(faiss.read_index(files[0], flags))
        except Exception as exc:  # noqa: BLE001 - faiss raises RuntimeError or a SWIG error: say which file
            raise TakedownError(f"{files[0]}: not an IVF index faiss can remove from ({exc})") from None


def tombstone(uri: str, ids) -> int:
    """Add ids to the folder's tombstones (written beside, then moved over) and bump index_infos.json's
    generation -> how many ids the folder's tombstones hold now."""
    fs, folder = _fs(uri)
    folder = folder.rstrip("/")
    path = f"{folder}/{TOMBSTONES}"
    old = np.zeros(0, np.int64)
    if fs.exists(path):
        with fs.open(path, "rb") as fh:
            old = np.load(fh)
    merged = np.union1d(old, np.asarray(list(ids), np.int64)).astype(np.int64)
    infos = _infos(fs, folder)
    if len(merged) == len(old) and infos.get("tombstones") == len(old):
        return len(old)  # a resumed takedown: already there
    import io

    buf = io.BytesIO()
    np.save(buf, merged)
    _replace(fs, path, buf.getvalue())
    infos["tombstones"] = int(len(merged))
    infos["generation"] = int(infos.get("generation", 0)) + 1
    _write_infos(fs, folder, infos)
    return int(len(merged))


def _remove_ondisk(index, wanted: np.ndarray) -> int:
    """An IVF index with on-disk lists (opened read-write) -> ids removed in place: per list, the kept
    entries first, the freed tail zeroed with id -1, then its size cut."""
    import faiss

    from laion_spark.index.build import ivf_of

    ivf = ivf_of(index)
    inv = ivf.invlists
    code_size = inv.code_size
    removed = 0
    if not len(wanted):
        return 0
    for lst in range(inv.nlist):
        n = inv.list_size(lst)
        if not n:
            continue
        ids = faiss.rev_swig_ptr(inv.get_ids(lst), n)  # a view of the mapped file: read, not copied
        # membership by binary search in the few wanted ids (np.isin sorts the whole list: 10x slower);
        # -1: a slot this code zeroed in a takedown killed before knn.index (the list sizes) was written
        at = np.minimum(np.searchsorted(wanted, ids), len(wanted) - 1)
        hit = (wanted[at] == ids) | (ids == -1)
        if not hit.any():
            continue
        ids = ids.copy()
        codes = faiss.rev_swig_ptr(inv.get_codes(lst), n * code_size).copy().reshape(n, code_size)
        keep_ids, keep_codes = np.ascontiguousarray(ids[~hit]), np.ascontiguousarray(codes[~hit])
        k = len(keep_ids)
        if k:
            inv.update_entries(lst, 0, k, faiss.swig_ptr(keep_ids), faiss.swig_ptr(keep_codes))
        blank_ids = np.full(n - k, -1, np.int64)
        blank_codes = np.zeros((n - k, code_size), np.uint8)
        inv.update_entries(lst, k, n - k, faiss.swig_ptr(blank_ids), faiss.swig_ptr(blank_codes))
        inv.resize(lst, k)
        removed += n - k
    ivf.ntotal -= removed
    index.ntotal = ivf.ntotal  # a transform in front of the IVF keeps its own count
    return removed


def _ondisk(fs, folder: str, infos: dict, wanted: np.ndarray) -> tuple[list[dict], int]:
    import faiss

    local = type(fs).__name__ == "LocalFileSystem"
    work = folder if local else tempfile.mkdtemp(prefix="laion-spark-takedown-")
    ivfdata = _ivfdata(fs, folder, infos)
    name = ivfdata.rsplit("/", 1)[-1]
    try:
        if not local:
            fs.get(f"{folder}/knn.index", os.path.join(work, "knn.index"))
            fs.get(ivfdata, os.path.join(work, name))
        index = faiss.read_index(os.path.join(work, "knn.index"), faiss.IO_FLAG_ONDISK_SAME_DIR)
        removed = _remove_ondisk(index, wanted)
        ntotal = int(index.ntotal)
        if not removed:
            return [], ntotal
        tmp = os.path.join(work, ".takedown-knn.index")
        faiss.write_index(index, tmp)
        del index  # unmaps knn.ivfdata
        if local:
            os.replace(tmp, os.path.join(work, "knn.index"))
        else:
            fs.put(os.path.join(work, name), ivfdata)
            with open(tmp, "rb") as fh:
                _replace(fs, f"{folder}/knn.index", fh.read())
        return [{"file": ivfdata, "removed": removed}, {"file": f"{folder}/knn.index", "removed": removed}], ntotal
    finally:
        if not local:
            shutil.rmtree(work, ignore_errors=True)


def remove(uri: str, ids) -> list[dict]:
    """An index folder -> each index file holding ids without them, its metadata and index_infos.json's
    count to match -> [{file, removed}] for each file rewritten."""
    import faiss

    fs, folder = _fs(uri)
    folder = folder.rstrip("/")
    infos = _infos(fs, folder)
    wanted = np.array(sorted(set(int(i) for i in ids)), dtype=np.int64)
    done: list[dict] = []
    if _ivfdata(fs, folder, infos):
        files, ntotal = _ondisk(fs, folder, infos, wanted)
        done += files
    else:
        ntotal = 0
        for path in _index_files(fs, folder):
            with fs.open(path, "rb") as fh:
                index = faiss.deserialize_index(np.frombuffer(fh.read(), dtype=np.uint8))
            removed = int(index.remove_ids(faiss.IDSelectorBatch(wanted)))
            ntotal += int(index.ntotal)
            if removed:
                _replace(fs, path, faiss.serialize_index(index).tobytes())
                done.append({"file": path, "removed": removed})
    done += parquet_folder(f"{folder}/metadata", wanted, "sample_id")
    infos = _infos(fs, folder)
    if int(infos.get("nb_vectors", -1)) != ntotal:  # counted from the files: right on a resumed takedown too
        infos["nb_vectors"] = ntotal
        _write_infos(fs, folder, infos)
    return done
