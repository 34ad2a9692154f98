"""The HTTP transport: a SearchService on uvicorn (h11's parser), each request's cost bounded before it is
worked on.

INPUT  -> (host, port) (port 0: any free one), a SearchService (app.py: refuse() on a request's head,
          respond() on the whole request, record() for the refusals made here) and Limits (serve.*)
OUTPUT -> SearchServer: bound and listening once built; from start() until stop() one background thread
          runs uvicorn's event loop, and the service's answers are worked out on `threads` worker threads

What is bounded, and where (each refusal is JSON {"error", "status"}, but for uvicorn's own two):
- a request's head: h11 takes at most 16 KiB of it, and uvicorn answers a longer or malformed one with a
  400 (text/plain); a connection that has not sent a whole head within head_timeout_s is closed;
- who asks: the service's Host, Origin and Sec-Fetch-Site checks run on the head, before a body is read;
- its body: a Content-Length over max_body_bytes gets 413 before a byte is read, a chunked body is cut
  there (413); a POST without a length gets 411; a body not in within body_timeout_s gets 408;
- requests at once: max_requests are taken (reading their body, waiting for a thread, or worked on); one
  more gets 503 with Retry-After before its body is read. So the bodies held are at most max_requests x
  max_body_bytes, and the images decoded at most threads x serve.max_query_pixels (app.py checks those);
- connections: past 4 x max_requests open at once, uvicorn answers 503 (its limit_concurrency).

Why uvicorn: http.server is documented as not for production (a thread per connection without bound,
its own request parser); uvicorn and h11 are kept by many, and an asyncio connection that waits costs no
thread. The service stays synchronous (faiss, torch and Pillow release the GIL where they work), so it
runs on a thread pool of its own size, not on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """What one server takes at once (serve.* gives the first three; the deadlines are fixed)."""

    max_body_bytes: int = 8 * 2**20
    threads: int = 4
    max_requests: int = 16
    head_timeout_s: float = 30.0  # a connection's whole request head, from its first byte (or the last answer)
    body_timeout_s: float = 60.0  # a request's whole body, once its head is in

    @classmethod
    def from_config(cls, serve) -> Limits:
        return cls(max_body_bytes=serve.max_body_bytes, threads=serve.threads, max_requests=serve.max_requests)


class Headers(dict):
    """A request's headers: names lower-cased, a repeated header's values joined by ", " (so two Origins
    are no one origin); get() takes any case."""

    def __init__(self, raw):
        super().__init__()
        for name, value in raw:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            self[key] = f"{self[key]}, {text}" if key in self else text

    def get(self, name: str, default=None):
        return super().get(name.lower(), default)


class _Refused(Exception):
    """A request the transport answers itself: status, message, and whether the connection is closed after."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class _Asgi:
    """The ASGI application: one request -> its head checked, its body read within bounds, the service's
    answer from a worker thread. Runs on the event loop's one thread (the counters need no lock)."""

    def __init__(self, service, limits: Limits, pool: ThreadPoolExecutor):
        self.service = service
        self.limits = limits
        self.pool = pool
        self.taken = 0  # requests past their head, not yet answered

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # no lifespan, no websocket: uvicorn is told so
            return
        from laion_spark.serve.app import error_response

        method = scope["method"]
        target = scope["raw_path"].decode("latin-1")
        if target.startswith("//"):  # as http.server reads it (a base URL with "/" joined to "/knn-service")
            target = "/" + target.lstrip("/")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        headers = Headers(scope["headers"])
        length = headers.get("content-length")
        chunked = "chunked" in (headers.get("transfer-encoding") or "").lower()
        announced = int(length) if length is not None else None  # h11 took only digits
        has_body = chunked or bool(announced)
        # who asks, which route, which method: decided on the head, so a refused body is never looked at
        refused = self.service.refuse(method, target, headers)
        if refused is not None:
            await self._refuse(send, refused, announced)
            return
        limit = self.limits.max_body_bytes
        try:
            if method == "POST" and length is None and not chunked:
                raise _Refused(411, "send the JSON body with a Content-Length header")
            if announced is not None and announced > limit:
                raise _Refused(413, f"the body is {announced} bytes; this server takes at most {limit} "
                                    "(serve.max_body_bytes)")
            if self.taken >= self.limits.max_requests:
                raise _Refused(503, f"this server is working on {self.taken} requests, as many as it takes at "
                                    "once (serve.max_requests); retry in a moment", {"Retry-After": "1"})
        except _Refused as exc:
            self.service.record(target, exc.status)
            response = error_response(exc.status, exc.message, exc.headers)
            if exc.status == 411:  # what follows on this connection cannot be framed
                await _send(send, response, close=True)
            else:
                await self._refuse(send, response, announced)
            return
        self.taken += 1
        try:
            try:
                body = await asyncio.wait_for(self._body(receive), self.limits.body_timeout_s) if has_body else b""
            except _Refused as exc:  # a chunked body past the limit
                self.service.record(target, exc.status)
                await self._refuse(send, error_response(exc.status, exc.message), None)
                return
            except TimeoutError:
                self.service.record(target, 408)
                await _send(send, error_response(408, f"the body did not arrive within "
                                                      f"{self.limits.body_timeout_s:g} s"), close=True)
                return
            except _Gone:
                return
            loop = asyncio.get_running_loop()
            response = await loop.run_in_executor(self.pool, self.service.respond, method, target, headers,
                                                  body if method == "POST" else None)
        finally:
            self.taken -= 1
        await _send(send, response)

    async def _refuse(self, send, response, announced: int | None) -> None:
        """Answer a refusal before the body is read. The connection stays open, and uvicorn reads what is
        left of the body and drops it (the protocol's head deadline bounds how long), as a web server's
        lingering close does: a connection closed with bytes unread is reset, and a reset client may never
        see the answer. Only a body announced past 2 x max_body_bytes is not worth reading: closed at once."""
        await _send(send, response, close=announced is not None and announced > 2 * self.limits.max_body_bytes)

    async def _body(self, receive) -> bytes:
        """The request's body, read as it comes; _Refused(413) past max_body_bytes (a chunked body names
        no length first), _Gone when the client left."""
        limit = self.limits.max_body_bytes
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Gone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _Refused(413, f"the body is over {limit} bytes, as much as this server takes "
                                    "(serve.max_body_bytes)")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class _Gone(Exception):
    """The client closed its connection before its request was whole."""


