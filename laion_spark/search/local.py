"""Where a searched index lives on this machine, and which version of it that is.

INPUT  -> an index URI (a local folder, s3://, gs://, dbfs:/, /Volumes/...) and search.cache_dir
OUTPUT -> `read_state`: the index's version as its bytes say it (index_infos.json, tombstones.npy);
          the local folder faiss opens (the folder itself when local; else a copy in the cache, reused
          while that version is the same), and a cache folder of its own (for the metadata's locator,
          built only where the metadata files are not sorted by sample_id: metadata.py)

Why a copy: faiss memory-maps local files only; an index larger than RAM is searched from local
disk, not read into memory from an object store.

Why a cache folder per version, and the older ones of the same URI removed: a takedown writes
tombstones.npy and a new index_infos.json; a copy or locator of the version before still holds the
removed rows (or their ids), which must not stay on this disk (a process still mapping them keeps its mapping).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil

from laion_spark.io import fsspec_uri

log = logging.getLogger(__name__)

INFOS = "index_infos.json"
# sorted, unique int64 sample_ids (np.save) that no answer may hold, whatever the index files still do:
# a takedown writes it first, then rewrites (or later rebuilds) the index files
TOMBSTONES = "tombstones.npy"
# Databricks' FUSE mounts of remote storage (dbfs:/ is read at /dbfs/, Unity Catalog volumes at /Volumes/):
# local paths to fsspec, but each page faiss touches through a memory map would be a request to the store
REMOTE_MOUNTS = ("/dbfs/", "/Volumes/")


def default_cache_dir() -> str:
    root = os.environ.get("LAION_SPARK_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "laion-spark")
    return os.path.join(root, "search")


def _fs(uri: str):
    import fsspec

    return fsspec.core.url_to_fs(fsspec_uri(uri))


def is_local(uri: str) -> bool:
    """-> whether the index at uri can be searched where it is (a local disk), rather than from a copy."""
    fs, path = _fs(uri)
    if type(fs).__name__ != "LocalFileSystem":
        return False
    path = os.path.abspath(path)
    return not any((path + "/").startswith(m) for m in REMOTE_MOUNTS)


def read_state(uri: str) -> tuple[bytes, bytes | None]:
    """Index folder URI -> (its index_infos.json's bytes, its tombstones.npy's bytes or None): what a
    Searcher compares to know whether the index changed. Infos are read first: a takedown writes the
    tombstones before the infos, so tombstones read after are never older than the infos read."""
    fs, path = _fs(uri)
    base = path.rstrip("/")
    try:
        with fs.open(f"{base}/{INFOS}", "rb") as fh:
            infos = fh.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri} is not an index folder: it has no {INFOS} (the index stage writes one)") \
            from None
    try:
        with fs.open(f"{base}/{TOMBSTONES}", "rb") as fh:
            tombstones = fh.read()
    except FileNotFoundError:
        tombstones = None
    return infos, tombstones


def read_infos(uri: str) -> dict:
    """Index folder URI -> its index_infos.json (FileNotFoundError naming what is missing)."""
    return json.loads(read_state(uri)[0])


def _uri_key(uri: str) -> str:
    return hashlib.sha256(fsspec_uri(uri).rstrip("/").encode()).hexdigest()[:16]


def cache_folder(uri: str, infos: dict, cache_dir: str = "", tombstones: bytes | None = None) -> str:
    """-> this index version's own folder in the cache, `<hash of URI>-<hash of infos + tombstones>`; the
    folders of other versions of the same URI are removed (they hold rows a takedown removed since)."""
    root = cache_dir or default_cache_dir()
    version = hashlib.sha256(json.dumps(infos, sort_keys=True).encode() + b"\n" + (tombstones or b""))
    own = _uri_key(uri)
    folder = os.path.join(root, f"{own}-{version.hexdigest()[:16]}")
    os.makedirs(folder, exist_ok=True)
    for old in glob.glob(os.path.join(glob.escape(root), own + "-*")):
        if old != folder:
            try:
                shutil.rmtree(old)
            except FileNotFoundError:  # another process removed it first
                pass
            except OSError as exc:
                log.warning("search: could not remove %s, the cache of an older version of %s: %s", old, uri, exc)
    return folder


def local_index_folder(uri: str, infos: dict, cache: str, tombstones: bytes | None = None) -> str:
    """-> a local folder holding the index files (uri itself when local; else, remote or on a FUSE mount
    of remote storage, copied into cache/index, once: a finished copy is marked by its own
    index_infos.json, written last). The metadata is not copied: it is read where it lies (metadata.py)."""
    fs, path = _fs(uri)
    if is_local(uri):
        return path
    local = os.path.join(cache, "index")
    if os.path.exists(os.path.join(local, INFOS)):
        return local
    os.makedirs(local, exist_ok=True)
    base = path.rstrip("/")
    # *.ivfdata: the on-disk lists, under the name knn.index gives them (a takedown may rename them)
    for remote in [f"{base}/knn.index", *fs.glob(f"{base}/*.ivfdata")]:
        if fs.exists(remote) and not remote.rsplit("/", 1)[-1].startswith("."):  # not a file being written
            fs.get(remote, os.path.join(local, remote.rstrip("/").rsplit("/", 1)[-1]))
    if fs.exists(f"{base}/shards"):
        fs.get(f"{base}/shards/", os.path.join(local, "shards") + "/", recursive=True)
    if tombstones is not None:  # the bytes this version was read with, not a newer file
        with open(os.path.join(local, TOMBSTONES), "wb") as fh:
            fh.write(tombstones)
    with open(os.path.join(local, INFOS), "w") as fh:
        json.dump(infos, fh)
    return local
