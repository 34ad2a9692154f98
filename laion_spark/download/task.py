"""One download task: pandas batches of input rows -> pandas batches of images rows (one per input row).

INPUT  -> an iterator of pandas DataFrames with at least `url` (the mapInPandas input) and a
          DownloadConfig
OUTPUT -> an iterator of pandas DataFrames: each input row's columns unchanged, followed by the
          download columns (schemas.DOWNLOAD_FIELDS), in completion order; every input row comes out
          exactly once, whatever happened to its URL. With report=True, also the host-pause columns
          (pool.PauseReport: each host that asked for a pause named once on a row, the frame's
          requests and seconds on its first row), and DNS_REPORT (the DNS cache's counters since the
          previous frame); the job gathers them with an Observation and drops them before writing

Rows are fetched by a HostPool (threads, per-host cap) and checked/resized in the same thread
(Pillow releases the GIL while decoding and resizing), at most image_threads of them at once: with
all 32 threads in image work the worker spent 15% more CPU per URL contending for the GIL
(bench/README.md). The fetcher's body slots bound the response bodies held at once, so a task's memory
is about max_bodies_in_flight x max_body_bytes at worst, whatever the thread count; a slot is taken
when a body starts to arrive, so fetches that are resolving, connecting or waiting for a server's
first byte (most of a fetch's time on the open web) hold none.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd

from laion_spark import schemas as S
from laion_spark.download import dns
from laion_spark.download.pool import PAUSE_HOST, PauseReport, host_of  # host_of: the one host function

# with report=True also: this task's DNS counters (dns.STATS_KEYS) since its previous frame, on a frame's
# first row (0 on the others), so the job sums them in an Observation: constant size on the driver
DNS_REPORT = tuple(f"_download_dns_{k}" for k in dns.STATS_KEYS)

log = logging.getLogger(__name__)

_DOWNLOAD_NAMES = frozenset(S.DOWNLOAD_COLUMNS)
# the failures that rise when a task asks more of its link or resolver than they carry (adaptive.py)
_OVERLOAD_STATUSES = frozenset({"timeout", "connect_error", "dns_error"})
_INT_COLUMNS = {f.name: ("Int64" if f.dataType.typeName() == "long" else "Int32")
                for f in S.DOWNLOAD_FIELDS if f.dataType.typeName() in ("integer", "long")}
# what each download column's Spark type can hold (schemas.DOWNLOAD_FIELDS): sizes come from headers
# (a PNG's IHDR says up to 2**32 - 1, a BMP's a signed or unsigned 32-bit number, a BigTIFF's 64 bits)
_KINDS = {f.name: f.dataType.typeName() for f in S.DOWNLOAD_FIELDS}
_RANGES = {"integer": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1),
           # fetched_at, in microseconds: what pandas' datetime64[ns] holds (years 1677..2262)
           "timestamp": (pd.Timestamp.min.value // 1000 + 1, pd.Timestamp.max.value // 1000)}
_NAT = np.iinfo(np.int64).min  # numpy's NaT as an int64: a null fetched_at


def failure(status: str, message: str, **extra) -> dict:
    """A failed row's download columns."""
    return {"status": status, "error_message": message,
            "retryable": S.is_retryable(status, extra.get("http_status")), **extra}


