"""`laion-spark serve` under load on loopback (issue 27): many clients at once, sending a mix of good, huge,
malformed and cross-origin requests and image bombs. The service stays up, answers every good request
right (the exact ranking) with a p99 under P99_SECONDS, refuses every other one with its 4xx and a
message, and its resident memory (sampled from /proc while the load runs) grows by less than RSS_GROWTH.

The server is the CLI's own process, stopped by SIGTERM; the clients are http.client and raw sockets
(what no client library sends: a head announcing 100 MB, a request line that is no HTTP). Small bounds
(serve.max_body_bytes=256 KiB, 2 threads) keep the test to seconds; bench/serve_load.py runs the same
mix longer and prints p50/p99 and RSS.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from tests import processes
from tests.processes import RssSampler
from tests.test_serve_guard import D, make_world, png_of

REPO = Path(__file__).resolve().parents[1]
P99_SECONDS = 2.0  # the stated bound for a good request under this load, on a busy 2-core machine
RSS_GROWTH = 100 * 2**20  # bodies held <= max_requests x max_body_bytes = 8 MiB, images over the bound undecoded
LIMITS = ("serve.threads=2", "serve.max_requests=32", f"serve.max_body_bytes={256 * 1024}",
          "serve.max_query_pixels=4000000")
EXPECTED = {"knn": 200, "indices": 200, "thumb": 200, "huge_announced": 413, "huge_sent": 413,
            "bad_json": 400, "bad_http": 400, "cross_origin": 403, "bomb": 413, "no_length": 411}


def serve_process(world: dict, *extra: str):
    """-> tests.processes.serve_process over the world's index and images."""
    root = world["root"]
    return processes.serve_process(f"input={root / 'index'}", f"images={root / 'images'}",
                                   f"search.cache_dir={root / 'cache'}", *extra)


