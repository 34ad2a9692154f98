"""A loopback HTTP server with fault routes, for download tests (no traffic ever leaves the machine).

INPUT  -> a loopback host ("127.0.0.1", "127.0.0.2", "::1"), registered files and handlers
OUTPUT -> a threaded HTTP/1.1 server on an ephemeral port that counts what it was asked

Usage::

    with FaultServer("127.0.0.1") as srv:
        srv.add_file("/a.jpg", jpeg_bytes)                       # 200, image/jpeg, Content-Length
        srv.add_file("/b.png", png, "image/png", {"X-Robots-Tag": "noai"})
        srv.add_handler("/custom", lambda h: h.reply(200, b"hi", "text/plain"))
        fetch(srv.url("/a.jpg")); fetch(srv.url("/status/404"))
        assert srv.requests("/a.jpg") == 1 and srv.total_requests == 2
        srv.peak_concurrency   # most requests being handled at one moment
    # here the port is closed and every server thread is joined

API (everything is thread-safe):
    FaultServer(host="127.0.0.1", tls=None)
                                         context manager; start() / stop() by hand also work;
                                         tls=(certfile, keyfile) serves HTTPS (see make_tls_files)
      .host, .port, .base_url            e.g. "http://[::1]:41235"
      .url(path)                         base_url + path (path starts with "/", may carry a query)
      .add_file(path, body, content_type="image/jpeg", headers=None)
      .add_handler(path, fn)             fn(handler) answers a request itself; `handler` is a
                                         FaultHandler: use handler.reply(code, body, content_type,
                                         headers), handler.query (dict of lists), handler.server
      .requests(path)                    requests received for path (without query; with a "?" in
                                         `path`, for that exact path+query)
      .total_requests                    all requests
      .connections                       TCP connections accepted
      .peak_concurrency                  most requests in progress at once (a request is in progress
                                         from its request line until its response is written);
                                         idle keep-alive connections do not count
      .peak_connections                  most TCP connections open at once
      .bytes_sent(path)                  body bytes written for path (without query)
      .stopping                          threading.Event set by stop(); slow routes wait on it
      .sni_names                         TLS: the SNI server names of the handshakes so far
      .reset_counts()                    zero all counters (peaks restart from what is open now)

make_tls_files(directory, hostname) -> {"ca", "cert", "key"} paths (openssl CLI; None without it):
    FaultServer("127.0.0.1", tls=(files["cert"], files["key"])) then trust files["ca"] in the client.

Built-in routes (query parameters in brackets, times in seconds):
    /status/<code>                 that status with a short text body
    /retry-after/<code>?after=S    that status with "Retry-After: S" (S verbatim: seconds or an HTTP-date)
    /flaky/<code>?fail=N[&after=S][&key=K]
                                   the first N requests (per key, default the path) get <code> (with
                                   Retry-After: S if given), later ones 200 + FLAKY_BODY
    /slow-headers?s=S              waits S before the status line, then 200 + a small body
    /slow-body?s=S                 headers (Content-Length 10) at once, body after S
    /trickle?every=S               200, chunked, one byte every S forever (until the client leaves)
    /trickle-status?every=S&max=T  the status line one byte every S (for at most T, default 60, then the
                                   rest at once), then headers and TRICKLE_BODY at once
    /trickle-headers?every=S&max=T the status line at once, the header block one byte every S (same T)
    /header-flood?every=S&max=T    the status line, then one short header line every S (each quick: no
                                   read timeout fires) for T, then the end of the headers and TRICKLE_BODY
    /never-ending                  200, chunked, 64 KiB chunks as fast as the client reads, forever
    /huge?n=N[&length=0]           N bytes of b"x", with Content-Length N (length=0: without, close-delimited)
    /lying-length?claim=N&send=M   Content-Length N, M < N bytes of body, then the connection is closed
    /reset                         closes the connection without answering
    /redirect?to=URL[&code=302]    redirect to URL (absolute or relative)
    /redirect-chain/N              N redirects: /redirect-chain/N -> N-1 -> ... -> 0, which is 200 + CHAIN_BODY
    /redirect-loop                 redirects to itself
    /redirect-pingpong/a           a -> b -> a ...
    /gzip/<path>, /deflate/<path>  a registered file, Content-Encoding gzip / deflate (zlib stream)
    /robots-noai                   a JPEG-typed body with "X-Robots-Tag: noai"
    /xrobots?tag=V[&tag=V2...]     200 image/jpeg; one X-Robots-Tag header per tag value
    /html-as-jpeg                  HTML body served as image/jpeg
    /empty                         200, Content-Length 0

TLS-handshake target: `SilentServer(host)` accepts TCP connections and never sends a byte (so a TLS
client waits in its handshake); `.port`, `.connections`, a context manager.

Connect-timeout target: `Blackhole(host)` is a listening socket that never accepts, with its
backlog full, so on Linux a further connect() gets no SYN-ACK and times out (tested in
test_download_fetch.py). Also a context manager; `.url(path)`.
"""

