"""Benchmark: `laion-spark download` against img2dataset 1.47 when the web is slow, not the CPU (issue 25).

INPUT  -> bench/imageset.py's cached pool, of which the JPEGs of 30 - 150 kB are served by
          bench/webserver.py (a separate asyncio process on 127.0.0.1 .. 127.0.0.N, one port): each URL
          waits a time to first byte drawn from a log-normal (median 0.4 s, p99 2.5 s, capped at 10 s;
          fixed per URL path, so both tools wait the same), ~4% answer HTTP 404 after their wait, an
          optional per-connection rate cap (--rate bytes/s); --urls sizes (e.g. 4000,16000), each run
          --repeat times per tool; IMG2DATASET=path of an img2dataset 1.47 binary for the baseline
OUTPUT -> per run: successes against the expected (every non-404 URL), images/s on wall time (and on
          the tool's own time), the peak RSS of every process of the run's tree of 20 MiB or more (driver
          JVM, each Python worker, each img2dataset process; all in results.json) and of the whole tree,
          and the server's view, an independent measurement: requests in flight over time (one line per
          --step s: mean and peak in flight, responses/s, open connections), connections opened, the
          time to first byte meant and served (the server's own lag apart); a table at the end; the
          ratio ours / img2dataset's best images/s on wall time per size (target 1.5x, with at least
          its successes)

Run: `IMG2DATASET=build/img2dataset-venv/bin/img2dataset SPARK_LOCAL_IP=127.0.0.1 .venv/bin/python
     bench/download_web.py --urls 4000,16000` (ours with the stage defaults; img2dataset with 2 processes
     x 64 threads and with its defaults, 1 process x 256 threads); settings of ours to compare, one
     `--ours` per run of ours: `... --ours --ours download.threads=64 download.adaptive_threads=false`;
     a quick smoke test: `... --urls 300 --ttfb-median 0.1 --ttfb-p99 0.6`; made-up host names for ours
     (download.connect_to NAME=127.0.0.K:PORT; img2dataset keeps the addresses): `--names 2000`

Memory: bench/measure.py polls /proc for the run's process tree every 0.2 s: each process's peak RSS and
the peak of the summed RSS (PSS every 1 s). Ours runs exactly as bench/download.py runs it (its
run_ours: the whole CLI, JVM start included in the wall time, 256 px border, no retries), img2dataset
likewise (its run_img2dataset: webdataset output, multiprocessing), both with --timeout s of client
time-out (ours: connect and read, deadline 3x).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import download  # bench/ is not a package: imported from its folder
import imageset
import measure
import webserver

OUT = imageset.OUT / "download_web"
I2D_DEFAULTS = (1, 256, 10_000)  # img2dataset 1.47's processes_count, thread_count, number_sample_per_shard
TARGET = 1.5


# -------------------------------------------------------------------------------------------- runs


def i2d_setting(spec: str, n: int) -> tuple[int, int, int, str]:
    """"2x64" (processes x threads; one shard per process), "2x64:5000" (shard size) or "default" ->
    (processes, threads, shard, label)."""
    if spec == "default":
        p, t, s = I2D_DEFAULTS
        return p, t, s, f"its defaults: {p} process x {t} threads, shard {s:,}"
    left, _, shard = spec.partition(":")
    p, t = (int(x) for x in left.split("x"))
    s = int(shard) if shard else math.ceil(n / p)
    return p, t, s, f"{p} processes x {t} threads, shard {s:,}"


def run_ours(args, input_path: Path, server: webserver.WebServer, expected: set[str], overrides: list[str],
             config: Path | None) -> dict:
    ns = argparse.Namespace(timeout=args.timeout, threads=0, partitions=0,
                            set=(["--config", str(config)] if config else []) + overrides)
    server.reset()
    r = download.run_ours(ns, input_path, server, expected)
    names = f"{args.names:,} host names, " if config else ""
    return {**r, "setting": names + (" ".join(overrides) or "stage defaults"), "server": server.stats()}


def run_img2dataset(binary: str, args, input_path: Path, server: webserver.WebServer, expected: set[str],
                    spec: str, n: int) -> dict:
    processes, threads, shard, label = i2d_setting(spec, n)
    ns = argparse.Namespace(timeout=args.timeout, img2dataset_processes=processes, keep=args.keep)
    server.reset()
    r = download.run_img2dataset(binary, ns, input_path, server, expected, threads, shard)
    return {**r, "setting": label, "server": server.stats()}


# ---------------------------------------------------------------------------------------- printing


def timeline(stats: dict, step: float) -> list[str]:
    """The server's samples -> one line per `step` s: mean and peak requests in flight, responses/s, open
    connections; the quiet start (the tool starting) in one line, the quiet end after the last response
    left out."""
    samples = stats.get("samples", [])
    busy = [i for i, s in enumerate(samples) if s[1] or s[2] or s[4] != (samples[i - 1][4] if i else 0)]
    if not busy:
        return ["    (no request in flight at any sample)"]
    buckets: dict[int, list] = {}
    for s in samples[: busy[-1] + 2]:
        buckets.setdefault(int(s[0] // step), []).append(s)
    lines = ["      t s   in flight  (peak)   responses/s   connections"]
    served_before, quiet = 0, True
    for b, bucket in sorted(buckets.items()):
        quiet = quiet and not any(s[1] or s[2] or s[4] for s in bucket)  # s[4]: responses so far
        if quiet:
            continue
        if len(lines) == 1 and b:
            lines.append(f"    0 - {b * step:.0f} s: nothing in flight (the tool starting)")
        mean = sum(s[1] for s in bucket) / len(bucket)
        rate = (bucket[-1][4] - served_before) / step
        served_before = bucket[-1][4]
        lines.append(f"    {b * step:5.0f}   {mean:9.0f}  ({max(s[2] for s in bucket):5})   {rate:11.0f}   "
                     f"{bucket[-1][3]:11}")
    return lines


def busy_window(stats: dict) -> float:
    """Seconds from the first sample with a request in flight to the last."""
    busy = [s[0] for s in stats.get("samples", []) if s[1] or s[2]]
    return busy[-1] - busy[0] + stats["sample_s"] if busy else 0.0


def show(r: dict, expected: int, step: float) -> None:
    if r.get("unavailable"):
        return
    download.show(r, expected)
    verdict = ("all expected, nothing else" if r["successes"] == expected and not r.get("unexpected")
               else f"NOT the expected: {r['successes']:,} successes of {expected:,}, "
                    f"{r.get('unexpected', 0)} on 404 URLs")
    biggest = r.get("peak_rss_mib_per_process", [])
    print(f"  {verdict}; peak RSS per process (largest {biggest[0]['mib'] if biggest else 0:,} MiB; "
          f"the tree {r.get('peak_rss_mib', 0):,.0f} MiB):")
    print(measure.per_process_text(r))
    s = r.get("server", {})
    if not s:
        return
    window = busy_window(s)
    ttfb, served, lag = s["ttfb_meant"], s["ttfb_served"], s["ttfb_lag"]
    print(f"  the server's view: {s['requests']:,} requests ({s['by_status']}, {s['aborted']} abandoned by the "
          f"client), {s['connections_opened']:,} connections opened; in flight: peak {s['peak_in_flight']}, "
          f"mean {s['request_seconds'] / r['wall_s']:.0f} over the wall time and "
          f"{s['request_seconds'] / window if window else 0:.0f} over the {window:.0f} s with requests; "
          f"peak on one host {s['peak_in_flight_one_host']}")
    if ttfb:
        print(f"  time to first byte, meant p50 {ttfb['p50']:.2f} / p99 {ttfb['p99']:.2f} / max {ttfb['max']:.2f} s, "
              f"served p50 {served['p50']:.2f} / p99 {served['p99']:.2f} / max {served['max']:.2f} s "
              f"(the server's lag p99 {lag['p99'] * 1e3:.0f} ms, max {lag['max'] * 1e3:.0f} ms); fetches in "
              f"flight over time (t = 0 at the tool's start):")
    print("\n".join(timeline(s, step)), flush=True)


def table(results: list[dict]) -> str:
    rows = ["| run | successes | images/s (wall) | images/s (own) | wall s | in flight mean / peak (server) "
            "| connections | TTFB served p50 / p99 s | peak RSS MiB: tree / largest process | CPU s |",
            "|" + " --- |" * 10]
    label_size = len({r["urls"] for r in results}) > 1
    label_run = any(r["run"] > 1 for r in results)
    for r in results:
        name = download.run_name(r, label_size, label_run)
        if r.get("unavailable"):
            rows.append(f"| {name} | {r['unavailable']} |" + " - |" * 8)
            continue
        s = r.get("server") or {}
        window = busy_window(s) if s else 0
        own = f"{r['successes'] / r['own_s']:.1f}" if r.get("own_s") else "-"
        biggest = r.get("peak_rss_mib_per_process") or [{"mib": 0}]
        rows.append(
            f"| {name} | {r['successes']:,} / {r['expected']:,} | {r['successes'] / r['wall_s']:.1f} | {own} | "
            f"{r['wall_s']:.1f} | {s.get('request_seconds', 0) / window if window else 0:.0f} / "
            f"{s.get('peak_in_flight', 0)} | {s.get('connections_opened', 0):,} | "
            f"{s.get('ttfb_served', {}).get('p50', 0):.2f} / {s.get('ttfb_served', {}).get('p99', 0):.2f} | "
            f"{r.get('peak_rss_mib', 0):,.0f} / {biggest[0]['mib']:,} | {r.get('cpu_s', 0):.1f} |")
    return "\n".join(rows)


def ratios(results: list[dict]) -> list[str]:
    """Per size and setting of ours: its best images/s on wall time / img2dataset's best (any setting)."""
    summary = download.summarise(results)
    lines = []
    for n in sorted({r["urls"] for r in results}):
        peers = [(setting, by_size[n]) for (tool, setting), by_size in summary.items()
                 if tool == "img2dataset" and n in by_size]
        if not peers:
            continue
        setting_i2d, peer = max(peers, key=lambda sb: sb[1]["wall_per_s"])
        for (tool, setting), by_size in summary.items():
            if tool != "ours" or n not in by_size:
                continue
            ours = by_size[n]
            ratio = ours["wall_per_s"] / peer["wall_per_s"]
            met = ratio >= TARGET and ours["successes"] >= peer["successes"]
            lines.append(
                f"{n:,} URLs: ours ({setting}) {ours['wall_per_s']:.1f} images/s on wall time / img2dataset's best "
                f"({setting_i2d}) {peer['wall_per_s']:.1f} = {ratio:.2f}x (target {TARGET}x with at least its "
                f"successes: {'met' if met else 'NOT met'}); successes {ours['successes']:,} vs {peer['successes']:,}")
    return lines


