"""Fetches in flight at the open web's pace: waiting holds no body slot, the adaptive limit, connection reuse.

Real task functions (download_partition, no Spark) over real loopback HTTP, whose handlers wait before
answering as a distant server does; the adaptive limit's logic (adaptive.Tuner) against simulated links
whose throughput follows from the limit by Little's law.
"""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest
from http_faults import FaultServer
from images import encode, textured
from pyspark.sql.types import StringType, StructField, StructType

from laion_spark import schemas as S
from laion_spark.config import DownloadConfig
from laion_spark.download import fetch as fetch_module
from laion_spark.download.adaptive import Tuner, Window
from laion_spark.download.pool import HostPool
from laion_spark.download.task import download_partition

NAMES = S.images_schema(StructType([StructField(S.URL, StringType())])).fieldNames()
JPEG = encode(textured((320, 240), seed=7), "JPEG")


def run_task(cfg, urls) -> pd.DataFrame:
    return pd.concat(list(download_partition(cfg, NAMES)(iter([pd.DataFrame({S.URL: urls})]))))


class CountingSlots(threading.BoundedSemaphore):
    """The fetcher's body slots, counting how many are held at once."""

    def __init__(self, value):
        super().__init__(value)
        self.lock = threading.Lock()
        self.now = self.peak = 0

    def acquire(self, *args, **kwargs):
        got = super().acquire(*args, **kwargs)
        if got:
            with self.lock:
                self.now += 1
                self.peak = max(self.peak, self.now)
        return got

    def release(self, n=1):
        with self.lock:
            self.now -= n
        super().release(n)


@pytest.fixture
def counted_slots(monkeypatch):
    """Every Fetcher made in the test gets CountingSlots -> the list of them."""
    made = []
    real_init = fetch_module.Fetcher.__init__

    def init(self, cfg, *args, **kwargs):
        real_init(self, cfg, *args, **kwargs)
        self.bodies = CountingSlots(cfg.max_bodies_in_flight)
        made.append(self.bodies)

    monkeypatch.setattr(fetch_module.Fetcher, "__init__", init)
    return made


def test_fetches_waiting_for_a_first_byte_hold_no_body_slot(counted_slots):
    # 64 URLs whose server waits 1 s before answering, one task with 64 threads and 16 body slots: the
    # waits overlap (about 1 s in all). Holding a slot for the whole fetch, as before, made it 64/16 = 4 s.
    with FaultServer("127.0.0.1") as srv:
        def slow(h):
            h.wait(1.0)
            h.reply(200, JPEG, "image/jpeg")

        urls = [srv.add_handler(f"/slow/{i}.jpg", slow) for i in range(64)]
        cfg = DownloadConfig(allowed_networks=("127.0.0.1/32",), threads=64, per_host_connections=64,
                             adaptive_threads=False, max_bodies_in_flight=16, retries=0, deadline_s=30.0)
        started = time.monotonic()
        out = run_task(cfg, urls)
        took = time.monotonic() - started
        assert srv.peak_concurrency >= 48  # the server saw the fetches wait side by side
    assert sorted(out[S.URL]) == sorted(urls)
    assert (out[S.STATUS] == S.SUCCESS).all(), out[S.ERROR_MESSAGE].dropna().unique()[:3]
    assert took < 2.5, f"64 fetches that each wait 1 s took {took:.2f} s in one task"
    slots = counted_slots[0]
    assert 1 <= slots.peak <= 16 and slots.now == 0  # bodies stay bounded, and every slot came back


def test_the_body_slot_bound_holds_while_bodies_wait_for_image_work(counted_slots, monkeypatch):
    # image work slower than the network: bodies pile up waiting for it, at most max_bodies_in_flight
    from laion_spark.download import image as image_module

    real = image_module.process_image

    def slow_image(body, cfg):
        time.sleep(0.05)
        return real(body, cfg)

    monkeypatch.setattr(image_module, "process_image", slow_image)
    with FaultServer("127.0.0.1") as srv:
        urls = [srv.add_file(f"/f/{i}.jpg", JPEG) for i in range(60)]
        cfg = DownloadConfig(allowed_networks=("127.0.0.1/32",), threads=32, per_host_connections=32,
                             adaptive_threads=False, max_bodies_in_flight=5, image_threads=1, retries=0)
        out = run_task(cfg, urls)
    assert (out[S.STATUS] == S.SUCCESS).all()
    assert counted_slots[0].peak == 5 and counted_slots[0].now == 0  # reached, never passed, all back


