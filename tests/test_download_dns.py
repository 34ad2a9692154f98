"""The per-process DNS cache (download/dns.py), through the address guard that uses it.

Unit tests give AddressGuard a counting resolver stub (the cache keys on the resolver object, so each
test's stub sees only its own answers); the last test runs real Fetchers against a loopback server.
"""

from __future__ import annotations

import socket
import threading
import time

import pandas as pd
import pytest
from http_faults import FaultServer

from laion_spark.config import DownloadConfig
from laion_spark.download import dns
from laion_spark.download.fetch import Fetcher
from laion_spark.download.guard import AddressGuard, BlockedAddress, DeadlineExceeded, DnsError, Watchdog


def info(addr: str, port: int):
    if ":" in addr:
        return (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (addr, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, port))


class Resolver:
    """A getaddrinfo stand-in: name -> addresses, or -> an exception to raise; counts its calls."""

    def __init__(self, table, delay: float = 0.0):
        self.table = dict(table)
        self.delay = delay
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, host, port, *args, **kwargs):
        with self._lock:
            self.calls.append(host)
        time.sleep(self.delay)
        answer = self.table[host]
        if isinstance(answer, BaseException):
            raise answer
        return [info(a, port) for a in answer]


def guard(resolver, keep=300.0, keep_negative=30.0, allowed=()) -> AddressGuard:
    return AddressGuard(allowed, resolver=resolver, dns_cache_s=keep, dns_negative_cache_s=keep_negative)


@pytest.fixture
def clock(monkeypatch):
    """A fake clock for entry ages: clock[0] is 'now'; advance it by hand."""
    now = [1000.0]
    monkeypatch.setattr(dns, "_now", lambda: now[0])
    return now


def test_a_name_is_resolved_once_and_then_answered_from_the_cache():
    r = Resolver({"img.test": ["93.184.215.14", "2606:4700::1"], "other.test": ["1.1.1.1"]})
    g = guard(r)
    before = dns.stats()
    first = g.resolve("img.test", 80)
    assert first == [(socket.AF_INET, ("93.184.215.14", 80)), (socket.AF_INET6, ("2606:4700::1", 80, 0, 0))]
    assert g.resolve("img.test", 80) == first
    assert g.resolve("IMG.test", 80) == first  # DNS names are case-insensitive
    assert guard(r).resolve("img.test", 80) == first  # another guard (another task) in the process too
    assert r.calls == ["img.test"]
    assert g.resolve("img.test", 443)[0] == (socket.AF_INET, ("93.184.215.14", 443))  # the port is in the key
    assert g.resolve("other.test", 80) == [(socket.AF_INET, ("1.1.1.1", 80))]
    assert r.calls == ["img.test", "img.test", "other.test"]
    d = dns.stats_since(before)
    assert (d["lookups"], d["cache_hits"], d["resolver_calls"], d["negative_hits"], d["shared"]) == (6, 3, 3, 0, 0)
    assert d["wait_s"] >= 0 and set(d) == set(dns.STATS_KEYS)


def test_answers_expire_after_the_askers_own_keep_time(clock):
    r = Resolver({"img.test": ["93.184.215.14"]})
    long_keep, short_keep = guard(r, keep=300), guard(r, keep=10)
    long_keep.resolve("img.test", 80)
    clock[0] += 9
    short_keep.resolve("img.test", 80)
    assert len(r.calls) == 1
    clock[0] += 2  # 11 s old: stale for the 10 s guard, still fresh for the 300 s one
    long_keep.resolve("img.test", 80)
    assert len(r.calls) == 1
    short_keep.resolve("img.test", 80)
    assert len(r.calls) == 2
    clock[0] += 299  # the new answer is 299 s old
    long_keep.resolve("img.test", 80)
    assert len(r.calls) == 2
    clock[0] += 2
    long_keep.resolve("img.test", 80)
    assert len(r.calls) == 3


def test_zero_keep_time_is_no_cache():
    r = Resolver({"img.test": ["93.184.215.14"], "gone.test": socket.gaierror(socket.EAI_NONAME, "Name unknown")})
    g = guard(r, keep=0, keep_negative=0)
    for _ in range(3):
        g.resolve("img.test", 80)
        with pytest.raises(DnsError):
            g.resolve("gone.test", 80)
    assert len(r.calls) == 6
    guard(r).resolve("img.test", 80)  # and nothing was stored for a guard that does keep answers
    assert len(r.calls) == 7


