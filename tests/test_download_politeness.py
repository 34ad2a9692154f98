"""A 429/503 with Retry-After pauses its host for the whole task: every thread, every queued row.

The pool and the fetcher are tested on their own, then the download stage through Spark, whose
summary counts the hosts that asked for a pause. Expected times come from the Retry-After values
the test server is told to send.
"""

from __future__ import annotations

import threading
import time

import pytest
from http_faults import FaultServer

from laion_spark.config import DownloadConfig
from laion_spark.download.fetch import Fetcher
from laion_spark.download.pool import HostPauses, HostPool

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 64 + b"\xff\xd9"


def _run(pool, items):
    for host, item in items:
        while pool.full:
            pool.take()
        pool.submit(host, item)
    out = []
    for chunk in pool.drain():
        out.extend(chunk)
    return out


def test_the_pool_holds_a_paused_hosts_rows_and_serves_the_others():
    started = {}
    lock = threading.Lock()

    def fn(item):
        with lock:
            started[item] = time.monotonic()
        time.sleep(0.01)
        return item

    pauses = HostPauses()
    t0 = time.monotonic()
    pauses.pause("slow.example", 0.8, 429)
    pool = HostPool(fn, threads=4, per_host=2, pauses=pauses, hold_s=5)
    items = [("slow.example", ("slow", i)) for i in range(6)] + [("fast.example", ("fast", i)) for i in range(6)]
    out = _run(pool, items)
    assert sorted(out) == sorted(item for _, item in items)
    slow = [started[("slow", i)] - t0 for i in range(6)]
    fast = [started[("fast", i)] - t0 for i in range(6)]
    assert min(slow) >= 0.78, slow
    assert max(fast) < 0.5, fast
    assert not any(t.is_alive() for t in pool._threads)


def test_a_pause_longer_than_hold_s_is_not_held():
    # rows of a host paused beyond retry_after_max_s go to the fetcher at once (which fails them fast)
    pauses = HostPauses()
    pauses.pause("h", 60, 503)
    pool = HostPool(lambda item: time.monotonic(), threads=2, per_host=2, pauses=pauses, hold_s=5)
    t0 = time.monotonic()
    out = _run(pool, [("h", i) for i in range(4)])
    assert len(out) == 4 and max(out) - t0 < 1.0


def test_pause_records_and_summary():
    pauses = HostPauses()
    pauses.pause("a", 2, 429)
    pauses.pause("a", 2, 429)  # at once: the pause is not longer for it
    pauses.pause("b", 0.5, 503)
    records = pauses.take_records()
    assert [(h, a) for h, a, _ in records] == [("a", 2.0), ("a", 2.0), ("b", 0.5)]
    assert records[0][2] == pytest.approx(2, abs=0.05) and records[1][2] == pytest.approx(0, abs=0.05)
    assert pauses.take_records() == []


def test_the_pause_report_names_each_host_once_a_row():
    from laion_spark.download.pool import PAUSE_COUNTS, PAUSE_HOST, PauseReport

    report = PauseReport()
    # three hosts paused before a frame of two rows: the third waits for the next frame
    first = report.columns([("a", 2.0, 2.0), ("a", 2.0, 0.0), ("b", 0.5, 0.5), ("c", 1.0, 1.0)], 2)
    assert first[PAUSE_HOST] == ["a", "b"]
    assert [first[c] for c in PAUSE_COUNTS] == [[4, 0], [3.5, 0.0], [2.0, 0.0]]
    second = report.columns([("a", 3.0, 1.0)], 3)  # a: named already in this task
    assert second[PAUSE_HOST] == ["c", None, None]
    assert [second[c][0] for c in PAUSE_COUNTS] == [1, 1.0, 3.0]
    assert report.columns([], 1) == {PAUSE_HOST: [None], **{c: [0] if c == PAUSE_COUNTS[0] else [0.0]
                                                            for c in PAUSE_COUNTS}}


def test_pause_summary_counts_a_host_of_several_chunks_once(spark):
    from pyspark.sql import Observation

    from laion_spark.download.pool import PAUSE_COUNTS, PAUSE_HOST, PauseReport, pause_metrics, pause_summary

    observed = []
    for records in ([("a", 2.0, 2.0), ("b", 0.5, 0.5)], [("a", 4.0, 1.0)]):  # two chunks, host a in both
        cols = PauseReport().columns(records, 3)
        frame = spark.createDataFrame(list(zip(*[cols[c] for c in (PAUSE_HOST, *PAUSE_COUNTS)], strict=True)),
                                      f"{PAUSE_HOST} string, {PAUSE_COUNTS[0]} long, {PAUSE_COUNTS[1]} double, "
                                      f"{PAUSE_COUNTS[2]} double")
        observation = Observation(f"pauses_{len(observed)}")
        frame.observe(observation, *pause_metrics()).count()
        observed.append(observation.get)
    assert pause_summary(spark, observed) == {"hosts": 2, "requests": 3, "paused_s": 3.5, "max_s": 4.0}
    assert pause_summary(spark, []) == {"hosts": 0, "requests": 0, "paused_s": 0.0, "max_s": 0.0}


