"""The HTTP fetcher of the download stage: one URL -> a FetchResult (body or failure status), never an exception.

INPUT  -> a URL string and a DownloadConfig (timeouts, deadline, size cap, redirects, retries,
          opt-out directives, robots.txt, address guard settings)
OUTPUT -> FetchResult(status, body, http_status, final_url, content_type, error_message): status is
          "success" (a 2xx body was received in full, decoded from gzip/deflate; whether it is an
          image is decided later) or one failure status of schemas.DOWNLOAD_STATUSES

Every connection, redirect hops and robots.txt included, goes through the address guard (guard.py).
Redirects are followed here, not by requests, so each hop gets its scheme re-validated, its robots.txt
checked, and is counted against max_redirects and the one per-URL deadline.

deadline_s bounds everything one URL does: resolution, connecting (all of a host's addresses
together), TLS, status line, headers, body, every redirect hop, robots.txt and every retry or host
pause wait. It is enforced from outside the blocking calls (guard.Watchdog cuts the socket, name
resolution is waited on in a helper thread), since a server that sends its status line or headers one
byte just inside every read timeout is never stopped by a socket timeout. A URL stopped this way is
`timeout` with the phase that was running in its message; a socket that was cut never goes back to
the connection pool.

Why a hand-written body loop: the cap (max_body_bytes) must hold while streaming, on decoded bytes
(a gzip bomb is a few KB on the wire). urllib3 2.8 decodes at most the requested amount per read, so
reading cap + 1 bytes at most keeps memory at the cap whatever the encoding; each read is one socket
read (read1) with the socket timeout clipped to what is left of the deadline.
"""

from __future__ import annotations

import email.utils
import io
import logging
import threading
import time
from dataclasses import dataclass
from http import cookiejar
from typing import NamedTuple
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import requests
import urllib3.exceptions as u3
from protego import Protego

from laion_spark.download.guard import (
    AddressGuard,
    BlockedAddress,
    Deadline,
    DeadlineExceeded,
    DnsError,
    Watchdog,
    guarded_session,
)
from laion_spark.download.pool import HostPauses, host_of

log = logging.getLogger(__name__)

SUCCESS = "success"
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024
# RFC 9309 asks crawlers to parse at least 500 KiB of a robots.txt; what is beyond is ignored
ROBOTS_MAX_BYTES = 512 * 1024
# Retry-After beyond a day is read as a day (a host pause of "inf" seconds would serialise as no JSON)
MAX_RETRY_AFTER_S = 86400.0
# header values stored in a row are cut here (a 60 KB Content-Type must not ride on every row)
MAX_CONTENT_TYPE_CHARS = 256
MAX_FINAL_URL_CHARS = 8192
# a robots.txt that timed out is asked for again after this long (other failures are kept for the task):
# one slow answer must not shut a host out for the rest of a task that may run for an hour
ROBOTS_TIMEOUT_FORGET_S = 60.0
# X-Robots-Tag directives that take a value after a colon ("max-snippet: 20"): not user-agent prefixes
_VALUE_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})


@dataclass
class FetchResult:
    status: str  # "success" (body received; image checks come later) or a failure status
    body: bytes | None = None
    http_status: int | None = None
    final_url: str | None = None
    content_type: str | None = None
    error_message: str | None = None  # always set for failures
    permit: threading.Semaphore | None = None  # a body slot held for `body` until release()

    def release(self) -> None:
        """Give back the body slot (the body's memory is no longer counted); idempotent."""
        permit, self.permit = self.permit, None
        if permit is not None:
            permit.release()


class _Redirect(NamedTuple):
    location: str
    http_status: int


class _Outcome(NamedTuple):
    """One request's failure and whether (and after how long) it is worth another attempt."""

    result: FetchResult
    retryable: bool = False
    retry_after: float | None = None  # seconds the server asked us to wait (429/503), if any


def _fail(status: str, message: str, url: str | None = None, http_status: int | None = None,
          content_type: str | None = None) -> FetchResult:
    return FetchResult(status, None, http_status, url, content_type, message)


