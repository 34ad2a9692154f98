"""Content hashes of files (checkpoints, hash lists, markers): a URI -> a short hex digest of its bytes.

INPUT  -> a URI fsspec can open (local path, file:, s3://, dbfs:/ ...)
OUTPUT -> the sha256 of its content, cut to `chars` hex digits; cached per process by (URI, size,
          modification time) so a 600 MB checkpoint is read once, not once per use

Why content, not path: two different `epoch_latest.pt` files are two embedding spaces, and one file
copied to another bucket is the same one (stage markers and clip_model names rely on this).
"""

from __future__ import annotations

import hashlib
import threading

_CACHE: dict[tuple, str] = {}
_LOCK = threading.Lock()
_CHUNK = 4 * 1024 * 1024


def content_hash(uri: str, chars: int = 16) -> str:
    """URI -> the first `chars` hex digits of the sha256 of its bytes (FileNotFoundError if absent)."""
    import fsspec

    from laion_spark.io import fsspec_uri

    fs, path = fsspec.core.url_to_fs(fsspec_uri(uri))
    info = fs.info(path)
    key = (uri, info.get("size"), info.get("mtime") or info.get("LastModified") or info.get("ETag"))
    with _LOCK:
        hit = _CACHE.get(key)
    if hit is None:
        digest = hashlib.sha256()
        with fs.open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(chunk)
        hit = digest.hexdigest()
        with _LOCK:
            _CACHE[key] = hit
    return hit[:chars]


def text_hash(text: str, chars: int = 16) -> str:
    """A string (e.g. canonical JSON of a config) -> the first `chars` hex digits of its sha256."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:chars]