async def _send(send, response, close: bool = False) -> None:
    """A Response -> the ASGI messages; close: the connection is closed after it (a body left unread there
    cannot be told from the next request)."""
    headers = [(b"Content-Type", response.content_type.encode("latin-1")),
               (b"Content-Length", str(len(response.body)).encode()),
               (b"X-Content-Type-Options", b"nosniff"),
               (b"Referrer-Policy", b"no-referrer")]  # result images are loaded from the web
    headers += [(name.encode("latin-1"), str(value).encode("latin-1", "replace"))
                for name, value in response.headers.items()]
    if close:
        headers.append((b"connection", b"close"))  # as uvicorn spells it, so it adds no second one
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


def _protocol(head_timeout_s: float):
    """-> uvicorn's h11 protocol class with a deadline on a request's head (uvicorn has none: a client that
    trickles its headers would keep its connection for ever)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        _head_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self._waiting_for_head():
                return
            self._disarm()  # a head is in: the body's deadline and the answer's are the application's

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._waiting_for_head() and not self.transport.is_closing():
                self._arm()  # the next request's head, if any (uvicorn's keep-alive timeout closes an idle one)

        def _waiting_for_head(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(head_timeout_s, self._head_late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            if self._waiting_for_head() and not self.transport.is_closing():
                log.debug("serve: %s sent no whole request head in %g s; closed", self.client, head_timeout_s)
                self.transport.close()

    return Protocol


def _uvicorn():
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError("serve runs on uvicorn, which is not installed here: pip install 'laion-spark[index]' "
                          "(or uvicorn itself)") from exc
    return uvicorn


def _uvicorn_config(app, limits: Limits):
    """-> a uvicorn Config for one server thread that leaves the host process as it was: no logging
    configured (uvicorn's own dictConfig, its loggers' levels and handlers), no signal handlers (uvicorn
    sets none outside the main thread), no proxy headers trusted."""
    uvicorn = _uvicorn()

    class Config(uvicorn.Config):
        def configure_logging(self) -> None:  # the host's logging is the host's (STYLE.md 16)
            pass

    return Config(app, http=_protocol(limits.head_timeout_s), ws="none", lifespan="off", loop="asyncio",
                  interface="asgi3", log_config=None, access_log=False, proxy_headers=False, server_header=False,
                  headers=[("server", "laion-spark-serve")], limit_concurrency=4 * limits.max_requests,
                  timeout_keep_alive=5, timeout_graceful_shutdown=5)


class SearchServer:
    """A SearchService on (host, port) (port 0: any free one), listening once built; `url` is where it
    answers, start() serves in a background thread, stop() ends it."""

    def __init__(self, address: tuple[str, int], service, max_body_bytes: int | None = None,
                 limits: Limits | None = None):
        uvicorn = _uvicorn()
        limits = limits or Limits()
        if max_body_bytes is not None:
            limits = replace(limits, max_body_bytes=max_body_bytes)
        host, port = address[0], address[1]
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(1024)  # connections made before start() wait here
        except BaseException:
            sock.close()
            raise
        self.socket = sock
        self.server_address = sock.getsockname()
        self.service = service
        self.limits = limits
        self._pool = ThreadPoolExecutor(limits.threads, thread_name_prefix="laion-spark-serve-worker")
        self._server = uvicorn.Server(_uvicorn_config(_Asgi(service, limits, self._pool), limits))
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def start(self) -> threading.Thread:
        """Serve in a background thread (tests, notebooks, the job) -> the thread; stop with stop()."""
        if self._thread is not None:
            raise RuntimeError("this server was started already")
        thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.socket]},
                                  name="laion-spark-serve", daemon=True)
        thread.start()
        self._thread = thread
        return thread

    def stop(self) -> None:
        """Stop serving: no new connection, the answers under way finished (5 s at most), the socket closed."""
        if self._stopped:
            return
        self._stopped = True
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.socket.close()
        # a request whose client was answered after the 5 s is dropped; a search still running ends by itself
        self._pool.shutdown(wait=False, cancel_futures=True)
