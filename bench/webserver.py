"""A latency-bound loopback image server for bench/download_web.py: the open web's waiting, not its CPU.

INPUT  -> bench/imageset.py's cached pool (its JPEGs of 30 - 150 kB are served), latency settings
          (time to first byte: log-normal, median 0.4 s, p99 2.5 s by default, capped), an optional
          per-connection rate cap in bytes/s, and N loopback addresses to listen on
OUTPUT -> `python bench/webserver.py serve POOL_DIR ...`: one asyncio process listening on 127.0.0.1 ..
          (127.0.0.1 .. 127.0.0.254, then 127.0.1.1 ...; all loopback, never 0.0.0.0) on one port,
          which it prints; it exits when its stdin closes. Every request waits its URL's time to first
          byte (a coroutine asleep, not a thread: thousands in flight cost little), then gets its answer.
          Its view of the run, from /_bench/stats: requests in flight sampled every 0.5 s (and the
          peak between samples), open connections, responses and bytes, the time to first byte meant
          and served (the difference is the server's own lag), the most requests in flight to one host.
          In the benchmark's process: WebServer (start, reset, stats, stop), build_urls(), ttfb_s().

URL paths say what the server does, so it needs no URL table; the wait depends only on the path (and the
seed), so every tool, whatever host name it uses, waits the same for the same URL:
  /img/<i>/<k>.jpg      the k-th JPEG of 30 - 150 kB of the pool, after its wait
  /missing/<i>.jpg      HTTP 404, after its wait
  /_bench/ping|reset|stats   the benchmark's controls, answered at once and not counted
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imageset  # bench/ is not a package: imported from its folder

MIN_BYTES, MAX_BYTES = 30_000, 150_000  # JPEGs of the pool served: the common size of a web photo
SAMPLE_S = 0.5
Z99 = statistics.NormalDist().inv_cdf(0.99)  # 2.326


# ------------------------------------------------------------------------------- shared with the bench


def web_images(directory: Path) -> list[str]:
    """-> the names of the pool's JPEGs of MIN_BYTES .. MAX_BYTES, in pool order (index k of /img/<i>/<k>.jpg)."""
    images = json.loads((directory / "manifest.json").read_text())["images"]
    return [p["name"] for p in images if p["format"] == "jpeg" and MIN_BYTES <= p["size"] <= MAX_BYTES]


def address(k: int) -> str:
    """k = 0, 1, ... -> 127.0.0.1 .. 127.0.0.254, 127.0.1.1 ...: every 127.x address is loopback on Linux."""
    return f"127.0.{k // 254}.{k % 254 + 1}"


def ttfb_s(path: str, seed: int, median: float, p99: float, cap: float) -> float:
    """A URL path -> its time to first byte: log-normal (median, p99), capped; a hash of (seed, path) is
    its quantile, so it is the same for every client and every run."""
    h = int.from_bytes(hashlib.blake2b(f"{seed}:{path}".encode(), digest_size=8).digest(), "big")
    u = (h + 0.5) / 2**64
    sigma = math.log(p99 / median) / Z99
    return min(cap, median * math.exp(sigma * statistics.NormalDist().inv_cdf(u)))


def build_urls(seed: int, n: int, n_images: int, hosts: int, port: int, missing: float,
               names: int = 0) -> list[dict]:
    """-> n rows {url, name_url, text, sample_id, path, expected_success}; deterministic for the arguments.
    `url` is on the loopback addresses (both tools); with names > 0, `name_url` is the same path on one of
    `names` made-up host names (ours, through download.connect_to: name_rules())."""
    import random

    rng = random.Random(seed)
    n_missing = round(n * missing)
    kinds = [False] * n_missing + [True] * (n - n_missing)
    rng.shuffle(kinds)
    rows = []
    for i, ok in enumerate(kinds):
        path = f"/img/{i}/{rng.randrange(n_images)}.jpg" if ok else f"/missing/{i}.jpg"
        name = rng.randrange(names) if names else rng.randrange(hosts)
        rows.append({
            "url": f"http://{address(name % hosts)}:{port}{path}",
            "name_url": f"http://{host_name(name)}:{port}{path}" if names else None,
            "text": f"synthetic photo {i}", "sample_id": i, "path": path, "expected_success": ok,
        })
    return rows


def host_name(k: int) -> str:
    return f"img{k}.site{k * 7919 % 1000}.test"  # made up (.test is reserved: never resolves)


def name_rules(names: int, hosts: int, port: int) -> list[str]:
    """-> download.connect_to rules NAME=127.0.x.y:PORT for build_urls' made-up names."""
    return [f"{host_name(k)}={address(k % hosts)}:{port}" for k in range(names)]


