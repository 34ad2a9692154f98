"""robots.txt as RFC 9309 reads it, through the fetcher against real loopback servers.

Rule precedence (the longest match wins, not the first), `*` and `$` wildcards, a robots.txt deadline of
its own, and a robots.txt timeout that is asked again later instead of shutting the host out for the task.
"""

from __future__ import annotations

import time

import pytest
from http_faults import FaultServer

from laion_spark.config import DownloadConfig
from laion_spark.download import fetch as fetch_module
from laion_spark.download.fetch import Fetcher

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 64 + b"\xff\xd9"


def make(**kw) -> Fetcher:
    base = dict(allowed_networks=("127.0.0.1/32",), connect_timeout_s=1.0, read_timeout_s=2.0, deadline_s=5.0,
                retries=0, robots_txt=True)
    base.update(kw)
    return Fetcher(DownloadConfig(**base))


# (robots.txt, path, allowed?) with the reason RFC 9309 gives; urllib.robotparser, which takes the first
# matching rule and reads '*' and '$' as plain characters, answers differently on every row marked (*)
CASES = [
    ("User-agent: *\nDisallow: /a/\nAllow: /a/b/\n", "/a/b/c.jpg", True),  # (*) longest match: Allow /a/b/
    ("User-agent: *\nDisallow: /a/\nAllow: /a/b/\n", "/a/c.jpg", False),
    ("User-agent: *\nDisallow: /*.png$\n", "/img/x.png", False),  # (*) wildcard + end anchor
    ("User-agent: *\nDisallow: /*.png$\n", "/img/x.png.jpg", True),
    ("User-agent: *\nDisallow: /*/private/\n", "/u/1/private/a.jpg", False),  # (*) wildcard in the middle
    ("User-agent: *\nDisallow: /*/private/\n", "/u/1/public/a.jpg", True),
    ("User-agent: laion-spark\nAllow: /\n\nUser-agent: *\nDisallow: /\n", "/x.jpg", True),  # our group wins
    ("User-agent: otherbot\nDisallow: /\n", "/x.jpg", True),
]


@pytest.mark.parametrize("robots, path, allowed", CASES)
def test_rules_as_rfc_9309_reads_them(robots, path, allowed):
    with FaultServer("127.0.0.1") as s:
        s.add_file("/robots.txt", robots.encode(), "text/plain")
        url = s.add_file(path, JPEG)
        with make() as f:
            r = f.fetch(url)
        assert r.status == ("success" if allowed else "opted_out"), r
        assert s.requests(path) == (1 if allowed else 0)  # a disallowed URL is never asked for


def test_robots_txt_gets_a_deadline_of_its_own():
    # The first URL of a host reaches it through a redirect that took most of its deadline; its robots.txt
    # answers in 0.6 s. Fetched within what was left of that URL's deadline (0.3 s), robots.txt timed out
    # and the host's every other URL failed for the rest of the task.
    with FaultServer("127.0.0.1") as first, FaultServer("127.0.0.1") as second:
        def slow_robots(h):
            h.wait(0.6)
            h.reply(200, b"User-agent: *\nDisallow: /private/\n", "text/plain")

        second.add_handler("/robots.txt", slow_robots)
        target = second.add_file("/a.jpg", JPEG)
        second.add_file("/b.jpg", JPEG)
        first.add_file("/robots.txt", b"", "text/plain")

        def slow_redirect(h):
            h.wait(0.7)
            h.reply(302, b"", None, {"Location": target})

        start = first.add_handler("/go", slow_redirect)
        with make(deadline_s=1.0) as f:
            r1 = f.fetch(start)  # 0.7 s redirect + 0.6 s robots.txt > 1 s: this URL runs out of time
            r2 = f.fetch(second.url("/b.jpg"))
            r3 = f.fetch(second.url("/private/c.jpg"))
        assert r1.status == "timeout", r1
        assert r2.status == "success", r2  # robots.txt was loaded, not cached as unreachable
        assert r3.status == "opted_out", r3
        assert second.requests("/robots.txt") == 1


def test_a_robots_txt_timeout_is_asked_again_later(monkeypatch):
    monkeypatch.setattr(fetch_module, "ROBOTS_TIMEOUT_FORGET_S", 0.5)
    calls = []
    with FaultServer("127.0.0.1") as s:
        def robots(h):
            calls.append(time.monotonic())
            if len(calls) == 1:
                h.wait(2.0)  # beyond the deadline: a timeout
            h.reply(200, b"User-agent: *\nAllow: /\n", "text/plain")

        s.add_handler("/robots.txt", robots)
        url = s.add_file("/a.jpg", JPEG)
        with make(deadline_s=1.0) as f:
            first = f.fetch(url)
            soon = f.fetch(url)  # inside the forget window: the timeout is remembered (the host is not hammered)
            time.sleep(0.6)
            later = f.fetch(url)
        assert first.status == "timeout" and "robots.txt" in first.error_message, first
        assert soon.status == "timeout", soon
        assert later.status == "success", later
        assert len(calls) == 2
