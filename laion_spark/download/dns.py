"""The DNS cache of one Python worker process: (resolver, host, port) -> the resolver's answer, kept a while.

INPUT  -> a resolver (socket.getaddrinfo or a stand-in), a host name and port, the seconds the asking
          thread may wait, and the asker's keep times (download.dns_cache_s, download.dns_negative_cache_s)
OUTPUT -> the answer as ((family, sockaddr), ...), IPv4/IPv6 only and NOT judged (the address guard
          judges every address, cached or not, with its own allowed_networks), or the resolver's error
          (socket.gaierror, ...), or `LookupTimeout` when the asker's wait is over first

Why: img2dataset's users name DNS the first bottleneck at scale; LAION's advice, a local caching
resolver, is not on every cluster. Spark reuses a Python worker across tasks and a task's threads
share it, so one module-level cache serves all of them.

What is kept: answers, for the asker's dns_cache_s (each asker judges an entry's age with its own
times, so two Fetchers may differ); names that do not exist (EAI_NONAME, EAI_NODATA), for
dns_negative_cache_s; transient failures (EAI_AGAIN, EAI_FAIL, a resolver timeout, anything else)
never. A keep time of 0 neither uses nor stores entries of that kind. At most MAX_NAMES entries, the
least recently used go first, so a billion-URL run cannot grow it without bound.

Single flight: concurrent asks for one key share one resolver call; different keys resolve at the
same time. getaddrinfo cannot be interrupted, so the call runs in a helper thread and every asker
waits on it for what is left of its own deadline; one that gives up leaves the call running, and its
answer is still cached for the next asker.

The key holds the resolver object itself (socket.getaddrinfo as looked up at call time, or a
Fetcher's stand-in), so answers never cross between resolvers, e.g. between tests that monkeypatch
socket.getaddrinfo. Names are keyed lower-cased with any trailing dot kept ("a." is absolute, "a" may
go through the search domains).

stats() -> the counters of this process since it started; stats_since(before) -> what happened since
`before` (a task takes stats() when it starts; concurrent users of the process are counted in both):
    lookups         names asked (literal addresses and localhost names never get here)
    cache_hits      answered from a kept answer
    negative_hits   answered from a kept "no such name"
    shared          joined a resolver call already in flight for the same key
    resolver_calls  resolver calls made (lookups = cache_hits + negative_hits + shared + resolver_calls)
    failures        resolver calls that raised (no such name, transient or other)
    timeouts        asks whose deadline ended before the answer came
    wait_s          seconds the asking threads waited for answers, summed over asks
"""

from __future__ import annotations

import socket
import threading
import time
from collections import OrderedDict

# about 750 bytes an entry (two addresses): 50k names ~ 37 MB per worker at most; 50k names in the
# 300 s default keep time would be ~170 new names a second, far beyond a task's host-grouped rows
MAX_NAMES = 50_000
STATS_KEYS = ("lookups", "cache_hits", "negative_hits", "shared", "resolver_calls", "failures", "timeouts",
              "wait_s")
# the name does not exist (or has no address): a fact about the name, worth remembering briefly
NEGATIVE_ERRNOS = frozenset(getattr(socket, n) for n in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, n))

_now = time.monotonic  # entry ages (tests put a fake clock here)
_lock = threading.Lock()
_cache: OrderedDict = OrderedDict()  # key -> (answered at, answer or None, gaierror or None); LRU order
_flights: dict = {}  # key -> _Flight of the resolver call in progress
_stats = dict.fromkeys(STATS_KEYS, 0)


class LookupTimeout(Exception):
    """The asker's time ran out before the resolver answered (the call goes on for later askers)."""


class _Flight:
    __slots__ = ("done", "answer", "error")

    def __init__(self):
        self.done = threading.Event()
        self.answer: tuple | None = None
        self.error: BaseException | None = None


def lookup(resolver, host: str, port: int, wait_s: float | None, keep_s: float, keep_negative_s: float) -> tuple:
    """resolver + host + port -> ((family, sockaddr), ...), from the cache, a call in flight, or a new call.

    wait_s: how long this asker may wait (None: until the answer). Raises what the resolver raised
    (a kept "no such name" as a fresh socket.gaierror) or LookupTimeout.
    """
    key = (resolver, host.lower(), port)
    start = time.monotonic()
    flight = kept = None
    new = False
    with _lock:
        _stats["lookups"] += 1
        entry = _cache.get(key)
        if entry is not None and _now() - entry[0] < (keep_s if entry[2] is None else keep_negative_s):
            _cache.move_to_end(key)
            _stats["cache_hits" if entry[2] is None else "negative_hits"] += 1
            kept = entry
        else:
            flight = _flights.get(key)
            if flight is None:
                flight = _flights[key] = _Flight()
                _stats["resolver_calls"] += 1
                new = True
            else:
                _stats["shared"] += 1
    if kept is not None:
        if kept[2] is not None:  # a new exception per ask: threads raising one object would share its traceback
            raise socket.gaierror(kept[2].errno, kept[2].strerror)
        return kept[1]
    if new:
        threading.Thread(target=_call, args=(flight, key, resolver, host, port, keep_s, keep_negative_s),
                         name="download-resolve", daemon=True).start()
    answered = flight.done.wait(None if wait_s is None else max(0.0, wait_s))
    with _lock:
        _stats["wait_s"] += time.monotonic() - start
        if not answered:
            _stats["timeouts"] += 1
    if not answered:
        raise LookupTimeout(f"no answer for {host} in {wait_s:.3g}s")
    if isinstance(flight.error, socket.gaierror):
        raise socket.gaierror(flight.error.errno, flight.error.strerror)
    if flight.error is not None:
        raise flight.error
    return flight.answer


def _call(flight: _Flight, key, resolver, host: str, port: int, keep_s: float, keep_negative_s: float) -> None:
    """The helper thread: one resolver call -> the flight's answer or error, kept in the cache if worth it."""
    try:
        infos = resolver(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        flight.answer = tuple((fam, addr) for fam, _, _, _, addr in infos if fam in (socket.AF_INET, socket.AF_INET6))
    except BaseException as exc:  # noqa: BLE001 - handed to the waiting threads
        flight.error = exc
    err = flight.error
    with _lock:
        if _flights.get(key) is flight:
            del _flights[key]
        if err is not None:
            _stats["failures"] += 1
        entry = None
        if err is None and keep_s > 0:
            entry = (_now(), flight.answer, None)
        elif isinstance(err, socket.gaierror) and err.errno in NEGATIVE_ERRNOS and keep_negative_s > 0:
            entry = (_now(), None, err)
        if entry is not None:
            _cache[key] = entry
            _cache.move_to_end(key)
            while len(_cache) > MAX_NAMES:
                _cache.popitem(last=False)
    flight.done.set()


def stats() -> dict:
    """-> this process's counters since it started (keys: STATS_KEYS, see the module docstring)."""
    with _lock:
        return dict(_stats)


def stats_since(before: dict) -> dict:
    """An earlier stats() -> the counters' growth since then."""
    now = stats()
    return {k: now[k] - before.get(k, 0) for k in STATS_KEYS}
