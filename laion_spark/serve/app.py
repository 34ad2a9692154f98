"""The search service: requests -> clip-retrieval's JSON API, the web page and its thumbnails.

INPUT  -> requests (method, target, headers, body) over the served indices {name: Searcher}, Settings, an
          optional ImageStore (images=) and, with serve.allow_image_url, the download stage's Fetcher (its
          address guard, deadline and size cap) for image_url queries; server.py brings them from HTTP
OUTPUT -> GET  /                  the search page (page.py), /app.js, /app.css
          GET  /indices-list      ["name", ...]
          GET  /config.json       what the page needs (indices with their field and model, thumbnails, max_k)
          POST /knn-service       clip-retrieval's request -> its list of results; the header
                                  X-Unhonoured-Fields names accepted fields whose effect is not applied,
                                  X-Ignored-Fields the fields clip-retrieval does not have either
          POST /metadata          {"indice_name", "ids"} -> [{"id", "metadata"}]
          GET  /thumb/<indice>/<sample_id>   the stored image bytes of a row of that index
          every refusal: a 4xx with {"error": message}; never a dropped connection; a 503 (Retry-After)
          while an index (or the images table) changed on disk and cannot be opened again yet

`SearchService.respond(method, path, headers, body)` is the whole service without sockets;
`SearchService.refuse(method, path, headers)` is the part of it the request's head decides, which the
transport asks before it reads a body. A bug answers 500 with its message and is logged.

Why each answer first asks live.py for its index: a takedown writes tombstones.npy and rewrites index
files under a running server; the next answer (within a second) comes from the new version or is a 503,
never from the files as they were.

Who may ask, decided on the head:
- Host: bound to loopback (the default), the server refuses requests whose Host is no loopback name, so
  a web page the user visits cannot reach it through DNS rebinding (a name of the attacker's that
  resolves to 127.0.0.1, which the browser then treats as the attacker's own origin).
- Origin: any page the user visits may POST to 127.0.0.1 (a form, or fetch with text/plain: a "simple"
  request, sent without asking the server first), and its answer, though unreadable to that page, costs
  the service an image decode or, with image_url, a fetch. A browser names the page's origin in Origin
  on every POST, so a request whose Origin is not the server's own (the scheme://host:port its Host says,
  or one of serve.allowed_origins, a reverse proxy's) is refused. Clients that are no browser (curl,
  clip-retrieval's ClipClient, which posts JSON as text without a Content-Type) send no Origin and pass,
  so the Content-Type is not what decides.
- Sec-Fetch-Site: a page's <img> or <script> of another site sends no Origin, but a browser says
  cross-site (or same-site, another port of localhost) in Sec-Fetch-Site; such a request is refused
  unless it is the user following a link (Sec-Fetch-Mode: navigate).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from laion_spark.serve import api, page
from laion_spark.serve.api import ApiError, Settings
from laion_spark.serve.live import CHECK_SECONDS, IndexUnavailable, LiveIndices
from laion_spark.serve.pixels import check_pixels
from laion_spark.serve.thumbs import ImagesUnavailable

log = logging.getLogger(__name__)

JSON = "application/json"
_THUMB = re.compile(r"^/thumb/([^/]+)/(-?\d{1,20})$")
# the page's own script and style only; result images are the server's thumbnails or the results' web URLs
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' http: https:; "
            "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
ROUTES = {"/": ("GET",), "/app.js": ("GET",), "/app.css": ("GET",), "/indices-list": ("GET",),
          "/config.json": ("GET",), "/knn-service": ("POST",), "/metadata": ("POST",)}


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = JSON
    headers: dict = field(default_factory=dict)


def json_response(status: int, data, headers: dict | None = None) -> Response:
    body = json.dumps(data, ensure_ascii=False, allow_nan=False).encode("utf-8")
    return Response(status, body, JSON, dict(headers or {}))


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    return json_response(status, {"error": message, "status": status}, headers)


def normalise_origin(text: str) -> str:
    """A serve.allowed_origins entry -> its scheme://host[:port], lower-cased; ValueError for anything else
    (a path, a scheme other than http or https, no host)."""
    value = str(text).strip().lower().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query or parts.fragment \
            or "@" in parts.netloc:
        raise ValueError(f"{text!r} is not an origin: give scheme://host[:port], such as https://search.example.org")
    return f"{parts.scheme}://{parts.netloc}"


def _route(path: str) -> str:
    return path.split("?", 1)[0].split("#", 1)[0]


def _is_loopback_host(host: str) -> bool:
    name = host.strip().lower()
    if name.startswith("["):  # [::1]:port
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:  # name:port (a bare IPv6 address has more colons)
        name = name.split(":", 1)[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class SearchService:
    """Everything the handlers share: indices, settings, image store, fetcher, request counts (thread-safe)."""

    def __init__(self, indices: dict, settings: Settings, images=None, fetcher=None, loopback_only: bool = True,
                 check_interval: float = CHECK_SECONDS, allowed_origins=()):
        """indices: {name: Searcher}; images: an ImageStore or None (thumbnails are then the result URLs);
        fetcher: a download Fetcher for image_url queries (None: image_url is refused); loopback_only: refuse
        requests whose Host is not a loopback name (the server is bound to loopback); check_interval: how
        often (seconds, at most) each index's files are looked at for a change; allowed_origins: origins
        besides the server's own whose pages may use it (a reverse proxy's; their hosts pass the Host check)."""
        if not indices:
            raise ValueError("no index to serve")
        self.live = LiveIndices(indices, check_interval)
        self.settings = settings
        self.images = images
        self.fetcher = fetcher
        self.loopback_only = loopback_only
        self.allowed_origins = frozenset(normalise_origin(o) for o in allowed_origins)
        self._allowed_hosts = frozenset(o.split("://", 1)[1] for o in self.allowed_origins)
        self.counts: Counter = Counter()  # (route, status) -> requests
        self._lock = threading.Lock()
        self._reported: set[str] = set()

    # ------------------------------------------------------------------ dispatch
    def respond(self, method: str, path: str, headers, body: bytes | None) -> Response:
        """One request -> its Response (never raises)."""
        route = _route(path)
        try:
            response = self._dispatch(method, route, headers, body)
        except ApiError as exc:
            response = error_response(exc.status, exc.message)
        except (IndexUnavailable, ImagesUnavailable) as exc:  # changed files not open yet: no stale answer
            response = error_response(503, str(exc), {"Retry-After": "1"})
        except Exception as exc:  # a bug: the client gets a message, the log the traceback
            log.exception("serve: %s %s failed", method, route)
            response = error_response(500, f"internal error: {type(exc).__name__}: {exc}")
        self.record(route, response.status)
        return response

    def refuse(self, method: str, path: str, headers) -> Response | None:
        """A request's head -> the refusal it gets whatever its body says (who asks, no such route, a method
        the route does not take), counted; None when the body is worth reading."""
        route = _route(path)
        try:
            self._check_caller(headers)
            allowed = self._allowed(route)
        except ApiError as exc:
            response = error_response(exc.status, exc.message)
        else:
            if method in allowed:
                return None
            response = _method_not_allowed(method, route, allowed)
        self.record(route, response.status)
        return response

    def record(self, path: str, status: int) -> None:
        """Count one answer under its route (the job's summary): respond() and refuse() count theirs, the
        transport the refusals it makes itself (411, 413, 503)."""
        route = _route(path)
        name = route if route in ROUTES else ("/thumb" if route.startswith("/thumb/") else "other")
        with self._lock:
            self.counts[(name, status)] += 1

    def _check_caller(self, headers) -> None:
        """Host, Origin and Sec-Fetch-Site -> ApiError(403) when the request is one this server must not
        answer (see the module's docstring)."""
        if headers is None:
            return
        host = headers.get("Host")
        if self.loopback_only and host is not None and not _is_loopback_host(host) \
                and host.strip().lower() not in self._allowed_hosts:
            raise ApiError(403, f"Host {host!r} is not a loopback name; this server answers only requests to "
                           "itself (127.0.0.1, localhost)")
        origin = headers.get("Origin")
        if origin is not None:
            if not self._own_origin(origin, host):
                raise ApiError(403, f"Origin {origin!r} is not this server's own (http://{host or '?'}): a page "
                               "of another site may not use it; behind a reverse proxy, give the proxy's origin "
                               "in serve.allowed_origins")
            return
        site = (headers.get("Sec-Fetch-Site") or "").strip().lower()
        if site in ("cross-site", "same-site") and (headers.get("Sec-Fetch-Mode") or "").strip().lower() != "navigate":
            raise ApiError(403, f"a request from a page of another site (Sec-Fetch-Site: {site}) is refused; open "
                           "this server's own page instead")

    def _own_origin(self, origin: str, host: str | None) -> bool:
        """A request's Origin + Host -> whether the page that sent it is this server's (or an allowed one)."""
        try:
            value = normalise_origin(origin)
        except ValueError:  # "null" (a sandboxed frame, a file: page) or anything else: not ours
            return False
        if value in self.allowed_origins:
            return True
        return host is not None and value.split("://", 1)[1] == host.strip().lower()

    def _allowed(self, route: str) -> tuple[str, ...]:
        """A route -> the methods it takes; ApiError(404) when there is no such route."""
        if route.startswith("/thumb/"):
            return ("GET",)
        allowed = ROUTES.get(route)
        if allowed is None:
            raise ApiError(404, f"no such path {route!r}; paths: {', '.join(ROUTES)}, /thumb/<indice>/<sample_id>")
        return allowed

    def _dispatch(self, method: str, route: str, headers, body: bytes | None) -> Response:
        self._check_caller(headers)
        allowed = self._allowed(route)
        if method not in allowed:
            return _method_not_allowed(method, route, allowed)
        if route.startswith("/thumb/"):
            thumb = _THUMB.match(route)
            if not thumb:
                raise ApiError(404, f"no such thumbnail {route!r}: /thumb/<indice>/<sample_id>")
            return self._thumb(unquote(thumb[1]), int(thumb[2]))
        if route == "/":
            return Response(200, page.HTML.encode(), "text/html; charset=utf-8", {"Content-Security-Policy": PAGE_CSP})
        if route == "/app.js":
            return Response(200, page.JS.encode(), "text/javascript; charset=utf-8")
        if route == "/app.css":
            return Response(200, page.CSS.encode(), "text/css; charset=utf-8")
        if route == "/indices-list":
            return json_response(200, list(self.indices))
        if route == "/config.json":
            return json_response(200, self.config())
        data = _json_body(body)
        if route == "/knn-service":
            return self._knn(data)
        return self._metadata(data)

    @property
    def indices(self) -> dict:
        """{name: the Searcher last opened}: what names and describes each index (field, model, infos). An
        answer comes from self.live.get(name) instead, which follows the files."""
        return self.live.last_opened()

    # ------------------------------------------------------------------ routes
    def config(self) -> dict:
        s = self.settings
        return {
            "indices": {n: {"field": x.field, "clip_model": x.infos.get("clip_model"),
                            "nb_vectors": x.infos.get("nb_vectors"),
                            "safety": "punsafe" in x.infos.get("metadata_columns", ())}
                        for n, x in self.indices.items()},
            "thumbnails": self.images is not None, "max_k": s.max_k, "default_k": s.default_k,
            "deduplicate": s.deduplicate, "unique_urls": s.unique_urls,
            "image_url": s.allow_image_url and self.fetcher is not None,
        }

    def _knn(self, data) -> Response:
        from laion_spark.search.searcher import SearchError

        started = time.perf_counter()
        q = api.parse_knn(data, self.indices, self.settings)
        searcher = self.live.get(q.index)
        image = self._fetch(q.image_url) if q.image_url is not None else None
        if image is not None or q.image is not None:
            check_pixels(image if image is not None else q.image, self.settings.max_query_pixels)
        thumbnail = None
        if self.images is not None:
            prefix = f"/thumb/{quote(q.index, safe='')}/"

            def thumbnail(sample_id: int) -> str:
                return f"{prefix}{sample_id}"
        try:
            results = api.run_knn(searcher, q, self.settings, image, thumbnail)
        except SearchError as exc:
            raise ApiError(400, str(exc)) from None
        headers = {"X-Index": q.index}
        if q.unhonoured:
            headers["X-Unhonoured-Fields"] = ", ".join(q.unhonoured)
        if q.ignored:
            headers["X-Ignored-Fields"] = ", ".join(q.ignored)
        self._report(q)
        log.debug("serve: knn %s k=%d -> %d results in %.1f ms", q.index, q.num_result_ids, len(results),
                  1000 * (time.perf_counter() - started))
        return json_response(200, results, headers)

    def _report(self, q) -> None:
        """Log each unhonoured or unknown field once (clip-retrieval's client sends some with every request)."""
        for name in (*q.unhonoured, *q.ignored):
            with self._lock:
                if name in self._reported:
                    continue
                self._reported.add(name)
            if name in q.unhonoured:
                log.info("serve: %s is accepted but not applied (no such model here); responses say so in "
                         "X-Unhonoured-Fields", name)
            else:
                log.info("serve: request field %r is not clip-retrieval's; ignored (X-Ignored-Fields)", name)

    def _fetch(self, url: str) -> bytes:
        """image_url -> its bytes, fetched by the download stage's Fetcher (address guard, deadline, size cap)."""
        if self.fetcher is None:
            raise ApiError(403, "image_url is off on this server (serve.allow_image_url=false)")
        result = self.fetcher.fetch(url)
        if result.status == "success":
            return result.body
        if result.status == "blocked_address":
            raise ApiError(403, f"image_url refused by the address guard: {result.error_message}")
        raise ApiError(400, f"image_url could not be fetched: {result.status}: {result.error_message}")

    def _metadata(self, data) -> Response:
        name, ids = api.parse_metadata(data, self.indices, self.settings)
        return json_response(200, api.metadata_response(self.live.get(name), ids))

    def _thumb(self, indice: str, sample_id: int) -> Response:
        if indice not in self.live:
            raise ApiError(404, f"unknown index {indice!r}; served: {', '.join(self.live)}")
        if self.images is None:
            raise ApiError(404, "this server has no images table (serve.images=): the page shows the result URLs")
        if not -2**63 <= sample_id < 2**63:
            raise ApiError(404, f"no sample_id {sample_id}")
        # only rows the index holds now: the images table also has the rows a filter or a blocklist removed,
        # which must not become reachable by guessing ids, and a takedown's rows until it is rewritten
        if self.live.get(indice).metadata([sample_id])[0] is None:
            raise ApiError(404, f"index {indice!r} has no sample_id {sample_id}")
        found = self.images.get(sample_id)
        if found is None:
            raise ApiError(404, f"images={self.images.uri} has no stored image for sample_id {sample_id}")
        data, mime = found
        return Response(200, data, mime, {"Cache-Control": "private, max-age=86400"})


def _method_not_allowed(method: str, route: str, allowed: tuple[str, ...]) -> Response:
    return error_response(405, f"{method} is not allowed on {route}; use {', '.join(allowed)}",
                          {"Allow": ", ".join(allowed)})


def _json_body(body: bytes | None):
    if not body:
        raise ApiError(400, "the request has no body; send a JSON object")
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None


def __getattr__(name: str):
    """SearchServer, the HTTP transport, lives in server.py (imported on first use: it brings uvicorn)."""
    if name == "SearchServer":
        from laion_spark.serve.server import SearchServer

        return SearchServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