class RowDownloader:
    """url -> the download columns of one row (a dict), every value one its column holds (fit_row);
    thread-safe, never raises."""

    def __init__(self, cfg, fetcher=None):
        from laion_spark.download.fetch import Fetcher

        self.cfg = cfg
        self.fetcher = fetcher or Fetcher(cfg)
        self._image_work = threading.BoundedSemaphore(cfg.image_threads)

    def __call__(self, url) -> dict:
        # every value is fitted to its column here, per row in the worker thread: a header's size or
        # string that no column can hold costs that value, never the frame (and so never the task)
        return fit_row(self._download(url))

    def _download(self, url) -> dict:
        from laion_spark.download.image import process_image

        if not isinstance(url, str) or not url:
            return failure("invalid_url", f"url is {url!r}", fetched_at=_now())
        # the fetcher takes a body slot when a body starts to arrive; a success keeps it until the image
        # work below is done (the body lives only until then)
        fetched = self.fetcher.fetch(url, keep_slot=True)
        try:
            return self._row(url, fetched, process_image)
        finally:
            fetched.release()

    def _row(self, url, fetched, process_image) -> dict:
        row = {
            "http_status": fetched.http_status,
            "final_url": fetched.final_url,
            "content_type": fetched.content_type,
            "fetched_at": _now(),
        }
        if fetched.status != S.SUCCESS:
            return {**failure(fetched.status, fetched.error_message or fetched.status,
                              http_status=fetched.http_status), **row}
        body = fetched.body or b""
        try:
            with self._image_work:
                img = process_image(body, self.cfg)
        except Exception as exc:  # process_image turns bad images into statuses; this is a bug guard
            log.exception("process_image failed on %s", url)
            return {**failure("decode_error", f"{type(exc).__name__}: {exc}"), **row,
                    "original_bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                    "md5": hashlib.md5(body).hexdigest(), "sha1": hashlib.sha1(body).hexdigest()}
        out = {**row, **{k: getattr(img, k) for k in (
            "image", "image_format", "width", "height", "original_width", "original_height",
            "original_format", "original_bytes", "sha256", "md5", "sha1")}}
        out["bytes"] = len(img.image) if img.image is not None else None
        if img.status != S.SUCCESS:
            return {**out, **failure(img.status, img.error_message or img.status, http_status=fetched.http_status)}
        return {**out, "status": S.SUCCESS, "error_message": None, "retryable": False}

    def close(self) -> None:
        self.fetcher.close()


def fit_row(row: dict) -> dict:
    """A download row -> the same row with every value one its column (schemas.DOWNLOAD_FIELDS) can hold.

    Integers outside int32 / int64 (and fetched_at outside pandas' timestamps) -> None; strings UTF-8
    cannot encode (lone surrogates) -> U+FFFD in their place; bytearray / memoryview -> bytes; a value
    of another type -> None (retryable -> bool). The status stays (the job's accounting counts rows per
    status): each change is said at the end of error_message (of a success row too) and logged.
    """
    out = dict(row)
    notes = []
    for name, kind in _KINDS.items():
        value = out.get(name)
        if value is None:
            continue
        out[name], problem = _fit(kind, value)
        if problem:
            notes.append(f"{name} {problem}")
    if notes:
        note = "changed to fit the column: " + "; ".join(notes)
        log.warning("download row of %s: %s", out.get("final_url"), note)
        out["error_message"] = f"{out['error_message']}; {note}" if out.get("error_message") else note
    return out


def _fit(kind: str, value) -> tuple:
    """A Spark type name + a value -> (the value, None) when that type holds it, else (its replacement,
    what was wrong)."""
    if kind in _RANGES:
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            low, high = _RANGES[kind]
            if low <= value <= high:
                return int(value), None
            return None, f"{int(value)} is outside the {kind} range: null"
        return None, f"of type {type(value).__name__} is not an integer: null"
    if kind == "string":
        if not isinstance(value, str):
            return None, f"of type {type(value).__name__} is not a string: null"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: UTF-16 pairs the valid ones, the rest become U+FFFD
            return (value.encode("utf-16", "surrogatepass").decode("utf-16", "replace"),
                    "held surrogates UTF-8 cannot encode: replaced by U+FFFD")
        return value, None
    if kind == "binary":
        if isinstance(value, bytes):
            return value, None
        if isinstance(value, (bytearray, memoryview)):
            return bytes(value), None
        return None, f"of type {type(value).__name__} is not bytes: null"
    if kind == "boolean":
        if isinstance(value, (bool, np.bool_)):
            return bool(value), None
        return bool(value), f"of type {type(value).__name__} is not a bool: {bool(value)}"
    return value, None


def tune_malloc() -> None:
    """glibc only: at most 2 malloc arenas in this worker process (the default is 8 per core).

    Why: every download thread allocates response bodies and decoded images in a malloc arena, and
    freed chunks stay cached in the arena that held them; with 32 threads over 16 arenas a worker
    kept dozens of freed 20 MB bodies (RSS 544 MiB with 16 bodies in flight, tests/test_download_spark.py).
    Two arenas reuse the freed chunks for the next bodies, so memory stays near what is live. (A low
    fixed mmap threshold bounds memory too, but every decoded image then costs fresh page faults:
    ~10% more CPU.) Most allocations happen under the GIL, so fewer arenas cost no contention.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX = -8
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        pass


_MALLOC_TUNED = False
_LAST_LIMIT: dict[int, int] = {}  # download.threads -> the limit this worker's last task ended with


def _now() -> int:
    """Now, in microseconds since the epoch (Spark's precision): ints turn into a timestamp column
    in one vectorised step (pd.to_datetime over datetime objects took 10% of a worker's GIL time)."""
    return time.time_ns() // 1000


def _frame(done: list, batches: dict, out_names: list[str]) -> pd.DataFrame:
    """[(batch_no, position, download dict)] -> the output frame (input columns keep their dtypes).

    Built in one DataFrame constructor from typed arrays: the per-column astype/concat version
    took a sixth of a worker's Python time on 256-row batches.
    """
    done = sorted(done, key=lambda d: d[0])  # stable: positions keep their completion order per batch
    by_batch: dict[int, list] = {}
    for batch_no, pos, _ in done:
        by_batch.setdefault(batch_no, []).append(pos)
    parts = [batches[batch_no].iloc[positions] for batch_no, positions in by_batch.items()]
    inputs = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
    results = [r for _, _, r in done]
    columns: dict = {name: inputs[name] for name in inputs.columns if name not in _DOWNLOAD_NAMES}
    for name in S.DOWNLOAD_COLUMNS:
        values = [r.get(name) for r in results]
        if name == "fetched_at":
            values = pd.to_datetime(np.array([_NAT if v is None else v for v in values], dtype=np.int64),
                                    unit="us", utc=True)
        elif name == "retryable":
            values = np.array(values, dtype=bool)
        elif name in _INT_COLUMNS:
            values = pd.array(values, dtype=_INT_COLUMNS[name])
        columns[name] = values
    return pd.DataFrame(columns, columns=out_names)


def download_partition(cfg, out_names: list[str], downloader_factory=RowDownloader, report: bool = False):
    """DownloadConfig + output column names (+ the report's columns last, with report) -> the mapInPandas function
    of one task."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from laion_spark.download.pool import HostPool

        tune_malloc()  # before the pool's threads start: arenas are made per thread
        downloader = downloader_factory(cfg)
        # the fetcher's host pauses (429/503 Retry-After) hold that host's queued rows in the pool too
        pauses = getattr(getattr(downloader, "fetcher", None), "pauses", None)
        tuner = None
        if cfg.adaptive_threads and cfg.start_threads < cfg.threads:
            from laion_spark.download.adaptive import Tuner

            # a Python worker runs a stage's tasks one after another: the next starts where the last one
            # ended (it found this link's pace), not from start_threads again
            tuner = Tuner(max(cfg.start_threads, _LAST_LIMIT.get(cfg.threads, 0)), cfg.threads,
                          floor=min(cfg.start_threads, 8))
        pool = HostPool(lambda item: (item[0], item[1], downloader(item[2])),
                        threads=cfg.threads, per_host=cfg.per_host_connections,
                        max_pending=max(cfg.threads * 4, cfg.arrow_batch_rows),
                        pauses=pauses, hold_s=cfg.retry_after_max_s,
                        tuner=tuner, overload=lambda r: r[2].get("status") in _OVERLOAD_STATUSES)
        dns_seen = dns.stats()  # the worker's DNS counters when this task (or its last frame) began
        pause_report = PauseReport()
        held: dict[int, pd.DataFrame] = {}  # input batches with rows not yet emitted
        left: dict[int, int] = {}
        done: list = []

        def emit(results: list):
            nonlocal done
            for r in results:
                if isinstance(r, BaseException):  # cannot happen unless RowDownloader has a bug
                    raise RuntimeError("download worker failed") from r
            done.extend(results)
            while len(done) >= cfg.arrow_batch_rows:
                chunk, done = done[:cfg.arrow_batch_rows], done[cfg.arrow_batch_rows:]
                yield _release(chunk)

        def _release(chunk: list) -> pd.DataFrame:
            nonlocal dns_seen
            frame = _frame(chunk, held, out_names)
            if report:  # every fetch of these rows has returned, so its pauses are recorded by now
                records = pauses.take_records() if pauses is not None else []
                for column, values in pause_report.columns(records, len(frame)).items():
                    frame[column] = pd.Series(values, dtype=object if column == PAUSE_HOST else None)
                grown = dns.stats_since(dns_seen)
                for key, column in zip(dns.STATS_KEYS, DNS_REPORT):
                    counts = np.zeros(len(frame), dtype=np.float64 if key == "wait_s" else np.int64)
                    counts[0] = grown[key]
                    frame[column] = counts
                dns_seen = {key: dns_seen[key] + grown[key] for key in dns.STATS_KEYS}  # nothing counted twice
            for batch_no, _, _ in chunk:
                left[batch_no] -= 1
                if not left[batch_no]:
                    del left[batch_no], held[batch_no]
            return frame

        try:
            for batch_no, batch in enumerate(batches):
                if batch.empty:
                    continue
                held[batch_no] = batch
                left[batch_no] = len(batch)
                for pos, url in enumerate(batch[S.URL].tolist()):
                    while pool.full:
                        yield from emit(pool.take())
                    pool.submit(host_of(url), (batch_no, pos, url))
                yield from emit(pool.take(wait=False))
            for results in pool.drain():
                yield from emit(results)
            if done:
                yield _release(done)
                done = []
        finally:
            pool.stop()
            downloader.close()
            if tuner is not None:  # in the executor's log: how the limit moved, and why (adaptive.py)
                _LAST_LIMIT[cfg.threads] = tuner.limit
                steps = [f"{limit} ({why})" for limit, why in tuner.history if why != "hold"]
                log.info("download task: fetches in flight started at %d: %s", cfg.start_threads,
                         ", ".join(steps[-20:]) or "unchanged")

    return run
