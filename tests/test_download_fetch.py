"""The fetcher against real loopback servers with faults: one expected status per fault.

Every server is a FaultServer on 127.0.0.1 (allowed_networks=127.0.0.1/32); the only name looked up
is a `.invalid` one (RFC 2606), which no resolver answers.
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate

import pytest
from http_faults import CHAIN_BODY, FLAKY_BODY, HTML_BODY, Blackhole, FaultServer

from laion_spark import schemas as S
from laion_spark.config import DownloadConfig
from laion_spark.download.fetch import Fetcher, FetchResult, opt_out_directive, parse_retry_after, user_agent

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 64 + b"\xff\xd9"
CAP = 1024 * 1024


@pytest.fixture(scope="module")
def srv():
    with FaultServer("127.0.0.1") as s:
        s.add_file("/photo.jpg", JPEG)
        yield s


def make(**kw) -> Fetcher:
    base = dict(allowed_networks=("127.0.0.1/32",), connect_timeout_s=0.5, read_timeout_s=0.5, deadline_s=5.0,
                retries=0, retry_backoff_s=0.0, max_body_bytes=CAP)
    base.update(kw)
    return Fetcher(DownloadConfig(**base))


def fetch(url: str, **kw) -> tuple[FetchResult, float]:
    with make(**kw) as f:
        t = time.monotonic()
        r = f.fetch(url)
        return r, time.monotonic() - t


def check(r: FetchResult, status: str, http_status=None):
    assert r.status == status, r
    assert r.status in S.DOWNLOAD_STATUSES
    if status == "success":
        assert r.error_message is None and r.body is not None
    else:
        assert r.error_message and r.body is None
    if http_status is not None:
        assert r.http_status == http_status, r


def test_success(srv):
    r, _ = fetch(srv.url("/photo.jpg"))
    check(r, "success", 200)
    assert r.body == JPEG and r.final_url == srv.url("/photo.jpg") and r.content_type == "image/jpeg"


@pytest.mark.parametrize("code", [404, 403, 410, 500, 502])
def test_http_errors(srv, code):
    before = srv.requests(f"/status/{code}")
    r, _ = fetch(srv.url(f"/status/{code}"))
    check(r, "http_error", code)
    assert srv.requests(f"/status/{code}") == before + 1


def test_5xx_is_retried_and_4xx_is_not(srv):
    r, _ = fetch(srv.url("/status/404"), retries=2)
    check(r, "http_error", 404)
    before = srv.requests("/status/502")
    r, _ = fetch(srv.url("/status/502"), retries=2)
    check(r, "http_error", 502)
    assert srv.requests("/status/502") == before + 3


def test_503_twice_then_success_with_two_retries(srv):
    url = srv.url("/flaky/503?fail=2&key=retry2")
    r, _ = fetch(url, retries=2)
    check(r, "success", 200)
    assert r.body == FLAKY_BODY
    assert srv.requests("/flaky/503?fail=2&key=retry2") == 3


def test_503_without_retries_fails_after_one_request(srv):
    r, _ = fetch(srv.url("/flaky/503?fail=2&key=retry0"), retries=0)
    check(r, "http_error", 503)
    assert srv.requests("/flaky/503?fail=2&key=retry0") == 1


def test_backoff_doubles(srv):
    r, took = fetch(srv.url("/flaky/500?fail=2&key=backoff"), retries=2, retry_backoff_s=0.2)
    check(r, "success")
    assert 0.55 <= took < 2.0  # 0.2 + 0.4


def test_429_retry_after_is_waited_then_success(srv):
    r, took = fetch(srv.url("/flaky/429?fail=1&after=1&key=ra1"), retries=1, retry_after_max_s=5)
    check(r, "success")
    assert srv.requests("/flaky/429?fail=1&after=1&key=ra1") == 2
    assert took >= 0.95  # the backoff is 0: only Retry-After made us wait


def test_503_retry_after_http_date(srv):
    when = formatdate(time.time() + 2, usegmt=True)
    path = "/flaky/503?fail=1&key=radate&after=" + when.replace(" ", "%20").replace(",", "%2C")
    r, took = fetch(srv.url(path), retries=1, retry_after_max_s=5)
    check(r, "success")
    assert took >= 0.9


def test_retry_after_above_the_cap_fails_at_once(srv):
    r, took = fetch(srv.url("/retry-after/429?after=60"), retries=3, retry_after_max_s=5)
    check(r, "http_error", 429)
    assert took < 0.5 and "Retry-After" in r.error_message
    assert srv.requests("/retry-after/429") == 1


def test_retry_after_longer_than_the_deadline_is_not_waited(srv):
    r, took = fetch(srv.url("/flaky/429?fail=5&after=3&key=radl"), retries=3, retry_after_max_s=10, deadline_s=1)
    check(r, "http_error", 429)
    assert took < 0.5
    assert srv.requests("/flaky/429?fail=5&after=3&key=radl") == 1


def test_connect_timeout():
    with Blackhole("127.0.0.1") as hole:
        r, took = fetch(hole.url("/x.jpg"), connect_timeout_s=0.5)
        check(r, "timeout")
        assert "connect" in r.error_message and 0.45 <= took < 1.5
        r, took = fetch(hole.url("/x.jpg"), connect_timeout_s=10, deadline_s=0.6)  # clipped to the deadline
        check(r, "timeout")
        assert 0.55 <= took < 1.5


def test_connect_refused_is_connect_error():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r, took = fetch(f"http://127.0.0.1:{port}/x.jpg")
    check(r, "connect_error")
    assert took < 0.5


def test_reset_before_response_is_connect_error(srv):
    r, _ = fetch(srv.url("/reset"))
    check(r, "connect_error")


def test_headers_timeout(srv):
    r, took = fetch(srv.url("/slow-headers?s=3"), read_timeout_s=0.5)
    check(r, "timeout")
    assert 0.45 <= took < 1.5


def test_body_timeout(srv):
    r, took = fetch(srv.url("/slow-body?s=3"), read_timeout_s=0.5)
    check(r, "timeout", 200)
    assert 0.45 <= took < 1.5


def test_trickling_body_hits_the_deadline(srv):
    # each byte comes well inside the read timeout: only the per-URL deadline can stop this
    # (run in a thread so that a broken deadline fails the test instead of hanging it)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fetch(srv.url("/trickle?every=0.1"), read_timeout_s=1.0,
                                                                   deadline_s=1.2)), daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "the deadline did not stop a trickling body"
    r, took = out["r"]
    check(r, "timeout", 200)
    assert "deadline" in r.error_message
    assert 1.1 <= took < 2.0


def test_fast_never_ending_body_is_too_large(srv):
    before = srv.bytes_sent("/never-ending")
    r, took = fetch(srv.url("/never-ending"), deadline_s=5)
    check(r, "too_large", 200)
    assert took < 2
    # the server can only push the cap plus what the socket buffers hold (a few MB on loopback)
    assert srv.bytes_sent("/never-ending") - before < CAP + 16 * 1024 * 1024


@pytest.mark.parametrize("with_length", [True, False])
def test_body_over_the_cap_is_too_large(srv, with_length):
    path = f"/huge?n={64 * 1024 * 1024}&length={int(with_length)}"
    before = srv.bytes_sent("/huge")
    r, _ = fetch(srv.url(path))
    check(r, "too_large", 200)
    assert ("Content-Length" in r.error_message) == with_length
    time.sleep(0.2)  # let the server notice the closed connection
    assert srv.bytes_sent("/huge") - before < CAP + 16 * 1024 * 1024


def test_body_exactly_at_the_cap_is_kept(srv):
    srv.add_file("/cap.bin", b"c" * CAP, "application/octet-stream")
    r, _ = fetch(srv.url("/cap.bin"))
    check(r, "success")
    assert len(r.body) == CAP
    srv.add_file("/cap1.bin", b"c" * (CAP + 1), "application/octet-stream")
    r, _ = fetch(srv.url("/cap1.bin"))
    check(r, "too_large")


def test_gzip_bomb_is_stopped_on_decoded_bytes(srv):
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))
    assert len(bomb) < CAP
    srv.add_handler("/bomb.jpg", lambda h: h.reply(200, bomb, "image/jpeg", {"Content-Encoding": "gzip"}))
    r, _ = fetch(srv.url("/bomb.jpg"))
    check(r, "too_large", 200)
    assert "decoded" in r.error_message


def test_lying_content_length_is_truncated_and_retried(srv):
    before = srv.requests("/lying-length")
    r, _ = fetch(srv.url("/lying-length?claim=5000&send=100"), retries=1)
    check(r, "truncated", 200)
    assert srv.requests("/lying-length") == before + 2


def test_chunked_body_cut_mid_stream_is_truncated(srv):
    def cut(h):
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        h.write_chunk(b"a" * 1000)
        h.wfile.write(b"400\r\n" + b"b" * 10)  # announces 1024 bytes, sends 10, hangs up
        h.wfile.flush()
        h.close_connection = True

    srv.add_handler("/cut-chunked", cut)
    r, _ = fetch(srv.url("/cut-chunked"))
    check(r, "truncated", 200)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_content_encoding_is_decoded(srv, encoding):
    r, _ = fetch(srv.url(f"/{encoding}/photo.jpg"))
    check(r, "success", 200)
    assert r.body == JPEG


def test_redirect_chain(srv):
    r, _ = fetch(srv.url("/redirect-chain/3"))
    check(r, "success", 200)
    assert r.body == CHAIN_BODY and r.final_url == srv.url("/redirect-chain/0")


def test_redirect_chain_at_and_over_the_limit(srv):
    r, _ = fetch(srv.url("/redirect-chain/5"), max_redirects=5)
    check(r, "success")
    r, _ = fetch(srv.url("/redirect-chain/6"), max_redirects=5)
    check(r, "too_many_redirects", 302)
    r, _ = fetch(srv.url("/redirect-chain/1"), max_redirects=0)
    check(r, "too_many_redirects")


@pytest.mark.parametrize("path", ["/redirect-loop", "/redirect-pingpong/a"])
def test_redirect_loops(srv, path):
    r, _ = fetch(srv.url(path), max_redirects=50)
    check(r, "too_many_redirects")
    assert "redirect loop" in r.error_message


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_every_redirect_code_is_followed(srv, code):
    r, _ = fetch(srv.url(f"/redirect?code={code}&to=/photo.jpg"))
    check(r, "success")
    assert r.body == JPEG and r.final_url == srv.url("/photo.jpg")


@pytest.mark.parametrize("target", ["ftp://example.invalid/a.jpg", "javascript:alert(1)", "http://:80/"])
def test_redirect_to_a_bad_scheme_is_invalid_url(srv, target):
    r, _ = fetch(srv.url("/redirect?to=" + target))
    check(r, "invalid_url")


def test_redirect_to_a_blocked_address(srv):
    with FaultServer("127.0.0.2") as other:
        other.add_file("/photo.jpg", JPEG)
        r, _ = fetch(srv.url("/redirect?to=" + other.url("/photo.jpg")))
        check(r, "blocked_address")
        assert other.total_requests == 0 and other.connections == 0


def test_html_with_an_image_content_type_is_fetched(srv):
    r, _ = fetch(srv.url("/html-as-jpeg"))
    check(r, "success", 200)
    assert r.body == HTML_BODY and r.content_type == "image/jpeg"


def test_empty_body(srv):
    r, _ = fetch(srv.url("/empty"))
    check(r, "success", 200)
    assert r.body == b""


@pytest.mark.parametrize("tags,status", [
    (["noai"], "opted_out"),
    (["noimageai"], "opted_out"),
    (["NoAI"], "opted_out"),
    (["noindex, nofollow"], "success"),
    (["noindex", "noimageai"], "opted_out"),
    (["otherbot: noai"], "success"),
    (["otherbot: noai, noimageai"], "success"),
    (["laion-spark: noimageai"], "opted_out"),
    (["LAION-Spark : noai"], "opted_out"),
    (["*: noai"], "opted_out"),
    (["otherbot: noindex, laion-spark: noai"], "opted_out"),
    (["otherbot: noai", "noindex"], "success"),
    (["unavailable_after: 25 Jun 2010 15:00:00 PST"], "success"),
    (["laion-sparkle: noai"], "success"),
])
def test_x_robots_tag(srv, tags, status):
    query = "&".join("tag=" + t.replace(" ", "%20").replace(",", "%2C").replace("*", "%2A") for t in tags)
    r, _ = fetch(srv.url("/xrobots?" + query))
    check(r, status, 200)


def test_opted_out_body_is_not_read(srv):
    def noai_huge(h):
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("X-Robots-Tag", "noai")
        h.send_header("Content-Length", str(256 * 1024 * 1024))
        h.end_headers()
        chunk = b"z" * 65536
        for _ in range(4096):
            h.write_body(chunk)

    srv.add_handler("/noai-huge", noai_huge)
    r, _ = fetch(srv.url("/robots-noai"))
    check(r, "opted_out", 200)
    r, _ = fetch(srv.url("/noai-huge"), max_body_bytes=512 * 1024 * 1024)
    check(r, "opted_out", 200)
    time.sleep(0.2)
    assert srv.bytes_sent("/noai-huge") < 32 * 1024 * 1024


ROBOTS = b"User-agent: laion-spark\nDisallow: /private/\n\nUser-agent: *\nDisallow: /\n"


def test_robots_txt_disallow():
    with FaultServer("127.0.0.1") as s:
        s.add_file("/robots.txt", ROBOTS, "text/plain")
        s.add_file("/private/a.jpg", JPEG)
        s.add_file("/public/a.jpg", JPEG)
        with make(robots_txt=True) as f:
            denied = f.fetch(s.url("/private/a.jpg"))
            allowed = f.fetch(s.url("/public/a.jpg"))
            again = f.fetch(s.url("/private/a.jpg"))
        check(denied, "opted_out")
        assert "robots.txt disallows" in denied.error_message
        check(again, "opted_out")
        check(allowed, "success")
        assert s.requests("/robots.txt") == 1 and s.requests("/private/a.jpg") == 0
        r, _ = fetch(s.url("/private/a.jpg"), robots_txt=False)
        check(r, "success")


def test_robots_txt_is_fetched_once_under_concurrency():
    with FaultServer("127.0.0.1") as s:
        def slow_robots(h):
            h.wait(0.3)
            h.reply(200, ROBOTS, "text/plain")

        s.add_handler("/robots.txt", slow_robots)
        s.add_file("/public/a.jpg", JPEG)
        s.add_file("/private/a.jpg", JPEG)
        with make(robots_txt=True, threads=8) as f, ThreadPoolExecutor(8) as pool:
            urls = [s.url("/public/a.jpg"), s.url("/private/a.jpg")] * 8
            results = list(pool.map(f.fetch, urls))
        assert [r.status for r in results] == ["success", "opted_out"] * 8
        assert s.requests("/robots.txt") == 1


def test_robots_txt_missing_allows_and_5xx_refuses():
    with FaultServer("127.0.0.1") as s:
        s.add_file("/a.jpg", JPEG)
        r, _ = fetch(s.url("/a.jpg"), robots_txt=True)  # /robots.txt is a 404
        check(r, "success")
        s.add_handler("/robots.txt", lambda h: h.reply(503, b"down", "text/plain"))
        before = s.requests("/a.jpg")
        r, _ = fetch(s.url("/a.jpg"), robots_txt=True)
        check(r, "http_error", 503)
        assert "robots.txt" in r.error_message
        assert s.requests("/a.jpg") == before
        assert S.is_retryable(r.status, r.http_status)


@pytest.mark.parametrize("url", ["ftp://example.invalid/a.jpg", "not a url", "http://", "http:///a.jpg",
                                 "http://example.invalid:99999/", "http://example.invalid:abc/",
                                 "http://example.invalid:0/", "", "   ", "javascript:alert(1)", "http://[::1/",
                                 "//example.invalid/a.jpg", "file:///etc/passwd", None])
def test_invalid_urls(url):
    r, took = fetch(url)
    check(r, "invalid_url")
    assert took < 0.2


def test_dns_error():
    r, _ = fetch("http://no-such-host.invalid/a.jpg")
    check(r, "dns_error")


def test_user_agent_and_request_headers(srv):
    seen = {}

    def record(h):
        seen.update(h.headers.items())
        h.reply(200, JPEG, "image/jpeg")

    srv.add_handler("/ua", record)
    r, _ = fetch(srv.url("/ua"), contact="ops@example.org")
    check(r, "success")
    from laion_spark import __version__

    assert seen["User-Agent"] == f"Mozilla/5.0 (compatible; laion-spark/{__version__}; contact: ops@example.org)"
    assert seen["Accept-Encoding"] == "gzip, deflate"
    assert "Cookie" not in seen
    cfg = DownloadConfig(user_agent="mybot/1.0", contact="https://x.example/contact")
    assert user_agent(cfg) == "mybot/1.0 (contact: https://x.example/contact)"
    assert user_agent(DownloadConfig(user_agent="mybot/1.0")) == "mybot/1.0"


def test_connections_are_reused(srv):
    before = srv.connections
    with make() as f:
        for _ in range(5):
            check(f.fetch(srv.url("/photo.jpg")), "success")
    assert srv.connections - before == 1


def test_threads_share_one_fetcher(srv):
    for i in range(20):
        srv.add_file(f"/many/{i}.jpg", JPEG + bytes([i]))
    with make(threads=8) as f, ThreadPoolExecutor(8) as pool:
        urls = [srv.url(f"/many/{i % 20}.jpg") for i in range(200)]
        results = list(pool.map(f.fetch, urls))
    assert all(r.status == "success" for r in results)
    assert [r.body[-1] for r in results] == [i % 20 for i in range(200)]


def test_close_stops_a_retry_wait(srv):
    f = make(retries=3, retry_backoff_s=5.0, deadline_s=30)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", f.fetch(srv.url("/status/503"))))
    start = time.monotonic()
    t.start()
    time.sleep(0.3)
    f.close()
    t.join(5)
    assert not t.is_alive() and time.monotonic() - start < 1.5
    check(out["r"], "http_error", 503)
    check(f.fetch(srv.url("/photo.jpg")), "connect_error")  # a closed fetcher starts nothing


def test_unexpected_errors_become_rows(srv, monkeypatch):
    f = make()

    def boom(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(f, "_request", boom)
    r = f.fetch(srv.url("/photo.jpg"))
    check(r, "connect_error")
    assert "RuntimeError" in r.error_message
    monkeypatch.undo()  # now one level down: the transport itself fails in an unforeseen way
    monkeypatch.setattr(f.session, "get", boom)
    r = f.fetch(srv.url("/photo.jpg"))
    check(r, "connect_error")
    assert "RuntimeError" in r.error_message
    f.close()


# --- the pure helpers, against expectations written from the specs --------------------------------------
def test_opt_out_directive_unit():
    d = ("noai", "noimageai")
    assert opt_out_directive([], "laion-spark", d) is None
    assert opt_out_directive(["noai"], "laion-spark", d) == "noai"
    assert opt_out_directive(["googlebot: noindex", "otherbot: noimageai"], "laion-spark", d) is None
    assert opt_out_directive(["googlebot: noindex", "Laion-Spark: NOIMAGEAI"], "laion-spark", d) == "noimageai"
    assert opt_out_directive(["none"], "laion-spark", ("none",)) == "none"
    assert opt_out_directive(["max-image-preview: none, noai"], "laion-spark", d) == "noai"


def test_parse_retry_after_unit():
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after(" 0 ", now) == 0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == pytest.approx(30, abs=1)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now) == 0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("-5", now) is None


def test_fault_server_counts_concurrency_and_stops_listening():
    with FaultServer("127.0.0.1") as s:
        with make(threads=4, read_timeout_s=2) as f, ThreadPoolExecutor(4) as pool:
            results = list(pool.map(f.fetch, [s.url("/slow-headers?s=0.3")] * 4))
        assert [r.status for r in results] == ["success"] * 4
        assert s.peak_concurrency == 4 and s.requests("/slow-headers") == 4 and s.total_requests == 4
        assert s.requests("/slow-headers?s=0.3") == 4
        port = s.port
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
