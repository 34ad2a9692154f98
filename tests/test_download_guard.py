"""The address guard: pure decisions on addresses and host spellings, then live checks on loopback servers.

No test here sends a packet anywhere but 127.0.0.0/8 and ::1: public addresses are only ever judged
by the pure functions, and the live tests point at FaultServers on 127.0.0.1, 127.0.0.2 and [::1].
"""

from __future__ import annotations

import ipaddress
import socket

import pytest
import requests
from http_faults import FaultServer, make_tls_files

from laion_spark.config import DownloadConfig
from laion_spark.download.fetch import Fetcher
from laion_spark.download.guard import (
    AddressGuard,
    BlockedAddress,
    ConnectTo,
    DnsError,
    blocked_reason,
    guarded_session,
    literal_ip,
    parse_connect_to,
)

ip = ipaddress.ip_address


# --- (a) the decision function --------------------------------------------------------------------------
# address -> a word the reason must contain (written from the RFCs, not from guard.py's table)
BLOCKED = [
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "metadata"),
    ("169.254.1.1", "link-local"),
    ("100.64.0.1", "carrier-grade"),
    ("100.127.255.254", "carrier-grade"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("127.0.0.1", "loopback"),
    ("127.8.9.10", "loopback"),
    ("192.0.2.10", "documentation"),
    ("198.18.0.1", "benchmark"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fc00::1", "unique-local"),
    ("fd12:3456::1", "unique-local"),
    ("fe80::1", "link-local"),
    ("febf:ffff::1", "link-local"),
    ("ff02::1", "multicast"),
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:169.254.169.254", "metadata"),
    ("::127.0.0.1", ""),  # IPv4-compatible (deprecated)
    ("2002:a00:1::1", "private"),  # 6to4 of 10.0.0.1
    ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
    ("64:ff9b::a9fe:a9fe", "metadata"),  # NAT64 of 169.254.169.254
    ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
    ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
    ("64:ff9b:1::5db8:d70e", "local-use nat64"),  # RFC 8215 local-use prefix: refused even for a public v4
    ("64:ff9b:1:abcd::1", "local-use nat64"),
    ("2001:db8::1", "documentation"),
    ("2001:0:4136:e378:8000:63bf:3f57:fdf2", "teredo"),  # RFC 4380 example; client 192.168.2.13 obfuscated
]

ALLOWED = ["93.184.215.14", "8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "11.0.0.1", "192.169.0.1",
           "2606:4700::1", "2a00:1450:4001::1", "::ffff:93.184.215.14", "2002:5db8:d70e::1",
           # NAT64 well-known prefix (RFC 6052) of public IPv4 addresses: what DNS64 gives IPv6-only executors
           "64:ff9b::5db8:d70e", "64:ff9b::808:808", "64:ff9b::1.1.1.1"]


def test_local_use_nat64_is_let_through_only_when_allowed():
    assert blocked_reason(ip("64:ff9b:1::5db8:d70e"), [ipaddress.ip_network("64:ff9b:1::/48")]) is None
    # the well-known prefix is judged by the embedded address, also against allowed_networks
    assert blocked_reason(ip("64:ff9b::7f00:1"), [ipaddress.ip_network("127.0.0.1/32")]) is None
    assert blocked_reason(ip("64:ff9b::7f00:2"), [ipaddress.ip_network("127.0.0.1/32")]) is not None


@pytest.mark.parametrize("addr,word", BLOCKED)
def test_blocked_addresses_are_refused_with_a_reason(addr, word):
    reason = blocked_reason(ip(addr), [])
    assert reason is not None, addr
    assert word in reason.lower(), (addr, reason)


@pytest.mark.parametrize("addr", ALLOWED)
def test_public_addresses_are_allowed(addr):
    assert blocked_reason(ip(addr), []) is None


def test_allowed_networks_let_exactly_that_network_through():
    allowed = [ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.1.0.0/16")]
    assert blocked_reason(ip("127.0.0.1"), allowed) is None
    assert blocked_reason(ip("::ffff:127.0.0.1"), allowed) is None  # the kernel connects to 127.0.0.1
    assert blocked_reason(ip("10.1.200.3"), allowed) is None
    assert blocked_reason(ip("127.0.0.2"), allowed) is not None
    assert blocked_reason(ip("::1"), allowed) is not None
    assert blocked_reason(ip("10.2.0.1"), allowed) is not None
    assert blocked_reason(ip("192.168.0.1"), allowed) is not None
    assert blocked_reason(ip("fe80::1"), [ipaddress.ip_network("fe80::/10")]) is None


@pytest.mark.parametrize("host,expected", [
    ("2130706433", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("0x7F000001", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("127.0.0.1.", "127.0.0.1"),
    ("10.1", "10.0.0.1"),
    ("0xa9.0376.43518", "169.254.169.254"),
    ("[::1]", "::1"),
    ("[::ffff:10.0.0.1]", "::ffff:10.0.0.1"),
    ("93.184.215.14", "93.184.215.14"),
])
def test_host_spellings_are_read_as_the_resolver_reads_them(host, expected):
    assert literal_ip(host) == ip(expected)


@pytest.mark.parametrize("host", ["example.com", "cafe.be", "deadbeef", "1.2.3.4.5", "0x7g.1", "img.test"])
def test_names_are_not_taken_for_addresses(host):
    assert literal_ip(host) is None


@pytest.mark.parametrize("host", ["2130706433", "0177.0.0.1", "0x7f.1", "127.1", "[::1]", "localhost",
                                  "LOCALHOST.", "img.localhost", "0.0.0.0", "[::]", "[fe80::1]",
                                  "169.254.169.254", "[::ffff:10.0.0.1]", "0xa9fea9fe"])
def test_guard_refuses_loopback_and_private_hosts_without_dns(host, monkeypatch):
    def no_dns(*args, **kwargs):
        raise AssertionError(f"DNS asked for {args[0]!r}")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(BlockedAddress):
        AddressGuard().resolve(host, 80)


def test_guard_returns_a_checked_literal_without_dns():
    assert AddressGuard().resolve("93.184.215.14", 443) == [(socket.AF_INET, ("93.184.215.14", 443))]
    family, sockaddr = AddressGuard().resolve("[2606:4700::1]", 80)[0]
    assert family == socket.AF_INET6 and sockaddr[:2] == ("2606:4700::1", 80)
    assert AddressGuard(["127.0.0.1/32"]).resolve("2130706433", 8080) == [(socket.AF_INET, ("127.0.0.1", 8080))]


def _fake_dns(table, real=socket.getaddrinfo):
    """A getaddrinfo that answers names from `table` (name -> addresses) and literals for real."""

    def getaddrinfo(host, port, *args, **kwargs):
        if host in table:
            out = []
            for addr in table[host]:
                if ":" in addr:
                    out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (addr, port, 0, 0)))
                else:
                    out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, port)))
            return out
        if literal_ip(str(host)) is None:
            raise AssertionError(f"unexpected DNS lookup of {host!r}")
        return real(host, port, *args, **kwargs)

    return getaddrinfo


