"""Input URIs (local, file://, http(s)://, s3://, any fsspec filesystem) -> retrying sequential byte streams.

INPUT:  ``open_uri(uri)``: one file URI; ``expand_inputs(inputs, paths_prefix)``: URIs, globs,
        directories and Common Crawl ``*.paths`` / ``*.paths.gz`` listings.
OUTPUT: ``open_uri`` -> a read-only binary file-like object that streams the file front to back and,
        on a transient failure (HTTP 5xx/429, S3 SlowDown, connection reset, timeout), reopens it
        with backoff and resumes at the current position (HTTP Range request; fsspec seek), at most
        ``retries`` consecutive times, then raises OSError with the URI and the last error.
        ``expand_inputs`` -> the sorted, de-duplicated file URIs, each spelled the way its input was
        (``dbfs:/``, ``s3a://``, ``file://``, a plain path), which is what becomes ``source_uri``.

Every non-http URI goes through ``laion_spark.io.fsspec_uri`` (the mapping every later stage uses:
``dbfs:/x`` -> ``/dbfs/x``, ``s3a://`` -> ``s3://``) before fsspec lists or opens it.

http(s) is read with ``requests`` directly (stream=True, ``Range: bytes=N-`` on resume; a server
that ignores Range is re-read and the first N bytes skipped); everything else goes through fsspec.
"""

from __future__ import annotations

import gzip
import io
import logging
import time
from collections.abc import Callable

import fsspec

from laion_spark.io import fsspec_uri

logger = logging.getLogger(__name__)

__all__ = ["expand_inputs", "open_uri"]

_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
# errors that retrying cannot fix
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError)


class _TransientError(OSError):
    pass


class _RetryingReader(io.RawIOBase):
    """Sequential reader over ``opener(pos) -> (read(n) callable, close callable)`` that resumes on failure."""

    def __init__(
        self, uri: str, opener: Callable[[int], tuple[Callable[[int], bytes], Callable[[], None]]],
        retries: int, backoff_s: float,
    ) -> None:
        super().__init__()
        self.uri = uri
        self._opener = opener
        self._retries = retries
        self._backoff_s = backoff_s
        self._pos = 0
        self._read: Callable[[int], bytes] | None = None
        self._close: Callable[[], None] | None = None
        self._with_retries(lambda: None)  # open now: a missing file fails at open_uri, not later

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def _with_retries(self, action: Callable[[], bytes | None]) -> bytes | None:
        failures = 0
        while True:
            try:
                if self._read is None:
                    self._read, self._close = self._opener(self._pos)
                return action()
            except _PERMANENT:
                raise
            except Exception as exc:  # transport errors of any client library are retried
                self._drop()
                failures += 1
                if failures > self._retries:
                    raise OSError(
                        f"{self.uri}: giving up after {self._retries} retries at byte {self._pos}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                delay = self._backoff_s * (2 ** (failures - 1))
                logger.warning(
                    "%s: %s at byte %d; retry %d/%d in %.1fs",
                    self.uri, exc, self._pos, failures, self._retries, delay,
                )
                time.sleep(delay)

    def _drop(self) -> None:
        close, self._read, self._close = self._close, None, None
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001  (closing a broken connection may fail too; it is gone anyway)
                pass

    def read(self, size: int = -1) -> bytes:
        if self.closed:
            raise ValueError("read from a closed stream")
        if size is None or size < 0:
            parts = []
            while chunk := self.read(1 << 20):
                parts.append(chunk)
            return b"".join(parts)

        def _do() -> bytes:
            return self._read(size)

        data = self._with_retries(_do) or b""
        self._pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._drop()
        super().close()


def _http_opener(uri: str, timeout_s: float) -> Callable[[int], tuple[Callable[[int], bytes], Callable[[], None]]]:
    import requests

    session = requests.Session()

    def opener(pos: int) -> tuple[Callable[[int], bytes], Callable[[], None]]:
        headers = {"Range": f"bytes={pos}-"} if pos else {}
        resp = session.get(uri, headers=headers, stream=True, timeout=(timeout_s, timeout_s))
        if resp.status_code == 416 and pos:
            resp.close()
            return (lambda n: b""), (lambda: None)  # resumed exactly at the end
        if resp.status_code in (404, 410):
            resp.close()
            raise FileNotFoundError(f"{uri}: HTTP {resp.status_code}")
        if resp.status_code in _RETRY_STATUS or resp.status_code >= 500:
            resp.close()
            raise _TransientError(f"HTTP {resp.status_code}")
        if resp.status_code >= 400:
            resp.close()
            raise PermissionError(f"{uri}: HTTP {resp.status_code}")
        raw = resp.raw
        raw.decode_content = False  # the archive's own bytes, whatever the transfer
        if pos and resp.status_code != 206:
            # Range not honoured: re-read from the start and skip what was already delivered
            skip = pos
            while skip:
                chunk = raw.read(min(skip, 1 << 20))
                if not chunk:
                    raise _TransientError(f"stream ended at {pos - skip} while skipping to {pos}")
                skip -= len(chunk)

        def read(n: int) -> bytes:
            return raw.read(n)

        return read, resp.close

    return opener


def _fsspec_opener(uri: str, timeout_s: float) -> Callable[[int], tuple[Callable[[int], bytes], Callable[[], None]]]:
    def opener(pos: int) -> tuple[Callable[[int], bytes], Callable[[], None]]:
        handle = fsspec.open(uri, "rb").open()
        if pos:
            try:
                handle.seek(pos)
            except (OSError, io.UnsupportedOperation):
                # not seekable: re-read from the start and skip
                skip = pos
                while skip:
                    chunk = handle.read(min(skip, 1 << 20))
                    if not chunk:
                        raise _TransientError(f"stream ended while skipping to {pos}") from None
                    skip -= len(chunk)
        return handle.read, handle.close

    return opener


def open_uri(uri: str, retries: int = 5, backoff_s: float = 0.5, timeout_s: float = 60) -> io.RawIOBase:
    """Open ``uri`` for sequential reading with resume-on-failure; see the module docstring."""
    if uri.startswith(("http://", "https://")):
        opener = _http_opener(uri, timeout_s)
    else:
        # the one Spark-URI -> fsspec mapping of every stage (dbfs:/, s3a://, ...); messages keep uri
        opener = _fsspec_opener(fsspec_uri(uri), timeout_s)
    return _RetryingReader(uri, opener, retries, backoff_s)


def _paths_file_lines(uri: str) -> list[str]:
    with fsspec.open(fsspec_uri(uri), "rb") as handle:
        data = handle.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]


