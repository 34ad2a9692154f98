"""download.deadline_s bounds one URL whatever the server (or the resolver) does.

Every fault below sends something inside every read timeout (read_timeout_s is larger than the
trickle interval), so only the per-URL deadline can stop it. The trickling routes give up after
`max` seconds (then answer in full), so a broken deadline fails these tests instead of hanging them.
Expected times are written from the configuration: each URL ends within deadline_s + SLACK (the
machine is shared and loaded).
"""

from __future__ import annotations

import math
import socket
import threading
import time

import pytest
from http_faults import TRICKLE_BODY, Blackhole, FaultServer, SilentServer

from laion_spark.config import DownloadConfig
from laion_spark.download.fetch import Fetcher

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 64 + b"\xff\xd9"
DEADLINE = 1.5
SLACK = 2.0
# each route trickles for at most 30 s: far beyond DEADLINE, short enough to fail (not hang) when broken
FAULTS = {
    "status line": "/trickle-status?every=0.25&max=30",  # 17 bytes: 4 s
    "headers": "/trickle-headers?every=0.1&max=30",
    "headers ": "/header-flood?every=0.05&max=30",  # http.client allows 100 headers: 5 s of them
    "body": "/trickle?every=0.1",
}


@pytest.fixture(scope="module")
def srv():
    with FaultServer("127.0.0.1") as s:
        s.add_file("/photo.jpg", JPEG)
        yield s


def make(resolver=None, **kw) -> Fetcher:
    base = dict(allowed_networks=("127.0.0.1/32",), connect_timeout_s=5.0, read_timeout_s=5.0,
                deadline_s=DEADLINE, retries=0, retry_backoff_s=0.0)
    base.update(kw)
    return Fetcher(DownloadConfig(**base), **({"resolver": resolver} if resolver is not None else {}))


def timed_fetch(fetcher: Fetcher, url: str, limit: float = 40.0):
    """-> (FetchResult, seconds); run in a thread so that a broken deadline fails instead of hanging."""
    out = {}

    def go():
        t = time.monotonic()
        out["r"] = fetcher.fetch(url)
        out["took"] = time.monotonic() - t

    th = threading.Thread(target=go, daemon=True)
    th.start()
    th.join(limit)
    assert not th.is_alive(), f"{url} still running after {limit}s"
    return out["r"], out["took"]


@pytest.mark.parametrize("phase,path", list(FAULTS.items()), ids=["status", "headers", "flood", "body"])
def test_a_trickling_server_is_stopped_at_the_deadline(srv, phase, path):
    with make() as f:
        r, took = timed_fetch(f, srv.url(path))
    assert r.status == "timeout", r
    assert r.body is None
    assert f"deadline_s={DEADLINE:g} exceeded during {phase.strip()}" in r.error_message, r.error_message
    assert DEADLINE - 0.1 <= took < DEADLINE + SLACK


def test_retries_and_redirects_share_the_one_deadline(srv):
    # two redirect hops and up to 3 retries: all of it inside one deadline_s
    path = "/redirect?to=" + "/redirect%3Fto%3D" + "/trickle-status%253Fevery%253D0.1%2526max%253D30"
    with make(retries=3, retry_backoff_s=0.0) as f:
        r, took = timed_fetch(f, srv.url(path))
    assert r.status == "timeout" and "status line" in r.error_message, r
    assert took < DEADLINE + SLACK
    assert srv.requests("/trickle-status") >= 1


def test_a_slow_resolver_is_not_waited_for():
    release = threading.Event()
    asked = []

    def slow_resolver(host, port, *args, **kwargs):
        asked.append(host)
        release.wait(30)  # a black-holed DNS server; released at the end so no thread outlives the test
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    try:
        with make(resolver=slow_resolver) as f:
            r, took = timed_fetch(f, "http://slow-dns.test/a.jpg")
    finally:
        release.set()
    assert asked == ["slow-dns.test"]
    assert r.status == "timeout" and "during resolve" in r.error_message, r
    assert DEADLINE - 0.1 <= took < DEADLINE + SLACK


def test_many_black_holed_addresses_share_the_deadline():
    # three addresses that never answer SYN, connect_timeout_s 1 each: the URL still ends at 1.5 s
    with Blackhole("127.0.0.1") as a, Blackhole("127.0.0.1") as b, Blackhole("127.0.0.1") as c:
        ports = [a.port, b.port, c.port]

        def resolver(host, port, *args, **kwargs):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", p)) for p in ports]

        with make(resolver=resolver, connect_timeout_s=1.0) as f:
            r, took = timed_fetch(f, "http://many.test/a.jpg")
    assert r.status == "timeout" and "during connect" in r.error_message, r
    assert DEADLINE - 0.1 <= took < DEADLINE + SLACK


def test_a_stalled_tls_handshake_is_stopped_at_the_deadline():
    with SilentServer("127.0.0.1") as s:
        with make() as f:
            r, took = timed_fetch(f, f"https://127.0.0.1:{s.port}/a.jpg")
        assert s.connections == 1
    assert r.status == "timeout" and "during tls" in r.error_message, r
    assert DEADLINE - 0.1 <= took < DEADLINE + SLACK


def test_a_cut_connection_is_not_reused_and_keep_alive_still_works(srv):
    with make() as f:
        before = srv.connections
        r, _ = timed_fetch(f, srv.url("/trickle-headers?every=0.1&max=30"))
        assert r.status == "timeout"
        results = [f.fetch(srv.url("/photo.jpg")) for _ in range(3)]
    assert [(x.status, x.body) for x in results] == [("success", JPEG)] * 3
    # one connection for the cut request, one for the three photos (reused), none for a dead socket
    assert srv.connections - before == 2


def test_a_slow_but_honest_answer_inside_the_deadline_succeeds(srv):
    # the deadline is a bound, not a delay: a trickle that ends in time is a success
    with make(deadline_s=10) as f:
        r, took = timed_fetch(f, srv.url("/trickle-status?every=0.02&max=30"))
    assert (r.status, r.body) == ("success", TRICKLE_BODY), r
    assert took < 5


def test_the_download_stage_over_trickling_servers_ends_in_bounded_time(spark, tmp_path, srv):
    from tests.test_download_spark import run_download, write_input

    urls = [srv.url(p) for p in FAULTS.values()] * 3 + [srv.url("/photo.jpg")] * 4
    rows = [(i, u, "t") for i, u in enumerate(urls)]
    threads, deadline = 4, 2.0
    uri = write_input(spark, tmp_path / "pairs", rows, partitions=2)
    summary, out = run_download(spark, tmp_path, uri, "images", f"download.threads={threads}",
                                f"download.per_host_connections={threads}", "download.partitions=1",
                                f"download.deadline_s={deadline}", "download.read_timeout_s=5",
                                "download.connect_timeout_s=5", "download.min_image_bytes=0")
    # one task (one host): rounds of `threads` URLs, each round at most one deadline
    bound = math.ceil(len(rows) / threads) * deadline + 15
    assert summary["download_seconds"] < bound, (summary["download_seconds"], bound)
    got = dict(zip(out["sample_id"], out["status"]))
    assert sorted(got) == list(range(len(urls)))
    assert {i for i, s in got.items() if s == "timeout"} == {i for i, u in enumerate(urls) if "photo" not in u}
    assert all("deadline_s=2 exceeded during" in m for m in out.loc[out["status"] == "timeout", "error_message"])