from __future__ import annotations

import gzip
import select
import socket
import socketserver
import ssl
import threading
import time
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

FLAKY_BODY = b"flaky-ok"
CHAIN_BODY = b"end-of-chain"
TRICKLE_BODY = b"finally-done"
HTML_BODY = b"<!doctype html><html><head><title>not an image</title></head><body>hello</body></html>"


class FaultHandler(BaseHTTPRequestHandler):
    """One connection; `do_GET` dispatches to a registered file or handler, or to a built-in route."""

    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is exercised
    timeout = 30  # an idle keep-alive connection is dropped after this (and on stop())
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stalls
    _route = ""

    def log_message(self, format, *args):  # keep test output clean
        pass

    # --- helpers for handlers ---------------------------------------------------------------
    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)

    def q(self, name: str, default=None):
        values = self.query.get(name)
        return values[0] if values else default

    def reply(self, code: int, body: bytes = b"", content_type: str | None = "text/plain", headers=None,
              length: bool = True) -> None:
        """Send a complete response (Content-Length unless length=False, then close-delimited)."""
        self.send_response(code)
        if content_type:
            self.send_header("Content-Type", content_type)
        for name, value in _header_items(headers):
            self.send_header(name, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.write_body(body)

    def write_body(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()
        self.server._add_bytes(self._route, len(data))

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()
        self.server._add_bytes(self._route, len(data))

    def wait(self, seconds: float) -> bool:
        """Sleep, but return True at once when the server stops."""
        return self.server.stopping.wait(seconds)

    # --- dispatch -----------------------------------------------------------------------------
    def do_HEAD(self):
        self.reply(405, b"", None)

    def do_GET(self):
        srv = self.server
        self._route = urlsplit(self.path).path
        srv._request_started(self.path, self._route)
        try:
            self._dispatch()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client left: that is what many tests do on purpose
        finally:
            srv._request_finished()

    def _dispatch(self):
        srv = self.server
        route = self._route
        with srv.lock:
            handler = srv.handlers.get(route)
            static = srv.files.get(route)
        if handler is not None:
            return handler(self)
        if static is not None:
            body, ctype, headers = static
            return self.reply(200, body, ctype, headers)
        parts = route.strip("/").split("/")
        name = parts[0]
        fn = getattr(self, "route_" + name.replace("-", "_"), None)
        if fn is None:
            return self.reply(404, b"no such route", "text/plain")
        return fn(parts[1:])

    # --- built-in routes ------------------------------------------------------------------------
    def route_status(self, args):
        code = int(args[0])
        self.reply(code, f"status {code}".encode(), "text/plain")

    def route_retry_after(self, args):
        code = int(args[0])
        self.reply(code, b"slow down", "text/plain", {"Retry-After": self.q("after", "1")})

    def route_flaky(self, args):
        code = int(args[0])
        fail = int(self.q("fail", "1"))
        key = self.q("key", self._route)
        with self.server.lock:
            self.server.flaky_seen[key] += 1
            n = self.server.flaky_seen[key]
        if n <= fail:
            after = self.q("after")
            self.reply(code, b"try again", "text/plain", {"Retry-After": after} if after is not None else None)
        else:
            self.reply(200, FLAKY_BODY, "image/jpeg")

    def route_slow_headers(self, args):
        if self.wait(float(self.q("s", "5"))):
            return
        self.reply(200, b"late", "image/jpeg")

    def route_slow_body(self, args):
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", "10")
        self.end_headers()
        self.wfile.flush()
        if self.wait(float(self.q("s", "5"))):
            return
        self.write_body(b"0123456789")

    def _chunked_headers(self, ctype="image/jpeg"):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def route_trickle(self, args):
        every = float(self.q("every", "0.2"))
        self._chunked_headers()
        while not self.wait(every):
            self.write_chunk(b"x")
        self.close_connection = True

    def _trickle(self, data: bytes, every: float, until: float) -> bool:
        """Write `data` one byte every `every` s until time `until`, then the rest at once; False if stopped."""
        for i in range(len(data)):
            if time.monotonic() >= until:
                self.wfile.write(data[i:])
                break
            self.wfile.write(data[i:i + 1])
            self.wfile.flush()
            if self.wait(every):
                return False
        self.wfile.flush()
        return True

    def _raw_head(self, extra: bytes = b"") -> tuple[bytes, bytes]:
        status = b"HTTP/1.1 200 OK\r\n"
        headers = (b"Content-Type: image/jpeg\r\n" + extra + b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                   % len(TRICKLE_BODY))
        self.close_connection = True
        return status, headers

    def _limits(self) -> tuple[float, float]:
        return float(self.q("every", "0.2")), time.monotonic() + float(self.q("max", "60"))

    def route_trickle_status(self, args):
        every, until = self._limits()
        status, headers = self._raw_head()
        if self._trickle(status, every, until):
            self.write_body(headers + TRICKLE_BODY)

    def route_trickle_headers(self, args):
        every, until = self._limits()
        status, headers = self._raw_head(b"X-Padding: " + b"p" * 200 + b"\r\n")
        self.wfile.write(status)
        if self._trickle(headers, every, until):
            self.write_body(TRICKLE_BODY)

    def route_header_flood(self, args):
        every, until = self._limits()
        status, headers = self._raw_head()
        self.wfile.write(status)
        n = 0
        while time.monotonic() < until:
            self.wfile.write(b"X-Flood-%d: %s\r\n" % (n, b"f" * 20))
            self.wfile.flush()
            n += 1
            if self.wait(every):
                return
        self.write_body(headers + TRICKLE_BODY)

    def route_never_ending(self, args):
        self._chunked_headers()
        chunk = b"x" * 65536
        while not self.server.stopping.is_set():
            self.write_chunk(chunk)
        self.close_connection = True

    def route_huge(self, args):
        n = int(self.q("n", str(64 * 1024 * 1024)))
        with_length = self.q("length", "1") != "0"
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        if with_length:
            self.send_header("Content-Length", str(n))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        chunk = b"x" * 65536
        left = n
        while left > 0 and not self.server.stopping.is_set():
            part = chunk[: min(left, len(chunk))]
            self.write_body(part)
            left -= len(part)

    def route_lying_length(self, args):
        claim = int(self.q("claim", "1000"))
        send = int(self.q("send", "10"))
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(claim))
        self.end_headers()
        self.write_body(b"y" * send)
        self.close_connection = True
        _hard_close(self)

    def route_reset(self, args):
        self.close_connection = True
        _hard_close(self, reset=True)

    def route_redirect(self, args):
        code = int(self.q("code", "302"))
        self.reply(code, b"", None, {"Location": self.q("to", "/")})

    def route_redirect_chain(self, args):
        n = int(args[0]) if args else 0
        if n <= 0:
            return self.reply(200, CHAIN_BODY, "image/jpeg")
        self.reply(302, b"", None, {"Location": f"/redirect-chain/{n - 1}"})

    def route_redirect_loop(self, args):
        self.reply(302, b"", None, {"Location": "/redirect-loop"})

    def route_redirect_pingpong(self, args):
        other = "b" if args and args[0] == "a" else "a"
        self.reply(301, b"", None, {"Location": f"/redirect-pingpong/{other}"})

    def _encoded(self, args, encode, name):
        path = "/" + "/".join(args)
        with self.server.lock:
            static = self.server.files.get(path)
        if static is None:
            return self.reply(404, b"no such file", "text/plain")
        body, ctype, headers = static
        self.reply(200, encode(body), ctype, {**dict(_header_items(headers)), "Content-Encoding": name})

    def route_gzip(self, args):
        self._encoded(args, gzip.compress, "gzip")

    def route_deflate(self, args):
        self._encoded(args, zlib.compress, "deflate")

    def route_robots_noai(self, args):
        self.reply(200, b"\xff\xd8\xff" + b"j" * 64, "image/jpeg", {"X-Robots-Tag": "noai"})

    def route_xrobots(self, args):
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        for tag in self.query.get("tag", []):
            self.send_header("X-Robots-Tag", tag)
        body = b"\xff\xd8\xff" + b"j" * 64
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.write_body(body)

    def route_html_as_jpeg(self, args):
        self.reply(200, HTML_BODY, "image/jpeg")

    def route_empty(self, args):
        self.reply(200, b"", "image/jpeg")


def _header_items(headers):
    if not headers:
        return []
    return list(headers.items()) if isinstance(headers, dict) else list(headers)


def _hard_close(handler: BaseHTTPRequestHandler, reset: bool = False) -> None:
    """Close the connection now (reset=True: RST instead of FIN, via SO_LINGER 0)."""
    try:
        handler.wfile.flush()
    except OSError:
        pass
    sock = handler.connection
    try:
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        else:
            sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    if reset:
        sock.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # we join our own threads in FaultServer.stop()
    allow_reuse_address = True
    request_queue_size = 128  # socketserver's default backlog of 5 drops SYNs under a burst: fake connect timeouts

    def __init__(self, host: str, tls=None):
        self.tls_context = None
        self.sni_names: list = []
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            ctx.sni_callback = self._record_sni
            self.tls_context = ctx
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.files: dict[str, tuple] = {}
        self.handlers: dict = {}
        self.counts: Counter = Counter()
        self.sent: Counter = Counter()
        self.flaky_seen: Counter = Counter()
        self.total = 0
        self.accepted = 0
        self.active = 0
        self.peak = 0
        self.open_conns = 0
        self.peak_conns = 0
        self.threads: list[threading.Thread] = []
        self.conn_socks: set = set()
        super().__init__((host, 0), FaultHandler)

    def server_bind(self):
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that could leave loopback
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[0], self.server_address[1]

    def process_request(self, request, client_address):
        with self.lock:
            self.accepted += 1
            self.open_conns += 1
            self.peak_conns = max(self.peak_conns, self.open_conns)
            self.conn_socks.add(request)
        t = threading.Thread(target=self.process_request_thread, args=(request, client_address), daemon=True)
        with self.lock:
            self.threads = [x for x in self.threads if x.is_alive()]
            self.threads.append(t)
        t.start()

    def _record_sni(self, sslsock, name, ctx):
        with self.lock:
            self.sni_names.append(name)

    def process_request_thread(self, request, client_address):
        try:
            if self.tls_context is not None:  # handshake here, in the connection's thread, not in accept()
                try:
                    tls = self.tls_context.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError):
                    self.shutdown_request(request)
                    return
                with self.lock:
                    self.conn_socks.discard(request)
                    self.conn_socks.add(tls)
                request = tls
            super().process_request_thread(request, client_address)
        finally:
            with self.lock:
                self.open_conns -= 1
                self.conn_socks.discard(request)

    def handle_error(self, request, client_address):  # a client that vanished is normal here
        pass

    def _request_started(self, full: str, route: str) -> None:
        with self.lock:
            self.total += 1
            self.counts[route] += 1
            if full != route:
                self.counts[full] += 1
            self.active += 1
            self.peak = max(self.peak, self.active)

    def _request_finished(self) -> None:
        with self.lock:
            self.active -= 1

    def _add_bytes(self, route: str, n: int) -> None:
        with self.lock:
            self.sent[route] += n