class WebServer(imageset.ChildServer):
    """`webserver.py serve` in a separate process; stopped on exit (its stdin closing also ends it)."""

    def __init__(self, pool_dir: Path, hosts: int, seed: int, median: float, p99: float, cap: float,
                 rate: float):
        super().__init__([str(Path(__file__).resolve()), "serve", str(pool_dir), "--hosts", str(hosts),
                          "--seed", str(seed), "--ttfb-median", str(median), "--ttfb-p99", str(p99),
                          "--ttfb-max", str(cap), "--rate", str(rate)], "web server")
        self.hosts = hosts
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _get(self, what: str, host: str = "127.0.0.1") -> bytes:
        with self._opener.open(f"http://{host}:{self.port}/_bench/{what}", timeout=30) as r:
            return r.read()

    def check(self, rows: list[dict]) -> None:
        """Every address answers, and one image and one 404 come back as they should, or the bench is
        meaningless. Raises otherwise."""
        for k in range(self.hosts):
            self._get("ping", address(k))
        image = next(r for r in rows if r["expected_success"])
        with self._opener.open(image["url"], timeout=60) as r:
            body = r.read()
        if body[:2] != b"\xff\xd8":
            raise RuntimeError(f"{image['url']}: not a JPEG")
        missing = next((r for r in rows if not r["expected_success"]), None)
        if missing:
            try:
                self._opener.open(missing["url"], timeout=60)
                raise RuntimeError(f"{missing['url']}: expected HTTP 404")
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise

    def reset(self) -> None:
        """Start the server's counters and timeline (t = 0) now."""
        self._get("reset")

    def stats(self) -> dict:
        return json.loads(self._get("stats"))


# ------------------------------------------------------------------------------------------- server


def _quantiles(values: list[float]) -> dict:
    if not values:
        return {}
    v = sorted(values)

    def q(p: float) -> float:
        return round(v[min(len(v) - 1, int(p * len(v)))], 4)

    return {"p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "max": round(v[-1], 4), "mean": round(sum(v) / len(v), 4)}


class Server:
    """The request handler and its counters (one event loop: no locks)."""

    def __init__(self, directory: Path, seed: int, median: float, p99: float, cap: float, rate: float):
        self.bodies = [(directory / name).read_bytes() for name in web_images(directory)]
        self.seed, self.median, self.p99, self.cap, self.rate = seed, median, p99, cap, rate
        self.in_flight = self.conns = 0
        self.per_host: dict[str, int] = {}
        self.reset()

    def reset(self) -> None:
        self.t0 = time.monotonic()
        self.samples: list[list] = []
        self.peak = self.in_flight  # peak in flight since the last sample
        self.peak_run = self.in_flight
        self.peak_host = 0
        self.served = self.bytes = self.conns_opened = self.aborted = self.requests = 0
        self.by_status: dict[int, int] = {}
        self.meant: list[float] = []
        self.first_byte: list[float] = []
        self.busy_s = 0.0  # request-seconds: the integral of in flight over time

    def stats(self) -> dict:
        lag = [s - m for s, m in zip(self.first_byte, self.meant)]
        return {
            "t": round(time.monotonic() - self.t0, 3), "sample_s": SAMPLE_S, "samples": self.samples,
            "requests": self.requests, "served": self.served, "bytes": self.bytes, "aborted": self.aborted,
            "by_status": self.by_status, "connections_opened": self.conns_opened, "peak_in_flight": self.peak_run,
            "peak_in_flight_one_host": self.peak_host, "request_seconds": round(self.busy_s, 1),
            "ttfb_meant": _quantiles(self.meant), "ttfb_served": _quantiles(self.first_byte),
            "ttfb_lag": _quantiles(lag),
        }

    async def sample(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_S)
            self.samples.append([round(time.monotonic() - self.t0, 2), self.in_flight, self.peak, self.conns,
                                 self.served, self.bytes])
            self.peak = self.in_flight

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conns += 1
        self.conns_opened += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                if len(parts) != 3:
                    return
                headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
                keep = parts[2] == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
                if int(headers.get("content-length", "0") or 0):
                    await reader.readexactly(int(headers["content-length"]))
                path = parts[1].split("?", 1)[0]
                if path.startswith("/_bench/"):
                    status, body, ctype = self.control(path)
                    await self.send(writer, status, body, ctype, keep)
                elif not await self.serve(writer, path, headers.get("host", "").rsplit(":", 1)[0], keep):
                    return
                if not keep:
                    return
        except ConnectionError:
            pass
        finally:
            self.conns -= 1
            writer.close()

    def control(self, path: str) -> tuple[int, bytes, str]:
        if path == "/_bench/reset":
            self.reset()
        elif path == "/_bench/stats":
            return 200, json.dumps(self.stats()).encode(), "application/json"
        elif path != "/_bench/ping":
            return 404, b"unknown control\n", "text/plain"
        return 200, b"ok\n", "text/plain"

    async def serve(self, writer: asyncio.StreamWriter, path: str, host: str, keep: bool) -> bool:
        """One counted request: wait its time to first byte, answer -> False if the client went away."""
        parts = path.split("/")
        if len(parts) == 4 and parts[1] == "img" and parts[3].endswith(".jpg"):
            status, body = 200, self.bodies[int(parts[3][:-4]) % len(self.bodies)]
        else:
            status, body = 404, b"not found\n"
        delay = ttfb_s(path, self.seed, self.median, self.p99, self.cap) if parts[1] in ("img", "missing") else 0.0
        started = time.monotonic()
        self.requests += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.peak_run = max(self.peak_run, self.in_flight)
        self.per_host[host] = self.per_host.get(host, 0) + 1
        self.peak_host = max(self.peak_host, self.per_host[host])
        try:
            await asyncio.sleep(delay)
            self.meant.append(delay)
            self.first_byte.append(time.monotonic() - started)
            await self.send(writer, status, body, "image/jpeg" if status == 200 else "text/plain", keep)
            self.served += 1
            self.bytes += len(body)
            self.by_status[status] = self.by_status.get(status, 0) + 1
            return True
        except ConnectionError:
            self.aborted += 1
            return False
        finally:
            self.in_flight -= 1
            self.per_host[host] -= 1
            self.busy_s += time.monotonic() - started

    async def send(self, writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str, keep: bool) -> None:
        reason = {200: "OK", 404: "Not Found"}[status]
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                     f"{'' if keep else 'Connection: close' + chr(13) + chr(10)}\r\n".encode())
        if not self.rate or len(body) < 4096:
            writer.write(body)
            await writer.drain()
            return
        # the rate cap: slices of 1/20 s of the rate, each sent when the link would have carried it
        step, started = max(1024, int(self.rate / 20)), time.monotonic()
        for offset in range(0, len(body), step):
            writer.write(body[offset:offset + step])
            await writer.drain()
            wait = started + (offset + step) / self.rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)