def user_agent(cfg) -> str:
    """DownloadConfig -> the User-Agent header: cfg.user_agent, with '; contact: X' put inside its
    closing parenthesis when there is one (the usual 'compatible; bot/1.0; +url' place), else appended
    as ' (contact: X)'."""
    ua = cfg.user_agent.strip()
    contact = cfg.contact.strip()
    if not contact:
        return ua
    if ua.endswith(")"):
        return f"{ua[:-1]}; contact: {contact})"
    return f"{ua} (contact: {contact})"


def check_url(url) -> str | None:
    """A URL -> why it cannot be fetched (invalid_url), or None when it is an http(s) URL with a host."""
    if not isinstance(url, str) or not url.strip():
        return f"url is {url!r}"
    try:
        parts = urlsplit(url.strip())
        port = parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError as exc:
        return f"unparseable URL {url!r}: {exc}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"scheme {parts.scheme!r} is not http or https: {url!r}" if parts.scheme else f"no scheme: {url!r}"
    if not parts.hostname:
        return f"no host: {url!r}"
    if port == 0:
        return f"bad port 0: {url!r}"
    return None


def opt_out_directive(header_values, user_agent_token: str, disallowed) -> str | None:
    """X-Robots-Tag header values (one string per header) -> the directive that opts us out, or None.

    Google's syntax: a header is a comma-separated list of directives, optionally prefixed by
    'useragent:'; the prefix applies to the directives after it in that header, until the next
    prefix. A header without a prefix applies to every crawler. We are addressed by our token or '*'
    (case-insensitive). Unlike img2dataset's is_disallowed, the token is compared stripped, '*'
    counts, 'otherbot: noai, laion-spark: noimageai' is read per scope, and value directives such as
    'unavailable_after: <date>' are not taken for user agents.
    """
    token = user_agent_token.strip().lower()
    bad = {d.strip().lower() for d in disallowed}
    for value in header_values:
        applies = True
        for item in str(value).split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, rest = item.partition(":")
            name = name.strip().lower()
            if sep and name not in _VALUE_DIRECTIVES and name and " " not in name:
                applies = name in (token, "*")
                directive = rest.strip().lower()
            else:
                directive = name
            directive = directive.split(":", 1)[0].strip()
            if applies and directive in bad:
                return directive
    return None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header (delay-seconds or HTTP-date) -> seconds to wait (>= 0), None if absent/unparseable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() is also true for '²' and other digits
        return min(float(value), MAX_RETRY_AFTER_S)  # 400 digits would be inf
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return min(max(0.0, when.timestamp() - now), MAX_RETRY_AFTER_S)


class _NoCookies(cookiejar.DefaultCookiePolicy):
    """Image fetches are stateless: no cookie is stored or sent (and no jar grows over a task)."""

    def set_ok(self, cookie, request):
        return False

    def return_ok(self, cookie, request):
        return False


class _RobotsEntry:
    """One host's robots.txt, loaded by the first thread that asks; the others wait on `ready`."""

    def __init__(self):
        self.ready = threading.Event()
        self.parser: Protego | None = None  # None: everything allowed
        self.failure: FetchResult | None = None  # robots.txt unreachable
        self.expires: float | None = None  # monotonic time after which it is loaded again (timeouts)


def _chain(exc: BaseException):
    """An exception -> it and every exception in its __cause__/__context__/args chain."""
    seen = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend([e.__cause__, e.__context__, getattr(e, "reason", None)])
        todo.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))