@pytest.mark.parametrize("errno", [socket.EAI_NONAME, socket.EAI_NODATA])
def test_a_name_that_does_not_exist_is_remembered_briefly(clock, errno):
    r = Resolver({"gone.test": socket.gaierror(errno, "No address associated with hostname")})
    g = guard(r, keep=300, keep_negative=30)
    before = dns.stats()
    for _ in range(3):
        with pytest.raises(DnsError, match="gone.test: No address associated"):
            g.resolve("gone.test", 80)
    assert len(r.calls) == 1
    clock[0] += 31
    with pytest.raises(DnsError):
        g.resolve("gone.test", 80)
    assert len(r.calls) == 2
    d = dns.stats_since(before)
    assert (d["lookups"], d["negative_hits"], d["cache_hits"], d["resolver_calls"]) == (4, 2, 0, 2)
    assert d["failures"] >= 2


@pytest.mark.parametrize("error", [
    socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
    socket.gaierror(socket.EAI_FAIL, "Non-recoverable failure in name resolution"),
    UnicodeError("label too long"),
])
def test_transient_failures_are_not_cached(error):
    r = Resolver({"flaky.test": error})
    g = guard(r)
    for _ in range(3):
        with pytest.raises(DnsError):
            g.resolve("flaky.test", 80)
    assert len(r.calls) == 3
    r.table["flaky.test"] = ["93.184.215.14"]  # the resolver recovers: the next ask gets the answer
    assert g.resolve("flaky.test", 80) == [(socket.AF_INET, ("93.184.215.14", 80))]


def test_the_cache_holds_at_most_max_names_least_recently_used_out(monkeypatch):
    monkeypatch.setattr(dns, "MAX_NAMES", 3)
    r = Resolver({f"n{i}.test": ["93.184.215.14"] for i in range(5)})
    g = guard(r)
    for name in ("n0.test", "n1.test", "n2.test"):
        g.resolve(name, 80)
    g.resolve("n0.test", 80)  # n0 used again: n1 is now the least recent
    g.resolve("n3.test", 80)
    g.resolve("n4.test", 80)
    assert len(dns._cache) == 3
    r.calls.clear()
    for name in ("n0.test", "n3.test", "n4.test"):
        g.resolve(name, 80)
    assert r.calls == []
    g.resolve("n1.test", 80)
    assert r.calls == ["n1.test"]
    assert len(dns._cache) == 3


def test_concurrent_asks_for_one_name_share_one_lookup():
    r = Resolver({"busy.test": ["93.184.215.14"]}, delay=0.3)
    g = guard(r)
    start = threading.Barrier(20)
    answers = []

    def ask():
        start.wait()
        answers.append(g.resolve("busy.test", 80))

    before = dns.stats()
    threads = [threading.Thread(target=ask) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert r.calls == ["busy.test"]
    assert answers == [[(socket.AF_INET, ("93.184.215.14", 80))]] * 20
    d = dns.stats_since(before)
    assert d["lookups"] == 20 and d["resolver_calls"] == 1 and d["shared"] + d["cache_hits"] == 19
    assert d["shared"] >= 1  # (the barrier lets all 20 in during the 0.3 s lookup)


def test_different_names_resolve_at_the_same_time():
    started = {"a.test": threading.Event(), "b.test": threading.Event()}
    saw_other = {}

    def resolver(host, port, *args, **kwargs):
        started[host].set()
        other = "b.test" if host == "a.test" else "a.test"
        # one lookup at a time would make the first wait here for the second (5 s) and fail this test
        saw_other[host] = started[other].wait(5)
        time.sleep(0.5)
        return [info("93.184.215.14", port)]

    g = guard(resolver)
    threads = [threading.Thread(target=g.resolve, args=(name, 80)) for name in started]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    took = time.monotonic() - t0
    assert saw_other == {"a.test": True, "b.test": True}
    assert took < 1.0, took  # about one lookup's time (0.5 s), not two


def test_a_waiter_gives_up_at_its_own_deadline_and_the_answer_is_kept_for_later():
    called, release = threading.Event(), threading.Event()

    def resolver(host, port, *args, **kwargs):
        called.set()
        release.wait(10)
        return [info("93.184.215.14", port)]

    g = guard(resolver)
    watchdog = Watchdog()
    patient: dict = {}

    def ask_patiently():
        with watchdog.deadline(10):
            patient["answer"] = g.resolve("slow.test", 80)

    first = threading.Thread(target=ask_patiently)
    first.start()
    try:
        assert called.wait(5)
        before = dns.stats()
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="during resolve of resolving slow.test"), watchdog.deadline(0.3):
            g.resolve("slow.test", 80)
        took = time.monotonic() - t0
        assert 0.25 <= took < 1.0, took
        d = dns.stats_since(before)
        assert (d["shared"], d["timeouts"], d["resolver_calls"]) == (1, 1, 0)
    finally:
        release.set()
        first.join(10)
        watchdog.close()
    assert patient["answer"] == [(socket.AF_INET, ("93.184.215.14", 80))]


