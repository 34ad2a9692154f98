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
        self.finished_at = {}

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
            self.finished_at[item] = time.monotonic()
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
    # one host answers in 0.3 s, 20 others at once: with per_host=1 and 4 threads the fast hosts
    # must all finish long before the slow host's 5 items (1.5 s serial)
    rec = Recorder(lambda host: 0.3 if host == "slow" else 0.005)
    items = [("slow", ("slow", i)) for i in range(5)] + [(f"f{i}", (f"f{i}", i)) for i in range(20)]
    pool = HostPool(rec, threads=4, per_host=1, max_pending=100)
    start = time.monotonic()
    out = run_pool(pool, items)
    assert len(out) == 25
    fast_done = max(t for (h, _), t in rec.finished_at.items() if h != "slow") - start
    slow_done = max(t for (h, _), t in rec.finished_at.items() if h == "slow") - start
    assert rec.peak["slow"] == 1
    assert fast_done < 0.6 < slow_done


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
