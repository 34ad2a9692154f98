"""The serve job: index folder(s) [+ images] -> an HTTP search service, until SIGINT or SIGTERM.

INPUT  -> JobConfig with input (one index folder, or a folder of several such as run_dir/index with image/
          and text/), serve.* (images=, host, port, max_k, allow_image_url, allowed_origins and the bounds
          of a request: max_body_bytes, max_query_pixels, threads, max_requests), search.* (the filters'
          defaults, cache_dir) and download.* (the limits an image_url fetch runs under)
OUTPUT -> a server at http://<host>:<port>/ (logged once it listens, with the port the OS gave for port=0)
          answering until SIGINT/SIGTERM, then shut down; a summary dict (url, indices, images, requests
          per route and status, seconds served) that format_report prints

No Spark session (the stage is registered with spark=False): indices open with faiss, the images table
with pyarrow. The signal handlers are set for the time run() serves and the previous ones put back after.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import threading
import time

from laion_spark.config import ConfigError
from laion_spark.io import exists

log = logging.getLogger(__name__)

USAGE = "laion-spark serve input=<index dir> [images=<images or dataset table>] [port=1234] [host=127.0.0.1]"


def prepare(cfg) -> None:
    """Checks before any index is opened: the input and images tables exist, images has sample_id + image,
    serve.allowed_origins are origins, uvicorn is installed."""
    import importlib.util

    from laion_spark.serve.app import normalise_origin
    from laion_spark.serve.thumbs import ImageTableError, check_table

    if not exists(cfg.input):
        raise ConfigError(f"input not found: {cfg.input} ({USAGE})")
    if cfg.serve.images:
        if not exists(cfg.serve.images):
            raise ConfigError(f"images not found: {cfg.serve.images}")
        try:
            check_table(cfg.serve.images)
        except ImageTableError as exc:
            raise ConfigError(str(exc)) from None
    if not cfg.serve.host.strip():
        raise ConfigError("serve.host is empty; 127.0.0.1 serves this machine only")
    if importlib.util.find_spec("uvicorn") is None:
        raise ConfigError("serve runs on uvicorn, which is not installed here: pip install 'laion-spark[index]' "
                          "(or uvicorn itself)")
    for origin in cfg.serve.allowed_origins:
        try:
            normalise_origin(origin)
        except ValueError as exc:
            raise ConfigError(f"serve.allowed_origins: {exc}") from None


def build_server(cfg, indices: dict | None = None):
    """JobConfig (+ indices already open) -> a bound, not yet serving SearchServer."""
    from laion_spark.search.searcher import open_indices
    from laion_spark.serve.api import Settings
    from laion_spark.serve.app import SearchService
    from laion_spark.serve.server import Limits, SearchServer
    from laion_spark.serve.thumbs import ImageStore

    v = cfg.serve
    if indices is None:
        indices = open_indices(cfg.input, cfg.search.cache_dir)
    images = ImageStore(v.images, cache_dir=cfg.search.cache_dir) if v.images else None
    fetcher = None
    if v.allow_image_url:
        from laion_spark.download.fetch import Fetcher

        fetcher = Fetcher(cfg.download)
    service = SearchService(indices, Settings.from_config(cfg), images, fetcher, loopback_only=True,
                            allowed_origins=v.allowed_origins)
    try:
        server = SearchServer((v.host, v.port), service, limits=Limits.from_config(v))
    except BaseException:
        if fetcher is not None:
            fetcher.close()
        raise
    bound = server.server_address[0]
    try:
        service.loopback_only = ipaddress.ip_address(bound).is_loopback
    except ValueError:
        service.loopback_only = False
    if not service.loopback_only:
        log.warning("serve: listening on %s, not loopback: every machine that reaches it can search these "
                    "indices (and, with serve.allow_image_url, make it fetch URLs)", bound)
    return server


def run(spark, cfg) -> dict:
    """Serve until SIGINT/SIGTERM -> the summary (spark is None: serve runs without a session)."""
    server = build_server(cfg)
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there

        def on_signal(signum, frame):
            log.info("serve: %s received, stopping", signal.Signals(signum).name)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    started = time.time()
    service = server.service
    try:
        server.start()
        log.info("serve: listening at %s (indices: %s; thumbnails: %s)", server.url,
                 ", ".join(f"{n} ({s.field})" for n, s in service.indices.items()),
                 cfg.serve.images or "the result URLs")
        while not stop.wait(0.5):  # a timed wait: the main thread gets to run the signal handler
            pass
    finally:
        server.stop()
        if service.fetcher is not None:
            service.fetcher.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    requests = {f"{route} {status}": n for (route, status), n in sorted(service.counts.items())}
    log.info("serve: stopped after %.0f s, %d requests", time.time() - started, sum(requests.values()))
    return {"url": server.url, "indices": {n: s.field for n, s in service.indices.items()},
            "images": cfg.serve.images or None, "requests": requests,
            "served_seconds": round(time.time() - started, 3)}


def format_report(summary: dict) -> str:
    lines = [f"serve: stopped; served {summary['url']} for {summary['served_seconds']} s",
             "  indices: " + ", ".join(f"{n} ({f})" for n, f in summary["indices"].items()),
             f"  thumbnails: {summary['images'] or 'the result URLs'}"]
    requests = summary["requests"]
    lines.append(f"  requests: {sum(requests.values())}")
    lines += [f"    {key}: {n}" for key, n in requests.items()]
    return "\n".join(lines)