def _prefixes(given: str, mapped: str) -> tuple[str, str]:
    """(given URI, its fsspec form) -> the two prefixes that differ; fsspec_uri changes only a prefix."""
    n = 0
    while n < min(len(given), len(mapped)) and given[-1 - n] == mapped[-1 - n]:
        n += 1
    return given[: len(given) - n], mapped[: len(mapped) - n]


def expand_inputs(inputs: list[str], paths_prefix: str) -> list[str]:
    """URIs / globs / directories / CC paths files -> sorted unique file URIs (input protocol kept)."""
    out: set[str] = set()
    for item in inputs:
        item = item.strip()
        if not item:
            continue
        if item.endswith((".paths", ".paths.gz")):
            prefix = paths_prefix if not paths_prefix or paths_prefix.endswith("/") else paths_prefix + "/"
            out.update(prefix + line.lstrip("/") for line in _paths_file_lines(item))
            continue
        if item.startswith(("http://", "https://")):
            out.add(item)  # no listing over plain HTTP
            continue
        mapped = fsspec_uri(item)
        fs, path = fsspec.core.url_to_fs(mapped)
        given, listed = _prefixes(item, mapped)
        has_protocol = "://" in mapped

        def as_given(p: str, fs=fs, has_protocol=has_protocol, given=given, listed=listed) -> str:
            # a listed file in the spelling the user gave (dbfs:/..., s3a://...), which
            # becomes its source_uri; open_uri maps it again
            found = fs.unstrip_protocol(p) if has_protocol else p
            return given + found[len(listed):] if found.startswith(listed) else found

        if any(ch in path for ch in "*?["):
            found = [p for p in fs.glob(path) if fs.isfile(p)]
            if not found:
                logger.warning("input glob %s matches no file", item)
            out.update(as_given(p) for p in found)
        elif fs.isdir(path):
            for p in fs.find(path):
                name = p.rstrip("/").rsplit("/", 1)[-1]
                if not name.startswith((".", "_")):  # _SUCCESS, .crc and other markers are not inputs
                    out.add(as_given(p))
        else:
            out.add(item)
    return sorted(out)
