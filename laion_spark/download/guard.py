"""The address guard: a host name and port -> the checked addresses a download may connect to.

INPUT  -> a host (name, IPv4 in any inet_aton spelling, [IPv6]) and port, `download.allowed_networks`
          (CIDRs let through) and `download.connect_to` (HOST[:PORT]=ADDR:PORT redirections)
OUTPUT -> the socket addresses to connect to, every one of them public or inside an allowed network;
          otherwise `BlockedAddress` (status blocked_address) or `DnsError` (status dns_error)

Why at connection time: a check on the URL's host before the request is a TOCTOU hole (the name may
resolve to a public address for the check and to 10.0.0.1 for the connect, "DNS rebinding"), and it
misses redirect hops and proxies. Here the guard sits inside urllib3's `HTTPConnection._new_conn`,
the one place every socket of a download is opened, and connects only to the addresses it checked.
`guarded_session()` plugs those connections into a requests Session (no proxies, no env settings).
Names are resolved through the process's DNS cache (dns.py), which keeps raw answers: a cached
answer is judged again on every use, by the guard using it.

Why STRICT: when a name resolves to several addresses and one of them is private, the whole host is
refused. A host that mixes public and private records is either misconfigured or probing us.

`BlockedAddress` and `DnsError` are deliberately NOT OSError subclasses: urllib3's `urlopen` wraps
OSError / HTTPException raised while connecting into ProtocolError / NewConnectionError (and requests
then into ConnectionError), whereas any other exception passes through urllib3 and requests unchanged,
so the fetcher can tell a refusal from a network error by its type.
"""

from __future__ import annotations

import heapq
import http.client
import ipaddress
import itertools
import logging
import re
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.timeout import _DEFAULT_TIMEOUT

from laion_spark.download import dns

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class GuardError(Exception):
    """Base of the guard's refusals (not an OSError: see the module docstring)."""


class BlockedAddress(GuardError):
    """The host is, or resolves to, an address downloads may not connect to; the message says which and why."""


class DnsError(GuardError):
    """The host name does not resolve (or resolves to nothing usable)."""


class DeadlineExceeded(GuardError):
    """The URL's deadline passed while resolving or connecting (status timeout); the message names the phase."""


# --- the per-URL deadline, enforced from outside the blocking calls --------------------------------------
# Why from outside: a socket timeout bounds one read, not a server that sends the status line or the
# headers one byte just inside every read timeout, and getaddrinfo has no timeout at all. So each URL
# gets a Deadline (the phase it is in, the socket it is using), a per-Fetcher Watchdog thread cuts that
# socket (shutdown, never close: the fd stays ours) when the time is up, and name resolution runs in a
# helper thread waited on with the time left (dns.lookup, which also caches and shares lookups). The
# Deadline of the URL a thread is fetching is found through a thread-local: urllib3 opens and uses
# connections in the calling thread.
_current = threading.local()


def current_deadline() -> Deadline | None:
    """The Deadline of the URL this thread is fetching (None outside Watchdog.deadline())."""
    return getattr(_current, "deadline", None)


