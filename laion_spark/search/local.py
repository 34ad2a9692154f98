"""Where a searched index lives on this machine.

INPUT  -> an index URI (a local folder, s3://, gs://, dbfs:/, /Volumes/...) and search.cache_dir
OUTPUT -> the local folder faiss opens (the folder itself when local; else a copy in the cache,
          reused while the remote index_infos.json is the same), and a cache folder of its own for
          the metadata lookup files

Why a copy: faiss memory-maps local files only; an index larger than RAM is searched from local
disk, not read into memory from an object store.
"""

from __future__ import annotations

import hashlib
import json
import os

from laion_spark.io import fsspec_uri

INFOS = "index_infos.json"
FILES = ("knn.index", "knn.ivfdata", INFOS)
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


def read_infos(uri: str) -> dict:
    """Index folder URI -> its index_infos.json (FileNotFoundError naming what is missing)."""
    fs, path = _fs(uri)
    target = f"{path.rstrip('/')}/{INFOS}"
    if not fs.exists(target):
        raise FileNotFoundError(f"{uri} is not an index folder: it has no {INFOS} (the index stage writes one)")
    with fs.open(target, "r") as fh:
        return json.load(fh)


def cache_folder(uri: str, infos: dict, cache_dir: str = "") -> str:
    """-> this index's own folder in the cache, named by its URI and its index_infos.json's content
    (a rebuilt index at the same URI gets a new folder, never stale lookup files)."""
    key = hashlib.sha256((fsspec_uri(uri).rstrip("/") + "\n" + json.dumps(infos, sort_keys=True)).encode())
    folder = os.path.join(cache_dir or default_cache_dir(), key.hexdigest()[:20])
    os.makedirs(folder, exist_ok=True)
    return folder


def local_index_folder(uri: str, infos: dict, cache: str) -> str:
    """-> a local folder holding the index files (uri itself when local; else, remote or on a FUSE mount
    of remote storage, copied into cache/index, once: a finished copy is marked by its own
    index_infos.json, written last)."""
    fs, path = _fs(uri)
    if is_local(uri):
        return path
    local = os.path.join(cache, "index")
    if os.path.exists(os.path.join(local, INFOS)):
        return local
    os.makedirs(local, exist_ok=True)
    base = path.rstrip("/")
    for name in FILES[:-1]:
        if fs.exists(f"{base}/{name}"):
            fs.get(f"{base}/{name}", os.path.join(local, name))
    if fs.exists(f"{base}/shards"):
        fs.get(f"{base}/shards/", os.path.join(local, "shards") + "/", recursive=True)
    if fs.exists(f"{base}/metadata"):
        fs.get(f"{base}/metadata/", os.path.join(local, "metadata") + "/", recursive=True)
    with open(os.path.join(local, INFOS), "w") as fh:
        json.dump(infos, fh)
    return local