def test_an_answer_is_kept_even_when_every_asker_gave_up():
    release = threading.Event()
    calls = []

    def resolver(host, port, *args, **kwargs):
        calls.append(host)
        release.wait(10)
        return [info("93.184.215.14", port)]

    g = guard(resolver)
    watchdog = Watchdog()
    try:
        with pytest.raises(DeadlineExceeded), watchdog.deadline(0.2):
            g.resolve("late.test", 80)
        release.set()  # the abandoned call ends: the next ask joins it or finds its answer kept
        with watchdog.deadline(5):
            assert g.resolve("late.test", 80) == [(socket.AF_INET, ("93.184.215.14", 80))]
        before = dns.stats()
        with watchdog.deadline(5):
            assert g.resolve("late.test", 80) == [(socket.AF_INET, ("93.184.215.14", 80))]
        assert dns.stats_since(before)["cache_hits"] == 1
    finally:
        release.set()
        watchdog.close()
    assert calls == ["late.test"]


def test_the_guard_judges_a_cached_answer_every_time():
    r = Resolver({"inside.test": ["10.1.2.3"], "mixed.test": ["93.184.215.14", "10.0.0.7"]})
    allowing, refusing = guard(r, allowed=["10.0.0.0/8"]), guard(r)
    assert allowing.resolve("inside.test", 80) == [(socket.AF_INET, ("10.1.2.3", 80))]
    for _ in range(2):  # the answer is cached, and still refused, each time, by the guard that refuses it
        with pytest.raises(BlockedAddress, match=r"inside.test -> 10\.1\.2\.3: private"):
            refusing.resolve("inside.test", 80)
    assert allowing.resolve("inside.test", 80) == [(socket.AF_INET, ("10.1.2.3", 80))]
    for _ in range(2):  # a refused answer is cached raw too: refusing it once does not let it through later
        with pytest.raises(BlockedAddress, match=r"10\.0\.0\.7"):
            refusing.resolve("mixed.test", 80)
    assert r.calls == ["inside.test", "mixed.test"]


def test_an_answer_that_turns_private_is_refused(clock):
    r = Resolver({"rebind.test": ["93.184.215.14"]})
    g = guard(r, keep=60)
    assert g.resolve("rebind.test", 80) == [(socket.AF_INET, ("93.184.215.14", 80))]
    r.table["rebind.test"] = ["127.0.0.1"]
    clock[0] += 61
    with pytest.raises(BlockedAddress, match="loopback"):
        g.resolve("rebind.test", 80)
    with pytest.raises(BlockedAddress, match="loopback"):  # now from the cache: still refused
        g.resolve("rebind.test", 80)
    assert len(r.calls) == 2


