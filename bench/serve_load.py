"""`laion-spark serve` under a hostile load on loopback: many clients at once, each asking in turn good
requests (an embedding search checked against the exact ranking, /indices-list, a thumbnail) and bad ones
(a head announcing 100 MB, a body over serve.max_body_bytes sent whole, JSON cut short, a request line
that is no HTTP, a cross-origin text/plain POST, a 64 Mpx PNG bomb of 60 KB, a POST without a length).

    .venv/bin/python bench/serve_load.py [--clients 64] [--rounds 50] [--threads 4] [--max-requests 16]

INPUT  -> sizes and serve.* bounds on the command line; a 300-row index and images table built here
          (tests/test_serve_guard.py's world), served by the CLI's own process
OUTPUT -> per kind: requests, statuses; good requests' p50 / p99 / max latency and how many were wrong;
          the server's RSS before the load and its peak during it (sampled every 10 ms from /proc); and
          whether the server was still up after. tests/test_serve_load.py runs the same mix, smaller,
          with its bounds asserted.

With more clients than serve.max_requests, some good requests are refused with 503 (Retry-After): that is
the bound at work, and counted here apart from the wrong answers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.processes import RssSampler
from tests.test_serve_guard import make_world
from tests.test_serve_load import EXPECTED, Mix, ask_http, percentile, run_load, serve_process


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=50, help="requests per client")
    ap.add_argument("--threads", type=int, default=4, help="serve.threads")
    ap.add_argument("--max-requests", type=int, default=16, help="serve.max_requests")
    ap.add_argument("--max-body-bytes", type=int, default=256 * 1024, help="serve.max_body_bytes")
    ap.add_argument("--max-query-pixels", type=int, default=4_000_000, help="serve.max_query_pixels")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        world = make_world(Path(tmp))
        mix = Mix(world, args.max_body_bytes)
        limits = (f"serve.threads={args.threads}", f"serve.max_requests={args.max_requests}",
                  f"serve.max_body_bytes={args.max_body_bytes}", f"serve.max_query_pixels={args.max_query_pixels}")
        with serve_process(world, *limits) as (proc, port):
            for kind in mix.kinds:
                mix.ask(port, kind, 0)
            with RssSampler(proc.pid, every=0.01) as rss:
                before = rss.first(proc.pid)
                started = time.perf_counter()
                results = run_load(port, mix, args.clients, args.rounds)
                took = time.perf_counter() - started
            up = proc.poll() is None and ask_http(port, "GET", "/indices-list")[0] == 200
    print(f"serve: {args.clients} clients x {args.rounds} requests = {len(results)} in {took:.2f} s "
          f"({len(results) / took:.0f} requests/s); serve.threads={args.threads}, "
          f"serve.max_requests={args.max_requests}, serve.max_body_bytes={args.max_body_bytes}")
    statuses = Counter((kind, status) for kind, status, *_ in results)
    for kind in EXPECTED:
        shown = ", ".join(f"{status}: {n}" for (k, status), n in sorted(statuses.items()) if k == kind)
        print(f"  {kind:15s} expected {EXPECTED[kind]}  got {shown}")
    good = [r for r in results if EXPECTED[r[0]] == 200 and r[1] == 200]
    latencies = [r[4] for r in good]
    wrong = sum(r[3] is not True for r in good)
    refused = sum(1 for r in results if EXPECTED[r[0]] == 200 and r[1] == 503)
    print(f"  good answered: {len(good)} (wrong: {wrong}; refused 503 when full: {refused}); latency "
          f"p50 {1000 * percentile(latencies, 50):.1f} ms, p99 {1000 * percentile(latencies, 99):.1f} ms, "
          f"max {1000 * max(latencies, default=0):.1f} ms")
    unexpected = sum(1 for kind, status, *_ in results if status not in (EXPECTED[kind], 503))
    print(f"  other answers than expected (or 503): {unexpected}; bad requests without a message: "
          f"{sum(1 for _, s, m, *_ in results if s >= 400 and not m)}")
    print(f"  server RSS: {before / 2**20:.0f} MiB before, peak {rss.peak(proc.pid) / 2**20:.0f} MiB "
          f"(+{(rss.peak(proc.pid) - before) / 2**20:.1f} MiB, {rss.rounds} samples); up after: {up}")


if __name__ == "__main__":
    main()