def test_one_host_rows_reuse_connections_within_the_per_host_cap():
    with FaultServer("127.0.0.1") as srv:
        urls = [srv.add_file(f"/r/{i}.jpg", JPEG) for i in range(40)]
        cfg = DownloadConfig(allowed_networks=("127.0.0.1/32",), threads=32, per_host_connections=4, retries=0)
        out = run_task(cfg, urls)
        assert (out[S.STATUS] == S.SUCCESS).all()
        assert srv.total_requests == 40
        assert srv.peak_concurrency <= 4
        assert srv.connections <= 4, f"{srv.connections} connections for 40 rows of one host (cap 4)"


# --- the adaptive limit -------------------------------------------------------------------------------


def simulate(tuner: Tuner, rate_of, windows: int = 60, errors_of=lambda limit: 0.0, cpu_per_row: float = 0.002):
    """Feed the tuner one-second windows of a system whose rows/s follow from the limit -> limits seen."""
    seen = []
    for _ in range(windows):
        limit = tuner.limit
        rate = rate_of(limit)
        done = max(1, round(rate))
        seen.append(limit)
        tuner.update(Window(1.0, done, round(done * errors_of(limit)), min(1.0, done * cpu_per_row), 1.0))
    return seen


def test_the_limit_grows_on_a_latency_bound_link_until_the_cpu_is_busy():
    # Little's law: 0.5 s per fetch -> limit / 0.5 rows/s; each row costs 5 ms of CPU, so the CPU is
    # busy (0.85 of a core) from 170 rows/s on, at a limit of 85
    tuner = Tuner(start=16, ceiling=512)
    seen = simulate(tuner, lambda limit: limit / 0.5, cpu_per_row=0.005)
    assert seen[0] == 16 and max(seen) >= 85
    assert seen[-1] >= 85 and seen[-1] <= 512
    assert ("cpu busy" in [why for _, why in tuner.history])


def test_the_limit_stays_when_more_fetches_bring_no_more_rows():
    # a full link: 60 rows/s whatever the limit above 24 (each step up fails to pay and is taken back)
    tuner = Tuner(start=16, ceiling=512)
    seen = simulate(tuner, lambda limit: min(limit / 0.4, 60.0), windows=80)
    assert max(seen) <= 64  # probes once or twice beyond the knee, never runs away
    assert sum(1 for s in seen[20:] if s <= 32) >= 0.7 * len(seen[20:])  # mostly sits at the knee
    assert any(why == "no gain: step back" for _, why in tuner.history)


def test_the_limit_backs_off_when_timeouts_rise_with_it():
    # a resolver or link that overloads beyond 40 in flight: half the rows time out there
    tuner = Tuner(start=16, ceiling=512)
    seen = simulate(tuner, lambda limit: limit / 0.5, errors_of=lambda limit: 0.5 if limit > 40 else 0.05,
                    windows=60)
    assert any(why == "back off: errors rose" for _, why in tuner.history)
    assert sum(1 for s in seen[10:] if s <= 40) >= 0.7 * len(seen[10:])


def test_a_steady_share_of_dead_hosts_does_not_hold_the_limit_down():
    # 30% of rows fail on every crawl (dead hosts), whatever the limit: not overload
    tuner = Tuner(start=16, ceiling=256)
    seen = simulate(tuner, lambda limit: limit / 0.5, errors_of=lambda limit: 0.3, cpu_per_row=0.001)
    assert max(seen) == 256


def test_the_pool_never_has_more_in_flight_than_its_limit():
    lock, state = threading.Lock(), {"now": 0, "peak": 0}

    def work(item):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.02)
        with lock:
            state["now"] -= 1
        return item

    pool = HostPool(work, threads=32, per_host=32, max_pending=200)
    pool.set_limit(5)
    out = []
    for i in range(60):
        while pool.full:
            out += pool.take()
        pool.submit(f"h{i % 6}", i)
    out += [r for chunk in pool.drain() for r in chunk]
    assert sorted(out) == list(range(60)) and state["peak"] == 5