async def _serve(server: Server, hosts: list[str]) -> None:
    for _attempt in range(20):  # the first host picks a free port; the others must get the same one
        listening = [await asyncio.start_server(server.handle, hosts[0], 0, backlog=4096)]
        port = listening[0].sockets[0].getsockname()[1]
        try:
            if hosts[1:]:  # one call binds them all, or none (it closes what it bound before failing)
                listening.append(await asyncio.start_server(server.handle, hosts[1:], port, backlog=4096))
            break
        except OSError:
            listening[0].close()
            await listening[0].wait_closed()
    else:
        raise RuntimeError("no port free on every loopback address")
    _sampler = asyncio.create_task(server.sample())  # this frame holds it and the servers until the end
    print(port, flush=True)
    await asyncio.Event().wait()  # until the process ends


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the pool's web-sized JPEGs on loopback addresses, slowly")
    serve.add_argument("pool_dir", type=Path)
    serve.add_argument("--hosts", type=int, default=254, help="listen on N loopback addresses from 127.0.0.1")
    serve.add_argument("--seed", type=int, default=0, help="seed of the per-URL waits")
    serve.add_argument("--ttfb-median", type=float, default=0.4, help="median time to first byte, s")
    serve.add_argument("--ttfb-p99", type=float, default=2.5, help="99th percentile of the time to first byte, s")
    serve.add_argument("--ttfb-max", type=float, default=10.0, help="cap of the time to first byte, s")
    serve.add_argument("--rate", type=float, default=0.0, help="bytes/s per connection (0: no cap)")
    args = parser.parse_args()
    if not 1 <= args.hosts <= 254 * 64:
        parser.error("--hosts must be 1 .. 16256")
    if not 0 < args.ttfb_median < args.ttfb_p99:
        parser.error("need 0 < --ttfb-median < --ttfb-p99")
    server = Server(args.pool_dir, args.seed, args.ttfb_median, args.ttfb_p99, args.ttfb_max, args.rate)
    if not server.bodies:
        parser.error(f"no JPEG of {MIN_BYTES} - {MAX_BYTES} bytes in {args.pool_dir}")
    threading.Thread(target=imageset._exit_when_stdin_closes, daemon=True).start()
    asyncio.run(_serve(server, [address(k) for k in range(args.hosts)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