def test_literals_localhost_and_connect_to_addresses_never_reach_the_cache():
    r = Resolver({})
    g = AddressGuard(["127.0.0.1/32"], ["img.test:80=127.0.0.1:8080"], resolver=r, dns_cache_s=300)
    before = dns.stats()
    assert g.resolve("img.test", 80) == [(socket.AF_INET, ("127.0.0.1", 8080))]
    assert g.resolve("127.0.0.1", 81) == [(socket.AF_INET, ("127.0.0.1", 81))]
    assert g.resolve("2130706433", 81) == [(socket.AF_INET, ("127.0.0.1", 81))]
    with pytest.raises(BlockedAddress):
        g.resolve("localhost", 80)
    with pytest.raises(BlockedAddress):
        g.resolve("[::1]", 80)
    assert r.calls == [] and dns.stats_since(before)["lookups"] == 0


def test_a_monkeypatched_getaddrinfo_gets_answers_of_its_own(monkeypatch):
    # the default resolver is socket.getaddrinfo as it is at call time, and the cache keys on it
    g = AddressGuard(dns_cache_s=300)
    monkeypatch.setattr(socket, "getaddrinfo", Resolver({"swap.test": ["93.184.215.14"]}))
    assert g.resolve("swap.test", 80) == [(socket.AF_INET, ("93.184.215.14", 80))]
    monkeypatch.setattr(socket, "getaddrinfo", Resolver({"swap.test": ["1.1.1.1"]}))
    assert g.resolve("swap.test", 80) == [(socket.AF_INET, ("1.1.1.1", 80))]


# --- end to end: Fetchers (one per Spark task) of one process share the cache -------------------------
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 64 + b"\xff\xd9"


@pytest.mark.parametrize("keep,expected_calls", [(300.0, 1), (0.0, None)])
def test_fetchers_of_one_process_resolve_a_name_once(keep, expected_calls):
    r = Resolver({"made-up.test": ["127.0.0.1"]})
    with FaultServer("127.0.0.1") as srv:
        srv.add_file("/a.jpg", JPEG)
        cfg = DownloadConfig(allowed_networks=("127.0.0.1/32",), deadline_s=5.0, retries=0, dns_cache_s=keep)
        before = dns.stats()
        results = []
        for _ in range(4):  # four tasks in a reused Python worker, two URLs each
            with Fetcher(cfg, resolver=r) as f:
                results += [f.fetch(f"http://made-up.test:{srv.port}/a.jpg?{i}") for i in range(2)]
        d = dns.stats_since(before)
        connections = srv.connections
    assert [x.status for x in results] == ["success"] * 8, results
    assert all(x.body == JPEG for x in results)
    assert d["lookups"] == connections >= 4  # each new connection asks for the name once
    assert d["resolver_calls"] == len(r.calls) == (expected_calls or d["lookups"])
    assert d["cache_hits"] == d["lookups"] - d["resolver_calls"]
    assert d["failures"] == d["timeouts"] == d["negative_hits"] == 0


def test_the_download_summary_counts_the_workers_dns_cache(spark, tmp_path):
    # names under .invalid (RFC 2606: no resolver answers them) that no earlier test asked: every one of
    # 12 rows is one lookup; 2 names -> 2 resolver calls (the rest share them or hit the negative cache)
    import uuid

    from laion_spark import cli

    tag = uuid.uuid4().hex[:12]
    urls = [f"http://a{tag}.invalid/{i}.jpg" for i in range(8)] + [f"http://b{tag}.invalid/{i}.jpg" for i in range(4)]
    frame = pd.DataFrame({"sample_id": range(len(urls)), "url": urls, "text": ["t"] * len(urls)})
    spark.createDataFrame(frame).coalesce(1).write.parquet(str(tmp_path / "pairs"))
    cfg, module = cli.prepare("download", [], [f"input={tmp_path / 'pairs'}", f"output={tmp_path / 'images'}",
                                               "download.partitions=1", "download.retries=0"])
    summary = cli.run("download", cfg, module, spark)
    assert summary["statuses"] == {"dns_error": 12}
    d = summary["dns"]
    assert d["lookups"] == 12
    assert d["resolver_calls"] == d["failures"] == 2
    assert d["cache_hits"] == 0 and d["negative_hits"] + d["shared"] == 10
    assert d["hit_rate"] == round(10 / 12, 4) and d["wait_s"] >= 0
    assert "DNS: 12 lookups, 2 sent to the resolver (2 failed)" in module.format_report(summary)