def test_strict_policy_one_private_address_blocks_the_host(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", _fake_dns({
        "mixed.test": ["93.184.215.14", "10.0.0.7"],
        "public.test": ["93.184.215.14", "2606:4700::1"],
    }))
    with pytest.raises(BlockedAddress, match=r"10\.0\.0\.7") as info:
        AddressGuard().resolve("mixed.test", 80)
    assert "private" in str(info.value)
    got = AddressGuard().resolve("public.test", 80)
    assert [s[0] for _, s in got] == ["93.184.215.14", "2606:4700::1"]


def test_dns_failure_is_its_own_error(monkeypatch):
    def fail(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(DnsError, match="nothing.test"):
        AddressGuard().resolve("nothing.test", 80)
    assert not issubclass(DnsError, OSError) and not issubclass(BlockedAddress, OSError)


@pytest.mark.parametrize("entry,expected", [
    ("img.test:80=127.0.0.1:8080", ConnectTo("img.test", 80, "127.0.0.1", 8080)),
    ("IMG.test=127.0.0.1:8080", ConnectTo("img.test", None, "127.0.0.1", 8080)),
    ("*=[::1]:9", ConnectTo("*", None, "::1", 9)),
    ("[2001:db8::1]:443=10.0.0.1:443", ConnectTo("2001:db8::1", 443, "10.0.0.1", 443)),
    ("*:443=backend.test:8443", ConnectTo("*", 443, "backend.test", 8443)),
])
def test_parse_connect_to(entry, expected):
    assert parse_connect_to(entry) == expected


@pytest.mark.parametrize("entry", ["img.test", "img.test=127.0.0.1", "=127.0.0.1:80", "a=b:0", "a=b:70000",
                                   "a=::1:80", "a:x=b:80", "[::1=b:80", "a=b:port"])
def test_parse_connect_to_rejects_malformed_entries(entry):
    with pytest.raises(ValueError):
        parse_connect_to(entry)


def test_connect_to_target_is_still_checked(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", _fake_dns({}))
    guard = AddressGuard(["127.0.0.1/32"], ["img.test:80=127.0.0.1:8080", "*:81=127.0.0.2:8080"])
    assert guard.resolve("img.test", 80) == [(socket.AF_INET, ("127.0.0.1", 8080))]
    with pytest.raises(BlockedAddress, match=r"127\.0\.0\.2"):
        guard.resolve("img.test", 81)
    with pytest.raises(BlockedAddress):
        AddressGuard([], ["*=10.0.0.1:80"]).resolve("93.184.215.14", 80)


# --- (b) live: the guard inside real connections ------------------------------------------------------
IMAGE = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40


@pytest.fixture(scope="module")
def servers():
    with FaultServer("127.0.0.1") as a, FaultServer("127.0.0.2") as b, FaultServer("::1") as c:
        for s in (a, b, c):
            s.add_file("/a.jpg", IMAGE)
        yield a, b, c


def _fetcher(**kw) -> Fetcher:
    base = dict(allowed_networks=("127.0.0.1/32",), connect_timeout_s=1.0, read_timeout_s=1.0, deadline_s=5.0,
                retries=0, retry_backoff_s=0.0)
    base.update(kw)
    return Fetcher(DownloadConfig(**base))


def _untouched(*srvs):
    return all(s.total_requests == 0 and s.connections == 0 for s in srvs)


def test_allowed_server_is_reachable(servers):
    a, b, c = servers
    with _fetcher() as f:
        r = f.fetch(a.url("/a.jpg"))
    assert (r.status, r.body) == ("success", IMAGE)
    with _fetcher(allowed_networks=("::1/128",)) as f:  # the IPv6 path connects too, once allowed
        r = f.fetch(c.url("/a.jpg"))
        blocked = f.fetch(a.url("/a.jpg"))
    assert (r.status, r.body) == ("success", IMAGE) and blocked.status == "blocked_address"
    assert c.requests("/a.jpg") == 1
    assert _untouched(b)  # (checked before the reset: after it, c would be untouched whatever happened)
    c.reset_counts()  # the later tests expect c untouched by them


def test_direct_and_redirected_requests_to_other_loopback_servers_are_blocked(servers):
    a, b, c = servers
    before = a.requests("/redirect")
    with _fetcher() as f:
        results = [f.fetch(u) for u in (
            b.url("/a.jpg"),
            c.url("/a.jpg"),
            a.url("/redirect?to=" + b.url("/a.jpg")),
            a.url("/redirect?to=" + c.url("/a.jpg")),
            a.url(f"/redirect?code=307&to=http://2130706434:{b.port}/a.jpg"),  # = 127.0.0.2
        )]
    assert [r.status for r in results] == ["blocked_address"] * 5, [r.error_message for r in results]
    assert "127.0.0.2" in results[0].error_message and "::1" in results[1].error_message
    assert results[2].final_url == b.url("/a.jpg")
    assert a.requests("/redirect") == before + 3  # the allowed hop was made
    assert _untouched(b, c)


@pytest.mark.parametrize("spelling", ["2130706433", "0177.0.0.1", "0x7f.1", "127.1", "0x7f000001", "localhost",
                                      "[::ffff:127.0.0.1]", "[::1]"])
def test_numeric_spellings_of_loopback_are_blocked_with_an_empty_allow_list(spelling, servers):
    a, _, c = servers
    before = (a.total_requests, a.connections, c.total_requests, c.connections)
    with _fetcher(allowed_networks=()) as f:
        r = f.fetch(f"http://{spelling}:{a.port if spelling != '[::1]' else c.port}/a.jpg")
    assert r.status == "blocked_address", r
    assert "blocked address" in r.error_message
    assert (a.total_requests, a.connections, c.total_requests, c.connections) == before


def test_numeric_spelling_reaches_the_allowed_address(servers):
    a, _, _ = servers
    with _fetcher() as f:
        r = f.fetch(f"http://2130706433:{a.port}/a.jpg")
    assert (r.status, r.body) == ("success", IMAGE)


def test_connect_to_changes_the_socket_not_the_host_header(servers):
    a, b, _ = servers
    seen = {}

    def record(h):
        seen["host"] = h.headers.get("Host")
        h.reply(200, IMAGE, "image/jpeg")

    a.add_handler("/host", record)
    with _fetcher(connect_to=(f"img.test:80=127.0.0.1:{a.port}",)) as f:
        r = f.fetch("http://img.test/host")
    assert (r.status, r.final_url, r.body) == ("success", "http://img.test/host", IMAGE)
    assert seen["host"] == "img.test"
    with _fetcher(connect_to=(f"*=127.0.0.2:{b.port}",)) as f:
        r = f.fetch("http://img.test/a.jpg")
    assert r.status == "blocked_address" and "127.0.0.2" in r.error_message
    assert _untouched(b)


def test_dns_rebinding_is_caught_at_connection_time(servers, monkeypatch):
    a, b, _ = servers
    monkeypatch.setattr(socket, "getaddrinfo", _fake_dns({
        "good.test": ["127.0.0.1"],
        "rebind.test": ["127.0.0.1", "127.0.0.2"],
    }))
    with _fetcher() as f:
        ok = f.fetch(f"http://good.test:{a.port}/a.jpg")
        bad = f.fetch(f"http://rebind.test:{b.port}/a.jpg")
        hop = f.fetch(a.url(f"/redirect?to=http://rebind.test:{a.port}/a.jpg"))
    assert ok.status == "success"
    assert bad.status == "blocked_address" and "127.0.0.2" in bad.error_message
    assert hop.status == "blocked_address"
    assert _untouched(b)


def test_proxy_environment_cannot_bypass_the_guard(servers, monkeypatch):
    a, b, _ = servers
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, b.base_url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    before = a.requests("/a.jpg")
    with _fetcher() as f:
        r = f.fetch(a.url("/a.jpg"))
        assert f.session.trust_env is False
    assert r.status == "success" and a.requests("/a.jpg") == before + 1
    assert _untouched(b)
    session = guarded_session(AddressGuard(["127.0.0.1/32"]))
    with pytest.raises(BlockedAddress, match="prox"):
        session.get(a.url("/a.jpg"), proxies={"http": b.base_url}, timeout=2)
    session.close()
    assert _untouched(b)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    files = make_tls_files(tmp_path_factory.mktemp("tls"), "img.test")
    if files is None:
        pytest.skip("openssl CLI not installed: cannot make a test certificate")
    return files


def test_https_keeps_sni_and_certificate_checks_on_the_url_host(tls_files):
    with FaultServer("127.0.0.1", tls=(tls_files["cert"], tls_files["key"])) as s:
        s.add_file("/a.jpg", IMAGE)
        with _fetcher(connect_to=(f"img.test:443=127.0.0.1:{s.port}", f"other.test:443=127.0.0.1:{s.port}")) as f:
            f.session.verify = tls_files["ca"]
            ok = f.fetch("https://img.test/a.jpg")
            wrong_name = f.fetch("https://other.test/a.jpg")
        assert (ok.status, ok.body) == ("success", IMAGE)
        assert s.sni_names[0] == "img.test"
        assert wrong_name.status == "connect_error" and "TLS" in wrong_name.error_message
        assert s.requests("/a.jpg") == 1
        # and without our CA the certificate is refused: verification is on
        with _fetcher(connect_to=(f"img.test:443=127.0.0.1:{s.port}",)) as f:
            r = f.fetch("https://img.test/a.jpg")
        assert r.status == "connect_error"
        assert s.requests("/a.jpg") == 1


def test_guarded_session_raises_blocked_address_unwrapped(servers):
    _, b, _ = servers
    session = guarded_session(AddressGuard(["127.0.0.1/32"]))
    with pytest.raises(BlockedAddress):
        session.get(b.url("/a.jpg"), timeout=2)
    with pytest.raises(requests.exceptions.ConnectionError):  # a refused port is an ordinary network error
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        session.get(f"http://127.0.0.1:{port}/", timeout=2)
    session.close()
    assert _untouched(b)
