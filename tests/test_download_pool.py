"""HostPool (threads with a per-host cap) and the host partitioning of the download transform."""

import collections
import threading
import time

import pytest

from laion_spark.config import DownloadConfig
from laion_spark.download.pool import HostPool
from laion_spark.download.transform import partition_by_host


class Recorder:
    """fn(item) that sleeps, recording the peak concurrency per host and overall."""

    def __init__(self, delay):
        self.delay = delay
        self.lock = threading.Lock()
        self.now = collections.Counter()
        self.peak = collections.Counter()
        self.total_now = 0
        self.total_peak = 0

    def __call__(self, item):
        host, n = item
        with self.lock:
            self.now[host] += 1
            self.total_now += 1
            self.peak[host] = max(self.peak[host], self.now[host])
            self.total_peak = max(self.total_peak, self.total_now)
        time.sleep(self.delay(host))
        with self.lock:
            self.now[host] -= 1
            self.total_now -= 1
        return item


def run_pool(pool, items, max_batch=None):
    out = []
    for host, item in items:
        while pool.full:
            out.extend(pool.take())
        pool.submit(host, item)
    for chunk in pool.drain():
        out.extend(chunk)
    return out


def test_every_item_comes_back_once_and_the_host_cap_holds():
    rec = Recorder(lambda host: 0.01)
    items = [(f"h{i % 3}", (f"h{i % 3}", i)) for i in range(120)]
    pool = HostPool(rec, threads=8, per_host=2, max_pending=16)
    out = run_pool(pool, items)
    assert sorted(out, key=lambda x: x[1]) == [item for _, item in items]
    assert max(rec.peak.values()) <= 2
    assert rec.peak["h0"] == 2  # the cap is used, not just respected
    assert rec.total_peak <= 6  # 3 hosts x 2
    assert not any(t.is_alive() for t in pool._threads)


def test_a_slow_host_does_not_stall_the_others():
    # The slow host's items each hold its one slot (per_host=1) until every fast item is done: with 4
    # threads, the other 3 must finish the 20 fast hosts' items meanwhile. A pool that let a slow item
    # stall the rest (a thread blocked behind the host's cap, the cap broken, fewer threads in use)
    # leaves fast items unstarted, so the release never comes and the wait runs out instead.
    fast = [(f"f{i}", (f"f{i}", i)) for i in range(20)]
    items = [("slow", ("slow", i)) for i in range(5)] + fast
    lock = threading.Lock()
    events = []  # ("start" | "end", host, n), in the order they happened
    now, peak = collections.Counter(), collections.Counter()
    fast_all_done = threading.Event()
    held_until_fast_done = []  # per slow item: did its wait end because every fast item was done

    def fn(item):
        host, n = item
        with lock:
            events.append(("start", host, n))
            now[host] += 1
            peak[host] = max(peak[host], now[host])
        if host == "slow":
            released = fast_all_done.wait(timeout=10)  # the timeout: only a broken pool gets there
            fast_all_done.set()  # a broken pool: fail after one wait, not five
            held_until_fast_done.append(released)
        with lock:
            now[host] -= 1
            events.append(("end", host, n))
            if sum(1 for e in events if e[0] == "end" and e[1] != "slow") == len(fast):
                fast_all_done.set()
        return item

    pool = HostPool(fn, threads=4, per_host=1, max_pending=100)
    out = run_pool(pool, items)
    assert sorted(out, key=lambda x: (x[0] != "slow", x[1])) == [item for _, item in items]
    assert held_until_fast_done == [True] * 5
    ends = [(h, n) for kind, h, n in events if kind == "end"]
    first_slow_end = ends.index(next(e for e in ends if e[0] == "slow"))
    assert sorted(ends[:first_slow_end]) == sorted(item for _, item in fast)  # every fast item, before any slow one
    assert peak["slow"] == 1  # the slow host never had two slots
    slow = [(kind, n) for kind, h, n in events if h == "slow"]
    assert slow == [(kind, n) for n in range(5) for kind in ("start", "end")]  # one at a time, in order
    assert not any(t.is_alive() for t in pool._threads)


def test_max_pending_bounds_what_is_queued():
    rec = Recorder(lambda host: 0.001)
    pool = HostPool(rec, threads=2, per_host=2, max_pending=5)
    seen_pending = []
    out = []
    for i in range(50):
        while pool.full:
            out.extend(pool.take())
        pool.submit("h", ("h", i))
        seen_pending.append(pool._pending)
    for chunk in pool.drain():
        out.extend(chunk)
    assert max(seen_pending) <= 5
    assert len(out) == 50


def test_an_exception_in_fn_becomes_a_result_not_a_lost_item():
    def fn(item):
        if item == 3:
            raise ValueError("boom")
        return item

    pool = HostPool(fn, threads=2, per_host=1)
    out = run_pool(pool, [("h", i) for i in range(6)])
    assert sorted(x for x in out if isinstance(x, int)) == [0, 1, 2, 4, 5]
    assert [type(x) for x in out if not isinstance(x, int)] == [ValueError]


@pytest.mark.parametrize("rows_big", [30])
def test_partition_by_host_groups_small_hosts_and_salts_big_ones(spark, rows_big):
    rows = [(f"http://small{i % 6}.example/{i}.jpg",) for i in range(60)]
    rows += [(f"http://big.example/{i}.jpg",) for i in range(rows_big * 10)]
    rows += [("not a url",), ("",)]
    df = spark.createDataFrame(rows, "url string")
    cfg = DownloadConfig(host_rows_per_task=rows_big, max_tasks_per_host=4)
    parts = partition_by_host(df, cfg, 16).rdd.glom().collect()
    assert sum(len(p) for p in parts) == len(rows)
    where = collections.defaultdict(set)
    for i, part in enumerate(parts):
        for row in part:
            host = row.url.split("/")[2] if "://" in row.url else ""
            where[host].add(i)
    for i in range(6):
        assert len(where[f"small{i}.example"]) == 1  # one task per small host: its cap is the site's cap
    # 300 rows over 30 a task would be 10 salts; max_tasks_per_host caps it at 4 (hash collisions
    # of salts may put two in one partition, so between 2 and 4)
    assert 2 <= len(where["big.example"]) <= 4