class Deadline:
    """One URL's time limit: its phase and the socket the watchdog cuts when the time is up (thread-safe)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.phase = "start"
        self.expired_in: str | None = None  # the phase that was running when the time ran out
        self.done = False
        self._lock = threading.Lock()
        self._src: socket.socket | None = None  # the socket attached, to skip attaching it twice
        self._killer: socket.socket | None = None  # what is cut: the socket itself, or a dup of its fd
        self._owned = False  # _killer is our dup (closed on release)

    def left(self) -> float:
        return self.at - time.monotonic()

    @property
    def expired(self) -> bool:
        return self.expired_in is not None

    def enter(self, phase: str) -> None:
        self.phase = phase

    def message(self, what: str = "") -> str:
        """-> 'deadline_s=2 exceeded during <phase>[ of <what>]'."""
        return f"deadline_s={self.seconds:g} exceeded during {self.expired_in or self.phase}" + (
            f" of {what}" if what else "")

    def attach(self, sock: socket.socket, dup: bool = False) -> None:
        """Cut `sock` when the time is up (at once if it already is). dup: cut a dup of its fd, for a
        socket about to be wrapped by TLS (wrapping detaches the object, the handshake still needs
        cutting); else the object itself (a closed object has fd -1: never someone else's socket)."""
        with self._lock:
            if sock is self._src:
                return
            self._drop()
            try:
                self._killer = socket.socket(fileno=_dup(sock)) if dup else sock
            except OSError:  # closed under us: nothing to cut
                return
            self._src, self._owned = sock, dup
            if self.expired:
                _cut(self._killer)

    def release(self) -> bool:
        """Forget the socket (its request is over) -> True if the watchdog cut it (never reuse it then)."""
        with self._lock:
            self._drop()
            return self.expired

    def expire(self) -> None:
        """Time is up: note the phase and cut the socket (called by the Watchdog, or by a caller that saw it)."""
        with self._lock:
            if self.expired_in is None:
                self.expired_in = self.phase
            if self._killer is not None:
                _cut(self._killer)

    def _drop(self) -> None:
        if self._killer is not None and self._owned:
            self._killer.close()
        self._killer = self._src = None
        self._owned = False


def _dup(sock: socket.socket) -> int:
    import os

    return os.dup(sock.fileno())


def _cut(sock: socket.socket) -> None:
    """shutdown, not close: a thread blocked in recv/connect/handshake on it wakes with EOF or an error."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class Watchdog:
    """One thread per Fetcher that expires each URL's Deadline at its time; started on first use."""

    def __init__(self):
        self._cond = threading.Condition()
        self._heap: list = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    @contextmanager
    def deadline(self, seconds: float):
        """Within the block, this thread's fetch is bounded by a Deadline of `seconds` (yielded)."""
        d = Deadline(seconds)
        with self._cond:
            if self._closed:
                d.expire()
            else:
                earliest = self._heap[0][0] if self._heap else None
                heapq.heappush(self._heap, (d.at, next(self._seq), d))
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="download-watchdog", daemon=True)
                    self._thread.start()
                elif earliest is None or d.at < earliest:
                    self._cond.notify()
        previous = current_deadline()
        _current.deadline = d
        try:
            yield d
        finally:
            _current.deadline = previous
            d.done = True
            d.release()

    def close(self) -> None:
        """Stop the thread; deadlines still running expire now (their sockets are cut)."""
        with self._cond:
            self._closed = True
            pending = [d for _, _, d in self._heap if not d.done]
            self._heap.clear()
            self._cond.notify()
            thread = self._thread
        for d in pending:
            d.expire()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    d = heapq.heappop(self._heap)[2]
                    if not d.done:
                        d.expire()
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