def _fetcher(**kw) -> Fetcher:
    base = dict(allowed_networks=("127.0.0.1/32",), connect_timeout_s=2, read_timeout_s=2, deadline_s=10,
                retries=1, retry_backoff_s=0.0, retry_after_max_s=5)
    base.update(kw)
    return Fetcher(DownloadConfig(**base))


def test_a_retry_after_pauses_the_host_for_other_threads():
    arrivals = []

    def photo(h):
        arrivals.append(time.monotonic())
        h.reply(200, JPEG, "image/jpeg")

    with FaultServer("127.0.0.1") as srv:
        srv.add_handler("/photo.jpg", photo)
        seen_429 = {}

        def busy(h):
            if "t" not in seen_429:
                seen_429["t"] = time.monotonic()
                return h.reply(429, b"slow down", "text/plain", {"Retry-After": "1"})
            h.reply(200, JPEG, "image/jpeg")

        srv.add_handler("/busy.jpg", busy)
        with _fetcher() as f:
            first = f.fetch(srv.url("/busy.jpg"))  # 429, waits 1 s, then succeeds
            assert first.status == "success"
            # a pause that outlasts a URL's deadline: that URL fails without asking the server
            f.pauses.pause("127.0.0.1", 3, 503)
            short = _fetcher(deadline_s=1)
            short.pauses = f.pauses
            t = time.monotonic()
            refused = short.fetch(srv.url("/photo.jpg"))
            short.close()
            assert time.monotonic() - t < 0.5
        assert (refused.status, refused.http_status) == ("http_error", 503) and "not requested" in refused.error_message
        assert arrivals == []

        with _fetcher() as f:
            srv.reset_counts()
            seen_429.clear()
            out = {}
            t1 = threading.Thread(target=lambda: out.setdefault("busy", f.fetch(srv.url("/busy.jpg"))))
            t1.start()
            while "t" not in seen_429:
                time.sleep(0.01)
            time.sleep(0.1)  # the 429 has reached the client: the host is paused now
            t2 = threading.Thread(target=lambda: out.setdefault("photo", f.fetch(srv.url("/photo.jpg"))))
            t2.start()
            t1.join(10)
            t2.join(10)
        assert out["busy"].status == "success" and out["photo"].status == "success"
        assert len(arrivals) == 1
        assert arrivals[0] - seen_429["t"] >= 0.9  # the other thread's request waited for the pause


def test_the_download_summary_counts_hosts_that_asked_for_a_pause(spark, tmp_path):
    from tests.test_download_spark import run_download, write_input

    arrivals = []
    lock = threading.Lock()

    def photo(h):
        with lock:
            arrivals.append(time.monotonic())
        h.wait(0.05)
        h.reply(200, JPEG, "image/jpeg")

    with FaultServer("127.0.0.1") as srv:
        paused_at = {}

        def busy(h):
            if "t" not in paused_at:
                paused_at["t"] = time.monotonic()
                return h.reply(503, b"busy", "text/plain", {"Retry-After": "2"})
            h.reply(200, JPEG, "image/jpeg")

        srv.add_handler("/busy.jpg", busy)
        for i in range(12):
            srv.add_handler(f"/p{i}.jpg", photo)
        rows = [(0, srv.url("/busy.jpg"), "t")] + [(i + 1, srv.url(f"/p{i}.jpg"), "t") for i in range(12)]
        uri = write_input(spark, tmp_path / "pairs", rows, partitions=1)
        summary, out = run_download(spark, tmp_path, uri, "images", "download.threads=2",
                                    "download.per_host_connections=1", "download.partitions=1",
                                    "download.retries=1", "download.retry_after_max_s=5", "download.deadline_s=10",
                                    "download.min_image_bytes=0")
    assert summary["host_pauses"]["hosts"] == 1 and summary["host_pauses"]["requests"] == 1
    assert summary["host_pauses"]["max_s"] == 2.0
    assert summary["host_pauses"]["paused_s"] == pytest.approx(2.0, abs=0.2)
    assert len(arrivals) == 12
    # per_host=1: at most one photo was in flight when the 503 came; every later one waited the pause
    late = [a - paused_at["t"] for a in arrivals if a > paused_at["t"] + 0.2]
    assert late and min(late) >= 1.9, late
    assert "_download_pauses" not in out.columns