class Fetcher:
    """One per Spark task, shared by its threads (thread-safe): url -> FetchResult."""

    def __init__(self, cfg, resolver=None, pauses: HostPauses | None = None):
        """resolver: getaddrinfo's stand-in for the address guard (tests); None: socket.getaddrinfo.
        pauses: the task's host pauses (shared with its HostPool); None: a new one."""
        self.cfg = cfg
        self.pauses = pauses if pauses is not None else HostPauses()
        # body slots: taken when a 2xx body starts to arrive, not for the whole fetch, so resolving,
        # connecting, waiting for headers, robots.txt and retry waits never count against them; a
        # successful result keeps its slot until the caller's release() (after the image work)
        self.bodies = threading.BoundedSemaphore(cfg.max_bodies_in_flight)
        self.guard = AddressGuard(cfg.allowed_networks, cfg.connect_to, resolver=resolver, dns_cache_s=cfg.dns_cache_s,
                                  dns_negative_cache_s=cfg.dns_negative_cache_s)
        self.watchdog = Watchdog()
        # one session shared by the task's threads; each host's pool holds up to `threads` connections
        self.session = guarded_session(self.guard, pool_maxsize=max(cfg.threads, cfg.per_host_connections),
                                       num_pools=max(64, 2 * cfg.threads))
        self.session.headers.update({
            "User-Agent": user_agent(cfg),
            "Accept": "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.9,*/*;q=0.5",
            # only what urllib3 decodes without optional packages (br/zstd would need brotli/zstandard)
            "Accept-Encoding": "gzip, deflate",
        })
        self.session.cookies.set_policy(_NoCookies())
        # redirects are followed here (_fetch), never by requests; its look-ahead at the next hop (even
        # with allow_redirects=False) decodes Location as UTF-8 strictly and raises on other bytes
        self.session.get_redirect_target = lambda resp: None
        self._closed = threading.Event()
        self._robots: dict[tuple, _RobotsEntry] = {}
        self._robots_lock = threading.Lock()

    # --- public -----------------------------------------------------------------------------
    def fetch(self, url: str, keep_slot: bool = False) -> FetchResult:
        """URL -> FetchResult; never raises for a per-URL problem.

        keep_slot: a success keeps its body slot (max_bodies_in_flight) until result.release(), so the
        caller's work on the body counts against the bound too (the download task); else it is given
        back before this returns."""
        try:
            if self._closed.is_set():
                return _fail("connect_error", "fetcher is closed", url)
            with self.watchdog.deadline(self.cfg.deadline_s) as deadline:
                result = self._fetch(url, deadline, robots_mode=False)
        except Exception as exc:  # a bug here must cost one row, not the Spark task (logged with traceback)
            log.exception("unexpected error fetching %r", url)
            return _fail(_status_of_unexpected(exc), f"unexpected {type(exc).__name__}: {exc}", url)
        if not keep_slot:
            result.release()
        return result

    def close(self) -> None:
        """Stop: waits between attempts end at once, no new attempt starts, pooled connections close."""
        self._closed.set()
        self.watchdog.close()  # cuts the sockets of fetches still running: they end now, as timeouts
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- one URL: redirects and retries -----------------------------------------------------
    def _fetch(self, url: str, deadline: Deadline, robots_mode: bool) -> FetchResult:
        bad = check_url(url)
        if bad:
            return _fail("invalid_url", bad, url if isinstance(url, str) else None)
        current = url.strip()
        seen = {current.split("#", 1)[0]}
        hops = 0
        attempts = 0  # extra attempts used, over all hops of this URL
        while True:
            if self.cfg.robots_txt and not robots_mode:
                refused = self._robots_refusal(current, deadline)
                if refused is not None:
                    return refused
            outcome = self._request(current, deadline, robots_mode)
            if isinstance(outcome, _Redirect):
                target = urljoin(current, outcome.location.strip())
                bad = check_url(target)
                if bad is None and len(target) > MAX_FINAL_URL_CHARS:
                    bad = f"longer than {MAX_FINAL_URL_CHARS} characters"
                    target = target[:MAX_FINAL_URL_CHARS]
                if bad:
                    return _fail("invalid_url", f"redirect from {current} to a URL we cannot fetch: {bad}",
                                 target, outcome.http_status)
                hops += 1
                if hops > self.cfg.max_redirects:
                    return _fail("too_many_redirects", f"more than max_redirects={self.cfg.max_redirects} "
                                 f"redirects (next: {target})", current, outcome.http_status)
                key = target.split("#", 1)[0]
                if key in seen:
                    return _fail("too_many_redirects", f"redirect loop: {current} -> {target}", current,
                                 outcome.http_status)
                seen.add(key)
                current = target
                continue
            if isinstance(outcome, FetchResult):
                return outcome
            wait = self._retry_wait(outcome, attempts, deadline)
            if wait is None:
                return outcome.result
            attempts += 1
            log.debug("retry %d of %s in %.2fs after %s", attempts, current, wait, outcome.result.error_message)
            deadline.enter("retry wait")
            if self._closed.wait(wait):
                result = outcome.result
                result.error_message = f"{result.error_message} (fetcher closed before the retry)"
                return result

    def _retry_wait(self, outcome: _Outcome, attempts: int, deadline: Deadline) -> float | None:
        """A failed attempt -> seconds to wait before the next one, or None to give up now."""
        if not outcome.retryable or attempts >= self.cfg.retries or self._closed.is_set():
            return None
        wait = outcome.retry_after
        if wait is None:
            wait = self.cfg.retry_backoff_s * (2 ** attempts)
        if wait >= deadline.left():  # a wait that cannot end inside the deadline ends the URL now
            outcome.result.error_message += f" (no time left in deadline_s={self.cfg.deadline_s} for a retry)"
            return None
        return wait

    # --- one request ------------------------------------------------------------------------
    def _request(self, url: str, deadline: Deadline, robots_mode: bool) -> FetchResult | _Outcome | _Redirect:
        """One GET (no redirect following) -> a final FetchResult, a retryable _Outcome, or a _Redirect."""
        paused = self._wait_for_host(url, deadline)
        if paused is not None:
            return paused
        left = deadline.left()
        if left <= 0 or deadline.expired:
            deadline.expire()
            return _fail("timeout", deadline.message(url), url)
        connect_t = min(self.cfg.connect_timeout_s, left)
        read_t = min(self.cfg.read_timeout_s, left)
        try:
            resp = self.session.get(url, stream=True, allow_redirects=False, timeout=(connect_t, read_t))
        except Exception as exc:  # noqa: BLE001 - every transport failure becomes a status here
            deadline.release()
            if deadline.expired or isinstance(exc, DeadlineExceeded):  # whatever the cut socket raised
                return _fail("timeout", deadline.message(url), url)
            return self._request_error(exc, url, connect_t, read_t)
        complete = False
        try:
            if deadline.expired:  # headers cut short by the watchdog parse as if complete: they are not
                return _fail("timeout", deadline.message(url), url)
            code = resp.status_code
            ctype = resp.headers.get("Content-Type")
            if ctype is not None and len(ctype) > MAX_CONTENT_TYPE_CHARS:
                ctype = ctype[:MAX_CONTENT_TYPE_CHARS]
            location = _location(resp.headers.get("Location"))
            if code in REDIRECT_CODES and location:
                return _Redirect(location, code)
            if not 200 <= code < 300:
                result = _fail("http_error", f"HTTP {code} {resp.reason or ''}".strip() + f" from {url}", url, code,
                               ctype)
                if code == 429 or code >= 500:
                    retry_after = None
                    if code in (429, 503):
                        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                        if retry_after is not None:  # the whole host waits, every thread and queued row
                            self.pauses.pause(host_of(url), retry_after, code)
                        if retry_after is not None and retry_after > self.cfg.retry_after_max_s:
                            result.error_message += (f"; Retry-After {retry_after:.0f}s exceeds "
                                                     f"retry_after_max_s={self.cfg.retry_after_max_s}")
                            return result
                    return _Outcome(result, True, retry_after)
                return result
            if not robots_mode:
                directive = opt_out_directive(resp.raw.headers.getlist("X-Robots-Tag"), self.cfg.user_agent_token,
                                              self.cfg.disallowed_header_directives)
                if directive:
                    return _fail("opted_out", f"X-Robots-Tag: {directive}", url, code, ctype)
            cap = ROBOTS_MAX_BYTES if robots_mode else self.cfg.max_body_bytes
            length = _content_length(resp)
            if length is not None and length > cap and not robots_mode:
                return _fail("too_large", f"Content-Length {length} exceeds max_body_bytes={cap}", url, code, ctype)
            permit = None
            if not robots_mode:  # robots.txt bodies are small (ROBOTS_MAX_BYTES): no slot
                deadline.enter("waiting for a body slot")
                if not self.bodies.acquire(timeout=max(0.0, deadline.left())):
                    deadline.expire()
                    return _fail("timeout", deadline.message(
                        f"{url} (max_bodies_in_flight={self.cfg.max_bodies_in_flight} bodies held)"), url, code, ctype)
                permit = self.bodies
            try:
                body, failure = self._read_body(resp, url, deadline, read_t, cap, robots_mode)
            except BaseException:
                if permit is not None:
                    permit.release()
                raise
            if failure is not None:
                if permit is not None:
                    permit.release()
                failure.http_status, failure.content_type = code, ctype
                retryable = failure.status in ("timeout", "truncated")
                return _Outcome(failure, retryable) if retryable else failure
            complete = True
            return FetchResult(SUCCESS, body, code, url, ctype, None, permit)
        finally:
            cut = deadline.release()
            if complete and not cut:
                resp.raw.release_conn()  # fully read: the connection can be reused
            else:
                resp.close()  # unread body (opt-out, too large, error): drop the connection, read nothing more

    def _wait_for_host(self, url: str, deadline: Deadline) -> FetchResult | None:
        """Before a request: wait out the host's pause (429/503 Retry-After) -> None to go on, or the
        failure when the pause does not end inside this URL's deadline (the server is not asked)."""
        host = host_of(url)
        wait, code = self.pauses.remaining(host)
        if wait <= 0:
            return None
        if wait >= deadline.left():
            return _fail("http_error", f"not requested: {host} asked for a pause (HTTP {code} with Retry-After) "
                         f"that lasts {wait:.1f}s more, beyond deadline_s={self.cfg.deadline_s:g}", url, code)
        deadline.enter("host pause")
        if self._closed.wait(wait):
            return _fail("timeout", f"fetcher closed during a pause of {host}", url)
        return None

    def _read_body(self, resp, url: str, deadline: Deadline, read_t: float, cap: int,
                   robots_mode: bool) -> tuple[bytes | None, FetchResult | None]:
        """A streaming response -> (decoded body, None) or (None, failure); never holds more than cap + 1 bytes."""
        raw = resp.raw
        buf = io.BytesIO()  # getvalue() hands over its buffer without a copy: one body in memory, not two
        size = 0
        deadline.enter("body")
        try:
            while True:
                left = deadline.left()
                if left <= 0 or deadline.expired:
                    deadline.expire()
                    return None, _fail("timeout", deadline.message(f"{url} ({size} bytes so far)"), url)
                _set_read_timeout(raw, min(read_t, left))  # a trickling body cannot outlive the deadline
                # read1: one socket read at most, so the deadline is checked between reads (read()
                # would block until the whole amount came, one trickled byte per read timeout)
                chunk = raw.read1(min(CHUNK_BYTES, cap + 1 - size), decode_content=True)
                if not chunk:
                    if deadline.expired:  # a cut socket reads as the end of a close-delimited body
                        return None, _fail("timeout", deadline.message(f"{url} ({size} bytes so far)"), url)
                    break
                buf.write(chunk)
                size += len(chunk)
                if size > cap:
                    if robots_mode:  # robots.txt: parse what fits
                        return buf.getvalue()[:cap], None
                    return None, _fail("too_large", f"body exceeds max_body_bytes={cap} (decoded)", url)
                if self._closed.is_set():
                    return None, _fail("timeout", "fetcher closed while reading the body", url)
        except (u3.ReadTimeoutError, TimeoutError, u3.DecodeError, u3.ProtocolError, u3.SSLError, OSError) as exc:
            if deadline.expired or deadline.left() <= 0.01:  # the cut socket's error, or the clipped timeout
                deadline.expire()
                return None, _fail("timeout", deadline.message(f"{url} ({size} bytes so far)"), url)
            if isinstance(exc, (u3.ReadTimeoutError, TimeoutError)):
                return None, _fail("timeout", f"read timeout ({read_t:.3g}s) while reading the body of {url} "
                                   f"({size} bytes so far)", url)
            if isinstance(exc, u3.DecodeError):
                encoding = resp.headers.get("Content-Encoding", "?")
                return None, _fail("decode_error", f"Content-Encoding {encoding} could not be decoded: {exc}", url)
            # IncompleteRead, connection reset mid-body
            return None, _fail("truncated", f"body cut after {size} bytes: {_short(exc)}", url)
        return buf.getvalue(), None

    def _request_error(self, exc: Exception, url: str, connect_t: float, read_t: float) -> FetchResult | _Outcome:
        """An exception from session.get -> the failure it stands for."""
        if isinstance(exc, BlockedAddress):
            return _fail("blocked_address", str(exc), url)
        if isinstance(exc, DnsError):
            return _fail("dns_error", str(exc), url)
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return _Outcome(_fail("timeout", f"connect timeout after {connect_t:.3g}s to {url}", url), True)
        if isinstance(exc, requests.exceptions.ReadTimeout):
            return _Outcome(_fail("timeout", f"no response headers within {read_t:.3g}s from {url}", url), True)
        if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                            requests.exceptions.InvalidSchema, requests.exceptions.URLRequired,
                            u3.LocationParseError, u3.LocationValueError, UnicodeError)):
            return _fail("invalid_url", f"invalid URL {url!r}: {_short(exc)}", url)
        if isinstance(exc, requests.exceptions.SSLError):  # certificate or handshake: retrying will not help
            return _fail("connect_error", f"TLS error with {url}: {_short(exc)}", url)
        for e in _chain(exc):
            if isinstance(e, (BlockedAddress, DnsError)):  # in case a future urllib3 wraps them after all
                return self._request_error(e, url, connect_t, read_t)
            if isinstance(e, u3.NameResolutionError):
                return _fail("dns_error", f"cannot resolve host of {url}: {_short(e)}", url)
            if isinstance(e, u3.NewConnectionError):  # refused, unreachable (a ConnectTimeoutError subclass!)
                return _Outcome(_fail("connect_error", f"cannot connect to {url}: {_short(e)}", url), True)
            if isinstance(e, u3.ConnectTimeoutError):
                return _Outcome(_fail("timeout", f"connect timeout after {connect_t:.3g}s to {url}", url), True)
            if isinstance(e, u3.ReadTimeoutError):
                return _Outcome(_fail("timeout", f"no response headers within {read_t:.3g}s from {url}", url), True)
        if isinstance(exc, (requests.exceptions.ConnectionError, OSError)):
            return _Outcome(_fail("connect_error", f"connection to {url} failed: {_short(exc)}", url), True)
        log.warning("unexpected %s requesting %s: %s", type(exc).__name__, url, exc)
        return _Outcome(_fail("connect_error", f"request failed: {type(exc).__name__}: {_short(exc)}", url), True)

    # --- robots.txt -------------------------------------------------------------------------
    def _robots_refusal(self, url: str, deadline: Deadline) -> FetchResult | None:
        """A URL about to be requested -> a failure (opted_out, or robots.txt unreachable) or None to go on."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or (443 if scheme == "https" else 80)
        key = (scheme, parts.hostname, port)
        with self._robots_lock:
            entry = self._robots.get(key)
            if entry is not None and entry.expires is not None and time.monotonic() >= entry.expires:
                entry = None  # a timed-out robots.txt: ask again
            owner = entry is None
            if owner:
                entry = self._robots[key] = _RobotsEntry()
        if owner:
            try:
                netloc = parts.netloc.rsplit("@", 1)[-1]
                self._load_robots(entry, urlunsplit((scheme, netloc, "/robots.txt", "", "")))
            finally:
                entry.ready.set()
            if deadline.left() <= 0:  # the robots.txt's own deadline outlasted this URL's
                deadline.expire()
                return _fail("timeout", deadline.message(f"{url}, while its host's robots.txt was fetched"), url)
        else:
            deadline.enter("robots.txt wait")
            if not entry.ready.wait(max(0.0, deadline.left())):
                deadline.expire()
                return _fail("timeout", deadline.message(f"robots.txt of {parts.netloc}"), url)
        if entry.failure is not None:
            f = entry.failure
            return _fail(f.status, f"robots.txt unreachable, so not fetched (RFC 9309): {f.error_message}", url,
                         f.http_status)
        if entry.parser is not None and not entry.parser.can_fetch(url, self.cfg.user_agent_token):
            return _fail("opted_out", f"robots.txt disallows {url} for {self.cfg.user_agent_token}", url)
        return None

    def _load_robots(self, entry: _RobotsEntry, robots_url: str) -> None:
        """Fetch and parse one robots.txt into `entry`, under a deadline of its own (deadline_s), not what is
        left of the asking URL's: a URL that asks with 0.1 s left must not turn the host's robots.txt into
        a timeout for every other URL of the host.

        RFC 9309, read by protego (the longest matching rule wins, `*` and `$` wildcards, the group of
        our token else `*`): a 4xx (or a robots.txt that redirects too often / to a URL we cannot
        fetch) means no rules, everything allowed. 5xx, 429 and network errors mean "unreachable", and
        the RFC says to assume complete disallow: the host's URLs then fail with that error's own status
        (timeout, connect_error, http_error 503, ...), which is retryable, rather than opted_out, which
        is final. The outcome is cached for this Fetcher (one Spark task); a timeout only for
        ROBOTS_TIMEOUT_FORGET_S, then the next URL of the host asks again.
        """
        try:
            with self.watchdog.deadline(self.cfg.deadline_s) as own:
                result = self._fetch(robots_url, own, robots_mode=True)
        except Exception as exc:  # same bug guard as fetch()
            log.exception("unexpected error fetching %s", robots_url)
            result = _fail("connect_error", f"unexpected {type(exc).__name__}: {exc}", robots_url)
        if result.status == SUCCESS:
            text = (result.body or b"").decode("utf-8", errors="replace")
            try:
                entry.parser = Protego.parse(text)
            except Exception as exc:  # noqa: BLE001 - a robots.txt the parser chokes on: no usable rules
                log.warning("robots.txt %s could not be parsed (%s): no rules applied", robots_url, exc)
                entry.parser = None
        elif result.status in ("too_many_redirects", "invalid_url") or (
            result.status == "http_error" and result.http_status is not None
            and 400 <= result.http_status < 500 and result.http_status != 429
        ):
            entry.parser = None
        else:
            entry.failure = result
            if result.status == "timeout":
                entry.expires = time.monotonic() + ROBOTS_TIMEOUT_FORGET_S
        log.debug("robots.txt %s: %s", robots_url, result.status)


def _location(value: str | None) -> str | None:
    """A Location header as http.client gives it (bytes read as latin-1) -> the URL it means: UTF-8
    bytes read as UTF-8 (as browsers and requests do), other non-ASCII bytes percent-encoded."""
    if value is None or value.isascii():
        return value
    raw = value.encode("latin-1", errors="replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return quote(raw, safe="!#$%&'()*+,/:;=?@[]~")


def _content_length(resp) -> int | None:
    value = resp.headers.get("Content-Length")
    if value is None:
        return None
    try:
        return int(value.split(",")[0].strip())
    except ValueError:
        return None


def _set_read_timeout(raw, seconds: float) -> None:
    """Set the socket timeout of the connection a streaming response reads from (no-op if unknown)."""
    conn = getattr(raw, "connection", None)
    sock = getattr(conn, "sock", None)
    if sock is not None:
        try:
            sock.settimeout(max(seconds, 0.001))
        except OSError:
            pass


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "..."


def _status_of_unexpected(exc: Exception) -> str:
    """An exception that escaped our own handling -> the closest status (a bug's row still says something)."""
    if isinstance(exc, BlockedAddress):
        return "blocked_address"
    if isinstance(exc, DnsError):
        return "dns_error"
    if isinstance(exc, (TimeoutError, u3.TimeoutError)):
        return "timeout"
    if isinstance(exc, (ValueError, UnicodeError)):
        return "invalid_url"
    return "connect_error"