# ------------------------------------------------------------------ the requests of the mix
class Mix:
    """The requests of the mix for one world and server limits; each kind -> (status, message, body)."""

    def __init__(self, world: dict, max_body_bytes: int, rows: int = 20):
        self.world = world
        self.max_body_bytes = max_body_bytes
        flat = faiss.IndexIDMap(faiss.IndexFlatIP(D))
        flat.add_with_ids(world["vectors"], world["ids"])
        self.rows = list(range(rows))
        self.want = {r: flat.search(world["vectors"][r][None, :], 10)[1][0].tolist() for r in self.rows}
        self.bomb = json.dumps({"image": base64.b64encode(png_of(8000, 8000)).decode()}).encode()  # 64 Mpx
        assert len(self.bomb) < max_body_bytes  # a body the server reads: the pixels are what it must refuse
        self.kinds = list(EXPECTED)

    def ask(self, port: int, kind: str, n: int) -> tuple[int, str, object]:
        world = self.world
        if kind == "knn":
            r = self.rows[n % len(self.rows)]
            body = json.dumps({"embedding_input": world["vectors"][r].tolist(), "num_images": 10,
                               "deduplicate": False, "unique_urls": False}).encode()
            status, message, got = ask_http(port, "POST", "/knn-service", body, {"Content-Type": "application/json"})
            return status, message, got if status != 200 else [x["id"] for x in got] == self.want[r]
        if kind == "indices":
            status, message, got = ask_http(port, "GET", "/indices-list")
            return status, message, got == ["image"]
        if kind == "thumb":
            sid = int(world["ids"][n % len(world["ids"])])
            status, message, got = ask_http(port, "GET", f"/thumb/image/{sid}")
            return status, message, got == world["png"][sid]
        if kind == "huge_announced":  # a head announcing 100 MB, and no body (the server must not wait for it)
            return _raw(port, b"POST /knn-service HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                              b"Content-Length: 100000000\r\n\r\n")
        if kind == "huge_sent":  # a body half again over the limit, sent whole
            return ask_http(port, "POST", "/knn-service", b"[" + b"0," * int(0.75 * self.max_body_bytes) + b"0]",
                         {"Content-Type": "application/json"})
        if kind == "bad_json":
            return ask_http(port, "POST", "/knn-service", b'{"text": "a red', {"Content-Type": "application/json"})
        if kind == "bad_http":
            return _raw(port, b"THIS IS NOT HTTP\r\n\r\n")
        if kind == "cross_origin":  # what any page can make a browser send: a simple request, text/plain
            body = json.dumps({"embedding_input": world["vectors"][0].tolist()}).encode()
            return ask_http(port, "POST", "/knn-service", body,
                         {"Content-Type": "text/plain;charset=UTF-8", "Origin": "http://evil.example"})
        if kind == "bomb":
            return ask_http(port, "POST", "/knn-service", self.bomb, {"Content-Type": "application/json"})
        if kind == "no_length":
            return _raw(port, b"POST /knn-service HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        raise ValueError(kind)


def _message(status: int, kind: str, payload: bytes) -> tuple[str, object]:
    """A response body -> (the refusal's message, the decoded body)."""
    if kind.startswith("application/json"):
        data = json.loads(payload)
        return (data.get("error", "") if isinstance(data, dict) and status >= 400 else ""), data
    return payload.decode("utf-8", "replace").strip() if status >= 400 else "", payload


def ask_http(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        message, data = _message(resp.status, resp.getheader("Content-Type", ""), resp.read())
        return resp.status, message, data
    finally:
        conn.close()


def _raw(port: int, data: bytes):
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(data)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        message, body = _message(resp.status, resp.getheader("Content-Type", ""), resp.read())
        return resp.status, message, body


def run_load(port: int, mix: Mix, clients: int, rounds: int) -> list[tuple[str, int, str, object, float]]:
    """clients threads, each asking rounds requests of the mix's kinds in turn (each client starting at
    another kind) -> per request (kind, status, message, body or check, seconds)."""
    results: list = []
    lock = threading.Lock()

    def client(c: int) -> None:
        mine = []
        for n in range(rounds):
            kind = mix.kinds[(c + n) % len(mix.kinds)]
            started = time.perf_counter()
            try:
                status, message, got = mix.ask(port, kind, c * rounds + n)
            except OSError as exc:  # a dropped or reset connection: what the service must never do
                status, message, got = 0, f"{type(exc).__name__}: {exc}", None
            mine.append((kind, status, message, got, time.perf_counter() - started))
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# ------------------------------------------------------------------ the test
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("serve_load"))


def test_many_clients_with_a_hostile_mix_get_answers_refusals_and_bounded_memory(world):
    mix = Mix(world, 256 * 1024)
    with serve_process(world, *LIMITS) as (proc, port):
        for kind in mix.kinds:  # each kind once alone: the server's steady state, before the load
            mix.ask(port, kind, 0)
        with RssSampler(proc.pid, every=0.01) as rss:
            before = rss.first(proc.pid)
            started = time.perf_counter()
            results = run_load(port, mix, clients=16, rounds=30)
            took = time.perf_counter() - started
        assert proc.poll() is None  # still up
        assert ask_http(port, "GET", "/indices-list")[:2] == (200, "")
    wrong = [(k, s, m) for k, s, m, _, _ in results if s != EXPECTED[k]]
    assert not wrong, wrong[:10]
    good = [r for r in results if EXPECTED[r[0]] == 200]
    assert all(got is True for _, _, _, got, _ in good)  # the exact ranking, the stored bytes
    assert all(m for k, s, m, _, _ in results if s >= 400), "a refusal without a message"
    latencies = [r[4] for r in good]
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    growth = rss.peak(proc.pid) - before
    print(f"{len(results)} requests in {took:.2f} s; good p50 {1000 * p50:.0f} ms, p99 {1000 * p99:.0f} ms; "
          f"RSS {before / 2**20:.0f} MiB, peak +{growth / 2**20:.1f} MiB over {rss.rounds} samples")
    assert p99 < P99_SECONDS
    assert growth < RSS_GROWTH
    # the server's own count of what it refused is the clients' (the summary SIGTERM printed)
    cross = sum(k == "cross_origin" for k, *_ in results) + 1  # + the one before the load
    assert f"/knn-service 403: {cross}" in proc.summary, proc.summary