# Explicit lists first (their reasons are clearer than "not global", and Python's is_global misses
# some of them, e.g. it calls ::1.2.3.4 and 2002::/16 global); `not is_global` is the catch-all.
_V4_BLOCKS = [
    ("169.254.169.254/32", "link-local cloud metadata service"),
    ("0.0.0.0/8", "unspecified / 'this network' (RFC 1122)"),
    ("10.0.0.0/8", "private network (RFC 1918)"),
    ("100.64.0.0/10", "carrier-grade NAT shared space (RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private network (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments (RFC 6890)"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.88.99.0/24", "6to4 relay anycast (deprecated)"),
    ("192.168.0.0/16", "private network (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved (RFC 1112)"),
]
_V6_BLOCKS = [
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("100::/64", "discard-only (RFC 6666)"),
    ("2001:db8::/32", "documentation"),
    ("fc00::/7", "unique-local (RFC 4193)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
]
_V4_NETS = [(ipaddress.ip_network(n), why) for n, why in _V4_BLOCKS]
_V6_NETS = [(ipaddress.ip_network(n), why) for n, why in _V6_BLOCKS]
# NAT64 (RFC 6052): the well-known prefix carries the IPv4 address in its last 32 bits, so it is judged
# by that address (IPv6-only executors behind DNS64 reach every IPv4-only site this way). The local-use
# prefix (RFC 8215) is translated by a network's own gateway with a prefix length we cannot know (the
# IPv4 address sits elsewhere for /48../64), so it is refused unless allowed_networks names it.
_NAT64_WKP = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


def parse_networks(cidrs) -> list[IPNetwork]:
    """('127.0.0.1/32', '10.0.0.0/8', ...) -> networks (host bits allowed); ValueError on a bad entry."""
    return [ipaddress.ip_network(str(c).strip(), strict=False) for c in cidrs]


def _embedded_v4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """An IPv6 address that carries an IPv4 one (mapped, 6to4, NAT64, Teredo) -> (that IPv4, how)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "IPv4-mapped"
    if ip.sixtofour is not None:
        return ip.sixtofour, "6to4"
    if ip in _NAT64_WKP:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64"
    if ip.teredo is not None:
        return ip.teredo[1], "Teredo"
    return None


def _in_allowed(ip: IPAddress, allowed) -> bool:
    return any(ip.version == net.version and ip in net for net in allowed)


def blocked_reason(ip: IPAddress, allowed=()) -> str | None:
    """An IP address + allowed networks -> why a download may not connect to it, or None if it may.

    Pure function (no network). An address inside an allowed network is let through whatever it is.
    """
    if isinstance(ip, str):
        ip = ipaddress.ip_address(ip)
    if _in_allowed(ip, allowed):
        return None
    if ip.version == 6:
        if ip.scope_id:  # fe80::1%eth0: compare without the zone
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        embedded = _embedded_v4(ip)
        if embedded is not None:
            v4, how = embedded
            if how == "IPv4-mapped":  # the kernel connects to the IPv4 address itself: judge it alone
                inner = blocked_reason(v4, allowed)
                return None if inner is None else f"{how} {v4}: {inner}"
            inner = blocked_reason(v4, allowed)
            if inner is not None:
                return f"{how} address embedding {v4}: {inner}"
            if how == "NAT64":  # the gateway connects to the public v4 itself (Python calls ::/8 reserved)
                return None
        if ip in _NAT64_LOCAL:
            return "local-use NAT64 (RFC 8215): the embedded IPv4 address cannot be judged"
        for net, why in _V6_NETS:
            if ip in net:
                return why
    else:
        for net, why in _V4_NETS:
            if ip in net:
                return why
    if ip.is_multicast:
        return "multicast"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "not globally routable"
    return None


# inet_aton spellings: 1 to 4 parts, each decimal, octal (leading 0) or hex (0x): 2130706433, 0x7f.1, 0177.0.0.1
_AIOTN = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$", re.IGNORECASE)


def literal_ip(host: str) -> IPAddress | None:
    """A URL host -> the IP address it spells (IPv4 with inet_aton's forms, [IPv6]), None for a name.

    Every spelling that the C resolver would read as an IPv4 address is read as one here, so
    `http://2130706433/` and `http://0x7f.1/` are judged as 127.0.0.1, not as names.
    """
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if ":" in h:
        try:
            return ipaddress.IPv6Address(h)
        except ValueError:
            return None
    h = h.rstrip(".")
    if _AIOTN.match(h):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(h))
        except OSError:  # e.g. 08.1 (bad octal) or a part out of range: the resolver would also refuse it
            return None
    return None


@dataclass(frozen=True)
class ConnectTo:
    """One `connect_to` rule: connections for host (any if '*') and port (any if None) go to addr:to_port."""

    host: str
    port: int | None
    addr: str
    to_port: int

    def matches(self, host: str, port: int) -> bool:
        return (self.host == "*" or self.host == host.lower().rstrip(".")) and self.port in (None, port)


def _split_host_port(text: str, port_required: bool) -> tuple[str, int | None]:
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in {text!r}")
        host, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError(f"expected ':PORT' after ']' in {text!r}")
        port_text = rest[1:] if rest else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        raise ValueError(f"IPv6 addresses must be in brackets: {text!r}")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"no host in {text!r}")
    if not port_text:
        if port_required:
            raise ValueError(f"no port in {text!r}")
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port {port_text!r} in {text!r}")
    return host, int(port_text)


def parse_connect_to(entry: str) -> ConnectTo:
    """'HOST[:PORT]=ADDR:PORT' (HOST '*' = any host; IPv6 in brackets) -> ConnectTo; ValueError if malformed."""
    if "=" not in entry:
        raise ValueError("expected HOST[:PORT]=ADDR:PORT")
    left, right = entry.split("=", 1)
    host, port = _split_host_port(left, port_required=False)
    addr, to_port = _split_host_port(right, port_required=True)
    return ConnectTo(host.lower().rstrip("."), port, addr, to_port)


class AddressGuard:
    """(host, port) -> checked socket addresses; thread-safe (no mutable state after __init__).

    dns_cache_s / dns_negative_cache_s: how long this guard takes answers / "no such name" from the
    process's DNS cache (dns.py); 0: not at all (the default, for a guard built outside a Fetcher).
    """

    def __init__(self, allowed_networks=(), connect_to=(), resolver=None, dns_cache_s: float = 0.0,
                 dns_negative_cache_s: float = 0.0):
        self.allowed = parse_networks(allowed_networks)
        self.connect_to = [c if isinstance(c, ConnectTo) else parse_connect_to(c) for c in connect_to]
        # resolver(host, port, type=, proto=) -> getaddrinfo's answer; None: socket.getaddrinfo, looked
        # up at call time (so a test's monkeypatch of socket.getaddrinfo is seen, with cache entries of its own)
        self.resolver = resolver
        self.dns_cache_s = dns_cache_s
        self.dns_negative_cache_s = dns_negative_cache_s

    def check_ip(self, ip: IPAddress, host: str) -> None:
        """Raise BlockedAddress if `ip` (what `host` stands for) may not be connected to."""
        why = blocked_reason(ip, self.allowed)
        if why is not None:
            named = f"{host} -> {ip}" if host.strip("[]") != str(ip) else str(ip)
            raise BlockedAddress(f"blocked address {named}: {why}")

    def resolve(self, host: str, port: int) -> list[tuple[int, tuple]]:
        """Host + port -> [(address family, sockaddr)] to connect to, in resolver order.

        connect_to rules are applied first (the target is checked like any host); then a literal
        address is checked as is and a name is resolved, every address it resolves to checked.
        """
        host = host.strip()
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        for rule in self.connect_to:
            if rule.matches(bare, port):
                log.debug("connect_to: %s:%s -> %s:%s", bare, port, rule.addr, rule.to_port)
                bare, port = rule.addr, rule.to_port
                break
        ip = literal_ip(bare)
        if ip is not None:
            self.check_ip(ip, bare)
            return [_sockaddr(ip, port)]
        name = bare.lower().rstrip(".")
        if not name:
            raise DnsError("empty host name")
        if name == "localhost" or name.endswith(".localhost"):  # RFC 6761: always loopback, never ask DNS
            raise BlockedAddress(f"blocked address {bare}: loopback name")
        deadline = current_deadline()
        if deadline is not None:
            deadline.enter("resolve")
        try:
            # cached or not, the answer is raw: every address is judged below, by this guard
            answer = dns.lookup(self.resolver or socket.getaddrinfo, bare, port,
                                None if deadline is None else deadline.left(),
                                self.dns_cache_s, self.dns_negative_cache_s)
        except dns.LookupTimeout:
            deadline.expire()
            raise DeadlineExceeded(deadline.message(f"resolving {bare}")) from None
        except socket.gaierror as exc:
            raise DnsError(f"cannot resolve {bare}: {exc.strerror or exc}") from None
        except (UnicodeError, ValueError) as exc:
            raise DnsError(f"cannot resolve {bare}: {exc}") from None
        out: list[tuple[int, tuple]] = []
        for family, sockaddr in answer:
            ip = ipaddress.ip_address(sockaddr[0])
            self.check_ip(ip, bare)  # strict: one bad address blocks the host
            if (family, sockaddr) not in out:
                out.append((family, sockaddr))
        if not out:
            raise DnsError(f"{bare} resolves to no IPv4/IPv6 address")
        return out


def _sockaddr(ip: IPAddress, port: int) -> tuple[int, tuple]:
    """A checked address -> (family, sockaddr); AI_NUMERICHOST: no lookup, but IPv6 zones are handled."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    info = socket.getaddrinfo(str(ip), port, family, socket.SOCK_STREAM, socket.IPPROTO_TCP, socket.AI_NUMERICHOST)
    return family, info[0][4]


def _open_socket(conn: HTTPConnection, guard: AddressGuard) -> socket.socket:
    """The body of the guarded `_new_conn`: connect to the first checked address that answers."""
    # _dns_host: the host as given (trailing dot kept for the resolver); GuardError passes through urllib3 unchanged
    addresses = guard.resolve(getattr(conn, "_dns_host", conn.host), conn.port)
    deadline = current_deadline()
    err: OSError | None = None
    for family, sockaddr in addresses:
        # all of a host's addresses share the one deadline: ten black-holed addresses cannot cost
        # ten connect timeouts
        if deadline is not None:
            deadline.enter("connect")
            if deadline.expired or deadline.left() <= 0:
                deadline.expire()
                raise DeadlineExceeded(deadline.message(f"connecting to {conn.host}"))
        sock = None
        try:
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            for opt in conn.socket_options or ():
                sock.setsockopt(*opt)
            timeout = None if conn.timeout is _DEFAULT_TIMEOUT else conn.timeout
            if deadline is not None:
                timeout = max(0.001, min(timeout if timeout is not None else deadline.left(), deadline.left()))
                deadline.attach(sock, dup=isinstance(conn, HTTPSConnection))
            if timeout is not None:
                sock.settimeout(timeout)
            if conn.source_address:
                sock.bind(conn.source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            err = exc
            if sock is not None:
                if deadline is not None:
                    deadline.release()
                sock.close()
    if deadline is not None and (deadline.expired or deadline.left() <= 0):
        deadline.expire()
        raise DeadlineExceeded(deadline.message(f"connecting to {conn.host}"))
    raise err if err is not None else OSError(f"no address to connect to for {conn.host}")


class _PhasedResponse(http.client.HTTPResponse):
    """http.client's response, telling the URL's Deadline when the status line is read and the headers begin."""

    def _read_status(self):  # http.client's own step (stable since 3.x); begin() calls it, then parses headers
        deadline = current_deadline()
        if deadline is not None:
            deadline.enter("status line")
        try:
            return super()._read_status()
        finally:
            if deadline is not None:
                deadline.enter("headers")


class _GuardedConnectionMixin:
    """Overrides urllib3's `_new_conn`: resolve through the guard, connect only to checked addresses.

    TLS (HTTPSConnection.connect) wraps the returned socket with SNI and certificate checks on
    `self.host`, the URL's host, which connect_to never changes.
    """

    guard: AddressGuard  # set on the per-session subclass made by guarded_pool_classes
    response_class = _PhasedResponse

    def request(self, *args, **kwargs):
        deadline = current_deadline()
        if deadline is not None:
            if self.sock is not None:  # a reused keep-alive connection (or one TLS just set up)
                deadline.attach(self.sock)
            deadline.enter("request")
        return super().request(*args, **kwargs)

    def getresponse(self, *args, **kwargs):
        deadline = current_deadline()
        if deadline is not None:
            deadline.enter("status line")
        return super().getresponse(*args, **kwargs)

    def _new_conn(self) -> socket.socket:
        try:
            sock = _open_socket(self, self.guard)
        except TimeoutError as exc:  # socket.timeout: same wrapping as urllib3's own _new_conn
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            ) from exc
        except OSError as exc:
            raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc
        sys.audit("http.client.connect", self, self.host, self.port)
        deadline = current_deadline()
        if deadline is not None:
            deadline.enter("tls" if isinstance(self, HTTPSConnection) else "request")
        return sock


class GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    """urllib3 HTTPConnection whose sockets go only to addresses the guard allowed."""


class GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    """urllib3 HTTPSConnection whose sockets go only to addresses the guard allowed."""


def guarded_pool_classes(guard: AddressGuard) -> dict[str, type]:
    """An AddressGuard -> {'http': pool class, 'https': pool class} whose connections use that guard."""
    http_conn = type("GuardedHTTPConnection", (GuardedHTTPConnection,), {"guard": guard})
    https_conn = type("GuardedHTTPSConnection", (GuardedHTTPSConnection,), {"guard": guard})
    http_pool = type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn})
    https_pool = type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn})
    return {"http": http_pool, "https": https_pool}


class GuardedAdapter(HTTPAdapter):
    """A requests HTTPAdapter whose pools open guarded connections; proxies are refused outright."""

    def __init__(self, guard: AddressGuard, **kwargs):
        self._guard_pools = guarded_pool_classes(guard)
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        # pool_classes_by_scheme is read on every new pool (PoolManager._new_pool)
        self.poolmanager.pool_classes_by_scheme = dict(self._guard_pools)

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        # A proxy would make the connection to the proxy's address, not the checked one.
        raise BlockedAddress(f"proxies are not allowed (the address guard cannot check through {proxy})")


def guarded_session(guard: AddressGuard, pool_maxsize: int = 10, num_pools: int = 64) -> requests.Session:
    """An AddressGuard -> a requests Session whose every connection (redirects included) is guarded.

    trust_env is off so HTTP(S)_PROXY / NO_PROXY / .netrc / REQUESTS_CA_BUNDLE cannot route around
    the guard or change behaviour between machines.
    """
    session = requests.Session()
    session.trust_env = False
    session.proxies = {}
    adapter = GuardedAdapter(guard, pool_connections=num_pools, pool_maxsize=pool_maxsize, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
