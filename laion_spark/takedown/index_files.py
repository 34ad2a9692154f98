"""A takedown on faiss index folders (no Spark): tombstones first, then the rows out of every index file.

INPUT  -> a run directory (its index folders: index/image, index/text, index/<field>/<model>/, any folder
          under index/ with an index_infos.json) and the sample_ids to remove
OUTPUT -> `folders`: those folders; `check`: TakedownError for one the takedown could not finish (no index
          file, on-disk lists missing, not an IVF index); `tombstone`: <folder>/tombstones.npy (sorted
          int64, every id ever taken down there) and index_infos.json's "tombstones" and "generation",
          which search and serve read, so the ids are never answered from the moment it is written;
          `remove`: each index file without the ids, the metadata parquet without their rows and
          index_infos.json's nb_vectors to match -> the files rewritten with their counts

Layouts: knn.index whose lists are in the file (the index stage's default; served memory-mapped) and
shards/knn_*.index: each file opened memory-mapped (IO_FLAG_MMAP: the lists stay in the file, read
through the page cache), its lists' ids scanned, and where one holds an id the file written anew beside
it, list by list (the header as faiss writes it with no lists, then each list's kept entries, in their
order, from the mapped file), and moved over: a reader keeps the old file until it reloads. The driver
holds the header (quantizer included) and one list at a time, never the index; a remote file is copied
to a local temporary file for the mapping. An index faiss cannot map that way (lists not in faiss'
array layout, such as fast-scan blocks, or with a direct map) is deserialised whole and faiss'
remove_ids used, as before, with a warning; the index stage builds none.
knn.index + knn.ivfdata (on-disk inverted lists, every index over 1 GiB with index.ondisk=auto): each
inverted list that holds an id is rewritten in place in knn.ivfdata, its kept entries moved up and the
freed tail zeroed (id -1), so no removed vector's bytes stay in the file; then knn.index (which holds
each list's size) is written beside and moved over.
A remote folder is copied to a local temporary folder, changed there and uploaded (ivfdata first).
Every step removes only what is still there: a takedown killed half-way is redone from its journal.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import tempfile

import numpy as np

from laion_spark.takedown.rewrite import TakedownError, _fs, _replace, _replace_with, parquet_folder

log = logging.getLogger(__name__)

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


def _hits(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """A list's ids (a view of the mapped file) -> which of them are wanted (binary search in the few
    wanted ids: np.isin would sort the whole list)."""
    at = np.minimum(np.searchsorted(wanted, ids), len(wanted) - 1)
    return wanted[at] == ids


def _frame(index, ivf, ntotal: int) -> tuple[bytes, bytes]:
    """A mapped IVF index -> (the bytes faiss writes before its inverted lists, those after them), with
    ntotal vectors: faiss serialises it with empty array lists in place of the mapped ones, and the
    empty lists' section is cut out. TakedownError where that section is not found exactly once."""
    import faiss

    mapped, old_total = ivf.invlists, (int(index.ntotal), int(ivf.ntotal))
    empty = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.own_invlists = False  # the mapped lists stay alive while the empty ones stand in
    ivf.replace_invlists(empty, False)
    ivf.ntotal = index.ntotal = ntotal
    try:
        data = faiss.serialize_index(index).tobytes()
    finally:
        ivf.replace_invlists(mapped, True)  # freed with the index again
        index.ntotal, ivf.ntotal = old_total
    section = b"ilar" + struct.pack("=QQ", ivf.nlist, ivf.code_size) + b"sprs" + struct.pack("=Q", 0)
    at = data.find(section)
    if at < 0 or data.find(section, at + 1) >= 0:
        raise TakedownError("the index's inverted lists could not be told apart from its header")
    return data[:at], data[at + len(section):]


def _sizes_section(nlist: int, code_size: int, sizes: np.ndarray) -> bytes:
    """The start of faiss' array-lists section ("ilar", index_write.cpp) for these list sizes: full sizes
    when more than half the lists hold entries, else (list, size) pairs of those that do."""
    out = b"ilar" + struct.pack("=QQ", nlist, code_size)
    nonzero = np.flatnonzero(sizes)
    if len(nonzero) > nlist // 2:
        return out + b"full" + struct.pack("=Q", nlist) + sizes.astype(np.uint64).tobytes()
    pairs = np.stack([nonzero, sizes[nonzero]], axis=1).astype(np.uint64).ravel()
    return out + b"sprs" + struct.pack("=Q", len(pairs)) + pairs.tobytes()