class FaultServer:
    """See the module docstring."""

    def __init__(self, host: str = "127.0.0.1", tls: tuple[str, str] | None = None):
        self.host = host
        self.tls = tls
        self._srv: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> FaultServer:
        self._srv = _Server(self.host, self.tls)
        self._thread = threading.Thread(target=self._srv.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"FaultServer-{self.host}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close the listening socket, cut open connections, join every thread."""
        srv = self._srv
        if srv is None:
            return
        srv.stopping.set()
        srv.shutdown()
        srv.server_close()
        with srv.lock:
            socks = list(srv.conn_socks)
            threads = list(srv.threads)
        for s in socks:  # wakes handlers blocked reading the next keep-alive request
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in threads:
            t.join(timeout=10)
        self._thread.join(timeout=10)
        alive = [t for t in threads if t.is_alive()]
        self._srv = None
        if alive:
            raise RuntimeError(f"FaultServer threads still alive after stop: {alive}")

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- configuration ------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._srv.server_address[1]

    @property
    def stopping(self) -> threading.Event:
        return self._srv.stopping

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def url(self, path: str = "/") -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def add_file(self, path: str, body: bytes, content_type: str = "image/jpeg", headers=None) -> str:
        """Serve `body` at `path` (200, Content-Length); returns its URL."""
        with self._srv.lock:
            self._srv.files[path] = (bytes(body), content_type, headers)
        return self.url(path)

    def add_handler(self, path: str, fn) -> str:
        """Let fn(handler: FaultHandler) answer requests for `path`; returns its URL."""
        with self._srv.lock:
            self._srv.handlers[path] = fn
        return self.url(path)

    # --- observations -------------------------------------------------------------------------------
    def requests(self, path: str) -> int:
        with self._srv.lock:
            return self._srv.counts[path]

    @property
    def total_requests(self) -> int:
        with self._srv.lock:
            return self._srv.total

    @property
    def connections(self) -> int:
        with self._srv.lock:
            return self._srv.accepted

    @property
    def peak_concurrency(self) -> int:
        with self._srv.lock:
            return self._srv.peak

    @property
    def peak_connections(self) -> int:
        with self._srv.lock:
            return self._srv.peak_conns

    def bytes_sent(self, path: str) -> int:
        with self._srv.lock:
            return self._srv.sent[path]

    def reset_counts(self) -> None:
        """Zero every counter (requests, connections, peaks, bytes, flaky routes, SNI names)."""
        srv = self._srv
        with srv.lock:
            srv.counts.clear()
            srv.sent.clear()
            srv.flaky_seen.clear()
            srv.sni_names.clear()
            srv.total = srv.accepted = 0
            srv.peak, srv.peak_conns = srv.active, srv.open_conns

    @property
    def sni_names(self) -> list:
        """TLS only: the server names (SNI) clients sent, one per handshake."""
        with self._srv.lock:
            return list(self._srv.sni_names)


class SilentServer:
    """A loopback listener that accepts connections and never sends anything (a stalled TLS handshake)."""

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self._listener: socket.socket | None = None
        self._accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SilentServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.bind((self.host, 0))
        self._listener.listen(16)
        self._listener.settimeout(0.05)
        self._thread = threading.Thread(target=self._accept, name="SilentServer", daemon=True)
        self._thread.start()
        return self

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            self._accepted.append(conn)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                raise RuntimeError("SilentServer thread still alive after stop")
        for c in self._accepted:
            c.close()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    @property
    def connections(self) -> int:
        return len(self._accepted)

    def __enter__(self) -> SilentServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Blackhole:
    """A loopback port where connect() hangs: a listener with backlog 0 that never accepts, its
    queue filled by our own connection, so the kernel drops further SYNs (tcp_abort_on_overflow=0)."""

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self._listener: socket.socket | None = None
        self._fillers: list[socket.socket] = []

    def start(self) -> Blackhole:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.bind((self.host, 0))
        self._listener.listen(0)
        for _ in range(8):  # fill the accept queue until a connect no longer completes
            c = socket.socket(family, socket.SOCK_STREAM)
            c.setblocking(False)
            c.connect_ex(self._listener.getsockname()[:2])
            self._fillers.append(c)
            _, writable, _ = select.select([], [c], [], 0.3)
            if not writable:
                break
        else:
            self.stop()
            raise RuntimeError("could not fill the listen backlog: connect timeouts cannot be produced here")
        time.sleep(0.05)
        return self

    def stop(self) -> None:
        for c in self._fillers:
            c.close()
        self._fillers = []
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    def url(self, path: str = "/") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    def __enter__(self) -> Blackhole:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def make_tls_files(directory, hostname: str = "img.test") -> dict[str, str] | None:
    """Directory + host name -> {"ca": ca.pem, "cert": leaf.pem, "key": leaf.key}: a throw-away CA and a
    certificate for `hostname` signed by it (openssl CLI); None when openssl is not installed."""
    import os
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    d = os.fspath(directory)
    files = {"ca": os.path.join(d, "ca.pem"), "ca_key": os.path.join(d, "ca.key"),
             "cert": os.path.join(d, f"{hostname}.pem"), "key": os.path.join(d, f"{hostname}.key"),
             "csr": os.path.join(d, f"{hostname}.csr"), "ext": os.path.join(d, f"{hostname}.ext")}

    def run(*args):
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    if not os.path.exists(files["ca"]):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", files["ca_key"], "-out", files["ca"],
            "-days", "2", "-subj", "/CN=laion-spark test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    with open(files["ext"], "w") as fh:
        fh.write(f"subjectAltName=DNS:{hostname}\nbasicConstraints=CA:FALSE\n"
                 "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
                 "authorityKeyIdentifier=keyid,issuer\nsubjectKeyIdentifier=hash\n")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", files["key"], "-out", files["csr"],
        "-subj", f"/CN={hostname}")
    run("x509", "-req", "-in", files["csr"], "-CA", files["ca"], "-CAkey", files["ca_key"], "-CAcreateserial",
        "-out", files["cert"], "-days", "2", "-extfile", files["ext"])
    return {"ca": files["ca"], "cert": files["cert"], "key": files["key"]}