# -------------------------------------------------------------------------------------------- main


def write_input(rows: list[dict], column: str, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"url": [r[column] for r in rows], "text": [r["text"] for r in rows],
                             "sample_id": pa.array([r["sample_id"] for r in rows], pa.int64())}), path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--urls", default="4000,16000", help="URLs in the input table; comma-separated sizes")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each tool and setting per size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pool, the URL list and the waits")
    parser.add_argument("--pool", type=int, default=200, help="images in bench/imageset.py's pool (cached)")
    parser.add_argument("--hosts", type=int, default=254,
                        help="loopback addresses the URLs are spread over (127.0.0.1 ..., then 127.0.1.1 ...)")
    parser.add_argument("--names", type=int, default=0,
                        help="ours only: spread its URLs over N made-up host names instead, mapped to the "
                             "addresses by download.connect_to (0: ours uses the addresses too)")
    parser.add_argument("--missing", type=float, default=0.04, help="share of URLs answering HTTP 404")
    parser.add_argument("--ttfb-median", type=float, default=0.4, help="median time to first byte, s")
    parser.add_argument("--ttfb-p99", type=float, default=2.5, help="99th percentile time to first byte, s")
    parser.add_argument("--ttfb-max", type=float, default=10.0, help="cap of the time to first byte, s")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="bytes/s per connection, a slow link (0: no cap; e.g. 200000 = 1.6 Mbit/s)")
    parser.add_argument("--timeout", type=float, default=20.0,
                        help="client time-out, both tools (ours: connect and read; deadline 3x); keep it above "
                             "--ttfb-max, or slow URLs fail")
    parser.add_argument("--ours", action="append", nargs="*", metavar="KEY=VALUE",
                        help="one run of ours per --ours, with these overrides (none: the stage defaults), e.g. "
                             "--ours --ours download.threads=64; default: one run with the stage defaults")
    parser.add_argument("--img2dataset", default="2x64,default",
                        help="img2dataset settings, comma-separated: PxT (processes x threads, one shard per "
                             "process), PxT:SHARD, default (1 x 256, shard 10,000)")
    parser.add_argument("--only", choices=("ours", "img2dataset", "both"), default="both")
    parser.add_argument("--step", type=float, default=2.0, help="seconds per line of the in-flight timeline")
    parser.add_argument("--keep", action="store_true", help="keep img2dataset's output folders")
    args = parser.parse_args()
    url_counts = measure.sizes(args.urls)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.timeout <= args.ttfb_max:
        print(f"warning: --timeout {args.timeout} <= --ttfb-max {args.ttfb_max}: the slowest URLs may time out")
    variants = args.ours or [[]]
    binary = os.environ.get("IMG2DATASET")
    if args.only == "img2dataset" and not binary:
        parser.error("--only img2dataset needs IMG2DATASET=path of the img2dataset binary")
    specs = [s.strip() for s in args.img2dataset.split(",") if s.strip()]
    for spec in specs:
        try:
            i2d_setting(spec, 1)
        except ValueError:
            parser.error(f"bad --img2dataset setting {spec!r}: PxT, PxT:SHARD or default")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

    started = time.perf_counter()
    pool_dir, _, fresh = imageset.load_pool(args.seed, args.pool)
    images = webserver.web_images(pool_dir)
    sizes = [(pool_dir / name).stat().st_size for name in images]
    print(f"images served: the pool's {len(images)} JPEGs of 30 - 150 kB (mean "
          f"{sum(sizes) / len(sizes) / 1e3:.0f} kB), {pool_dir} ({'generated' if fresh else 'cached'})")
    OUT.mkdir(parents=True, exist_ok=True)
    download.OUT = OUT  # download.run_ours / run_img2dataset write under download.OUT: this bench's own folder

    results: list[dict] = []
    server = webserver.WebServer(pool_dir, args.hosts, args.seed, args.ttfb_median, args.ttfb_p99, args.ttfb_max,
                                 args.rate)
    try:
        print(f"server: pid {server.pid}, {args.hosts} addresses {webserver.address(0)} .. "
              f"{webserver.address(args.hosts - 1)} port {server.port}; time to first byte log-normal, median "
              f"{args.ttfb_median} s, p99 {args.ttfb_p99} s, capped at {args.ttfb_max} s; "
              + (f"{args.rate / 1e3:.0f} kB/s per connection" if args.rate else "no rate cap"))
        for n in url_counts:
            rows = webserver.build_urls(args.seed, n, len(images), args.hosts, server.port, args.missing,
                                        args.names)
            server.check(rows)
            input_path = OUT / "input.parquet"
            write_input(rows, "url", input_path)
            expected = {r["url"] for r in rows if r["expected_success"]}
            ours_input, ours_expected, config = input_path, expected, None
            if args.names:
                ours_input = OUT / "input-names.parquet"
                write_input(rows, "name_url", ours_input)
                ours_expected = {r["name_url"] for r in rows if r["expected_success"]}
                config = OUT / "connect_to.yaml"
                rules = webserver.name_rules(args.names, args.hosts, server.port)
                config.write_text("download:\n  connect_to:\n" + "".join(f"    - {x}\n" for x in rules))
            waits = sorted(webserver.ttfb_s(r["path"], args.seed, args.ttfb_median, args.ttfb_p99, args.ttfb_max)
                           for r in rows)
            total = sum(waits)
            print(f"\ninput: {input_path}, {n:,} URLs over {args.hosts} addresses"
                  + (f" ({args.names:,} host names for ours)" if args.names else "")
                  + f", {n - len(expected):,} HTTP 404; expected successes {len(expected):,}. Time to first byte "
                  f"of these URLs: mean {total / n:.2f} s, p50 {waits[n // 2]:.2f}, p99 {waits[int(n * 0.99)]:.2f}, "
                  f"max {waits[-1]:.2f}; {total:,.0f} s of waiting in all: at 128 in flight at least "
                  f"{total / 128:.1f} s, at 256 {total / 256:.1f} s, at 1,024 {total / 1024:.1f} s")

            def record(r: dict, n: int = n, expected: set = expected, k: int = 0) -> None:
                results.append({**r, "urls": n, "expected": len(expected), "run": k})
                show(results[-1], len(expected), args.step)

            for k in range(1, args.repeat + 1):  # alternating tools: a slow spell of the machine hits both
                if args.repeat > 1:
                    print(f"\n-- {n:,} URLs, run {k} of {args.repeat} --")
                if args.only in ("ours", "both"):
                    for overrides in variants:
                        record(run_ours(args, ours_input, server, ours_expected, overrides, config), k=k)
                if args.only in ("img2dataset", "both"):
                    if not binary:
                        if k == 1:
                            print("\nimg2dataset: skipped (set IMG2DATASET=path of the img2dataset binary)")
                        continue
                    for spec in specs:
                        record(run_img2dataset(binary, args, input_path, server, expected, spec, n), k=k)
    finally:
        server.stop()

    print(f"\n{table(results)}\n")
    for line in ratios(results):
        print(line)
    (OUT / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\n{time.perf_counter() - started:.0f} s in all; figures in {OUT / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