def _mappable(index, ivf) -> bool:
    import faiss

    if type(faiss.downcast_InvertedLists(ivf.invlists)).__name__ != "OnDiskInvertedLists":
        return False  # lists in a layout faiss does not map from the file (fast-scan blocks)
    return ivf.direct_map.type == faiss.DirectMap.NoMap  # a direct map would hold every id in the header


def _remove_mapped(fs, path: str, wanted: np.ndarray) -> tuple[int, int] | None:
    """An index file whose lists are in it -> the ids removed by writing it anew list by list from the
    mapped file (beside it, then moved over) -> (removed, vectors left); None where faiss cannot map it."""
    import faiss

    from laion_spark.index.build import ivf_of

    local = type(fs).__name__ == "LocalFileSystem"
    work = None if local else tempfile.mkdtemp(prefix="laion-spark-takedown-")
    try:
        source = path if local else os.path.join(work, "knn.index")
        if not local:
            fs.get(path, source)
        index = faiss.read_index(source, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        ivf = ivf_of(index)
        if not _mappable(index, ivf):
            return None
        inv, code_size = ivf.invlists, ivf.code_size
        sizes = np.array([inv.list_size(lst) for lst in range(inv.nlist)], dtype=np.int64)
        hit_lists = {}
        for lst in np.flatnonzero(sizes) if len(wanted) else []:
            n = int(inv.list_size(int(lst)))
            hits = int(_hits(faiss.rev_swig_ptr(inv.get_ids(int(lst)), n), wanted).sum())
            if hits:
                hit_lists[int(lst)] = hits
        removed = sum(hit_lists.values())
        ntotal = int(index.ntotal) - removed
        if not removed:
            return 0, ntotal
        try:
            head, tail = _frame(index, ivf, ntotal)
        except TakedownError:
            return None  # read whole instead
        kept_sizes = sizes.copy()
        for lst, hits in hit_lists.items():
            kept_sizes[lst] -= hits

        def write(fh) -> None:
            fh.write(head)
            fh.write(_sizes_section(inv.nlist, code_size, kept_sizes))
            for lst in np.flatnonzero(sizes):
                lst, n = int(lst), int(sizes[lst])
                codes = faiss.rev_swig_ptr(inv.get_codes(lst), n * code_size)  # views of the mapped file
                ids = faiss.rev_swig_ptr(inv.get_ids(lst), n)
                if lst in hit_lists:
                    keep = ~_hits(ids, wanted)
                    codes, ids = codes.reshape(n, code_size)[keep], ids[keep]  # this list's kept entries only
                fh.write(np.ascontiguousarray(codes).data)
                fh.write(np.ascontiguousarray(ids).data)
            fh.write(tail)

        _replace_with(fs, path, write)
        return removed, ntotal
    finally:
        index = ivf = inv = None  # unmaps the file before a remote copy goes
        if work:
            shutil.rmtree(work, ignore_errors=True)


def _remove_in_memory(fs, path: str, wanted: np.ndarray) -> tuple[int, int]:
    """The fallback for an index faiss cannot map list by list: deserialised whole, faiss' remove_ids."""
    import faiss

    log.warning("takedown: %s: lists not in faiss' array layout, a direct map, or a header that could not be "
                "cut; read whole into memory to remove %d ids", path, len(wanted))
    with fs.open(path, "rb") as fh:
        index = faiss.deserialize_index(np.frombuffer(fh.read(), dtype=np.uint8))
    removed = int(index.remove_ids(faiss.IDSelectorBatch(wanted)))
    if removed:
        _replace(fs, path, faiss.serialize_index(index).tobytes())
    return removed, int(index.ntotal)


def remove(uri: str, ids, metadata_files=None) -> list[dict]:
    """An index folder -> each index file holding ids without them, its metadata (of metadata_files alone,
    where the takedown found them with Spark) and index_infos.json's count to match -> [{file, removed}]
    for each file rewritten."""
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
            got = _remove_mapped(fs, path, wanted)
            removed, left = got if got is not None else _remove_in_memory(fs, path, wanted)
            ntotal += left
            if removed:
                done.append({"file": path, "removed": removed})
    # by the folder's URI: the fs path lacks a remote store's scheme
    done += parquet_folder(uri.rstrip("/") + "/metadata", wanted, "sample_id", metadata_files)
    infos = _infos(fs, folder)
    if int(infos.get("nb_vectors", -1)) != ntotal:  # counted from the files: right on a resumed takedown too
        infos["nb_vectors"] = ntotal
        _write_infos(fs, folder, infos)
    return done
