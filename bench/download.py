"""Benchmark: `laion-spark download` against img2dataset on one generated image set, served from loopback.

INPUT  -> a seeded synthetic image set (bench/imageset.py: a pool of JPEG/PNG/WebP images, cached under
          bench/out/, reused under --urls URLs spread over --hosts loopback hosts, with ~5% HTTP
          404/500, a few time-outs and a few corrupt bodies), served by a separate server process
          on 127.0.0.1 .. 127.0.0.N; --urls may list several sizes (e.g. 5000,20000: 1x and 4x), each
          run --repeat times per tool; IMG2DATASET=path of an img2dataset binary for the baseline
OUTPUT -> printed figures per run: successes (expected: the image URLs), images/s on wall time and
          on the tool's own download time, peak memory and CPU time of the run's whole process tree,
          the server's CPU time; a table at the end; per tool and size, from the best run: images/s,
          cost per URL (ms of wall time and of own time, CPU ms), the start-up (wall - own time) apart,
          peak RSS/PSS; the ratio ours / img2dataset per size; and per tool, whether the cost per URL
          on own time is flat (within 20%) or falling from the smallest size to the largest

Run: `SPARK_LOCAL_IP=127.0.0.1 .venv/bin/python bench/download.py [--urls 5000] [--repeat 1] [--only both]`
     with `IMG2DATASET=build/img2dataset-venv/bin/img2dataset` for the baseline (see bench/README.md);
     1x and 4x, best of two: `... bench/download.py --urls 5000,20000 --repeat 2`

Memory: bench/measure.py polls /proc for the process tree under the tool's process (driver JVM,
Python workers; img2dataset's processes): the peak of the summed RSS every 0.2 s and of the summed
PSS every 1 s, with the tree's CPU seconds and the sampler's own CPU cost.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imageset  # bench/ is not a package: imported from its folder
import measure
from measure import run_measured, tail

REPO = Path(__file__).resolve().parents[1]
OUT = imageset.OUT / "download"
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


# ----------------------------------------------------------------------------------------- server


class Server(imageset.ChildServer):
    """bench/imageset.py serve in a separate process; stopped on exit (its stdin closing also ends it)."""

    def __init__(self, pool_dir: Path, hosts: int, slow_s: float):
        super().__init__([str(Path(imageset.__file__)), "serve", str(pool_dir), "--hosts", str(hosts),
                          "--slow-s", str(slow_s)], "image server")


def check_server(rows: list[dict]) -> None:
    """One image per host must come back (urllib without proxies), or the benchmark is meaningless."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    seen = set()
    for row in rows:
        host = row["url"].split("/")[2]
        if row["expected_success"] and host not in seen:
            with opener.open(row["url"], timeout=5) as r:
                r.read()
            seen.add(host)


# ------------------------------------------------------------------------------------------- runs


def base_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.0/8,localhost"
    return env


def run_ours(args, input_path: Path, server: Server, expected: set[str]) -> dict:
    cli = Path(sys.executable).parent / "laion-spark"
    if not cli.exists():
        cli = Path(shutil.which("laion-spark") or "laion-spark")
    out = OUT / "ours"
    shutil.rmtree(out, ignore_errors=True)  # a failed run must not leave an earlier _summary.json to read
    t = args.timeout
    cmd = [str(cli), "download", f"input={input_path}", f"output={out}", "mode=overwrite",
           "download.allowed_networks=127.0.0.0/8", "download.image_size=256", "download.resize_mode=border",
           f"download.connect_timeout_s={t}", f"download.read_timeout_s={t}", f"download.deadline_s={3 * t}",
           "download.retries=0"]
    extras = [f"download.threads={args.threads}"] if args.threads else []
    extras += [f"download.partitions={args.partitions}"] if args.partitions else []
    extras += args.set
    cmd += extras
    env = base_env()
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    env["PYSPARK_PYTHON"] = env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    try:
        from laion_spark.session import java_home

        if java_home():
            env["JAVA_HOME"] = java_home()
    except ImportError:
        pass
    print(f"\nours: {' '.join(cmd[1:])}", flush=True)
    log = OUT / "ours.log"
    m = run_measured(cmd, env, log, server.pid)
    result = {"tool": "ours", "setting": " ".join(extras) or "stage defaults", **m}
    summary_path = out / "_summary.json"
    if m["rc"] != 0 or not summary_path.is_file():
        text = tail(log)
        why = "unavailable (the download stage is missing)" if "No module named" in text else f"failed, rc {m['rc']}"
        print(f"ours: {why}; last lines of {log}:\n{text}")
        return {**result, "unavailable": why}
    summary = json.loads(summary_path.read_text())
    import pyarrow.parquet as pq

    table = pq.read_table(out, columns=["url", "status"]).to_pandas()
    ok = table[table["status"] == "success"]
    result.update(
        successes=len(ok), unexpected=int((~ok["url"].isin(expected)).sum()), rows=len(table),
        statuses=table["status"].value_counts().to_dict(), own_s=summary.get("seconds"),
        download_s=summary.get("download_seconds"),
    )
    return result


def i2d_stats(out: Path) -> dict:
    """img2dataset's output folder -> successes, rows and its own download window (first start to last end)."""
    stats = [json.loads(Path(p).read_text()) for p in glob.glob(str(out / "*_stats.json"))]
    if not stats:
        return {}
    return {"successes_stats": sum(s["successes"] for s in stats), "rows": sum(s["count"] for s in stats),
            "own_s": max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats), "shards": len(stats)}


def run_img2dataset(binary: str, args, input_path: Path, server: Server, expected: set[str], threads: int,
                    shard: int) -> dict:
    out = OUT / f"img2dataset-t{threads}-s{shard}"
    # removed here, not with incremental_mode=overwrite: 1.47.0 creates <output>/_tmp first, then
    # overwrite removes the whole output folder with it, and every shard fails (FileNotFoundError)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [binary, f"--url_list={input_path}", "--input_format=parquet", "--url_col=url", "--caption_col=text",
           f"--output_folder={out}", "--output_format=webdataset", "--image_size=256", "--resize_mode=border",
           f"--processes_count={args.img2dataset_processes}", f"--thread_count={threads}",
           f"--number_sample_per_shard={shard}", f"--timeout={args.timeout}", "--retries=0",
           "--disable_all_reencoding=False", "--distributor=multiprocessing",
           "--enable_wandb=False"]
    env = base_env()
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"  # no update check over the (absent) network
    setting = f"processes {args.img2dataset_processes}, threads {threads}, shard {shard}"
    print(f"\nimg2dataset: {setting}", flush=True)
    log = OUT / f"img2dataset-t{threads}-s{shard}.log"
    m = run_measured(cmd, env, log, server.pid)
    result = {"tool": "img2dataset", "setting": setting, **m, **i2d_stats(out)}
    if m["rc"] != 0 or "successes_stats" not in result:
        print(f"img2dataset: failed, rc {m['rc']}; last lines of {log}:\n{tail(log)}")
        return {**result, "unavailable": f"failed, rc {m['rc']}"}
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(glob.glob(str(out / "*.parquet")))
    if files:
        table = pa.concat_tables([pq.read_table(f, columns=["url", "status"]) for f in files]).to_pandas()
        ok = table[table["status"] == "success"]
        result.update(successes=len(ok), unexpected=int((~ok["url"].isin(expected)).sum()),
                      statuses=table["status"].value_counts().to_dict())
    else:
        result["successes"] = result["successes_stats"]
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return result


def show(r: dict, expected: int) -> None:
    if r.get("unavailable"):
        return
    lines = [f"  successes {r['successes']} of {expected} expected"
             + (f" (+{r['unexpected']} on URLs expected to fail)" if r.get("unexpected") else "")
             + (f"; statuses {r['statuses']}" if r.get("statuses") else "")]
    own = f", {r['successes'] / r['own_s']:.1f} images/s on its own time ({r['own_s']:.1f} s)" if r.get("own_s") \
        else ""
    if r.get("download_s"):  # ours: the summary's download (the write that runs it) apart from the job's reads/counts
        own += f", {r['successes'] / r['download_s']:.1f} on the download alone ({r['download_s']:.1f} s)"
    lines.append(f"  {r['successes'] / r['wall_s']:.1f} images/s on wall time ({r['wall_s']:.1f} s){own}")
    lines.append(f"  peak memory of the process tree: RSS {r.get('peak_rss_mib', 0):.0f} MiB"
                 + (f", PSS {r['peak_pss_mib']:.0f} MiB" if "peak_pss_mib" in r else "")
                 + (f"; CPU {r['cpu_s']:.1f} s {r['cpu_by_process']} in {r['processes']} processes at most"
                    if "cpu_s" in r else "")
                 + f"; server CPU {r['server_cpu_s']:.1f} s"
                 + (f"; sampling cost {r['sampler_cpu_s']:.1f} CPU-s" if "sampler_cpu_s" in r else "")
                 + (f"; peak RSS by process name (MiB) {r['peak_rss_mib_by_process']}"
                    if r.get("peak_rss_mib_by_process") else ""))
    print("\n".join(lines), flush=True)


def run_name(r: dict, label_size: bool, label_run: bool) -> str:
    """-> "tool (setting)", with its size and run number when the invocation has several."""
    extra = ([f"{r['urls']:,} URLs"] if label_size else []) + ([f"run {r['run']}"] if label_run else [])
    return f"{r['tool']} ({r['setting']})" + (f" [{', '.join(extra)}]" if extra else "")


def table(results: list[dict]) -> str:
    head = ("| run | successes | images/s (wall) | images/s (own time) | wall s | peak RSS MiB | peak PSS MiB "
            "| CPU s | server CPU s |")
    rows = [head, "|" + " --- |" * 9]
    label_size = len({r["urls"] for r in results}) > 1
    label_run = any(r["run"] > 1 for r in results)
    for r in results:
        name = run_name(r, label_size, label_run)
        if r.get("unavailable"):
            rows.append(f"| {name} | {r['unavailable']} |" + " - |" * 7)
            continue
        own = f"{r['successes'] / r['own_s']:.1f}" if r.get("own_s") else "-"
        rows.append(f"| {name} | {r['successes']:,} / {r['expected']:,} | {r['successes'] / r['wall_s']:.1f} | {own} | "
                    f"{r['wall_s']:.1f} | {r.get('peak_rss_mib', 0):.0f} | {r.get('peak_pss_mib', 0):.0f} | "
                    f"{r.get('cpu_s', 0):.1f} | {r['server_cpu_s']:.1f} |")
    return "\n".join(rows)


def best(runs: list[dict]) -> dict:
    """The runs of one tool, setting and size -> their best figures (each the best over the runs: the
    machine is shared, noise only slows a run down), and the highest peak memory of any of them."""
    n = runs[0]["urls"]
    wall = min(r["wall_s"] for r in runs)
    owns = [r["own_s"] for r in runs if r.get("own_s")]
    cpus = [r["cpu_s"] for r in runs if r.get("cpu_s")]
    return {
        "urls": n, "runs": len(runs), "successes": max(r["successes"] for r in runs),
        "wall_per_s": max(r["successes"] / r["wall_s"] for r in runs),
        "own_per_s": max(r["successes"] / r["own_s"] for r in runs if r.get("own_s")) if owns else None,
        "wall_s": wall, "own_s": min(owns) if owns else None,
        "wall_ms": wall / n * 1e3, "own_ms": min(owns) / n * 1e3 if owns else None,
        "cpu_ms": min(cpus) / n * 1e3 if cpus else None,
        # what the run spends outside its own download window: process and JVM start, input reading,
        # the read-back; fixed per run, so it is kept out of the cost per URL
        "startup_s": min(r["wall_s"] - r["own_s"] for r in runs if r.get("own_s")) if owns else None,
        "peak_rss_mib": max(r.get("peak_rss_mib", 0) for r in runs),
        "peak_pss_mib": max(r.get("peak_pss_mib", 0) for r in runs),
    }


def summarise(results: list[dict]) -> dict:
    """Every run -> {(tool, setting): {URLs: best figures}} over the runs that succeeded."""
    groups: dict[tuple[str, str], dict[int, list[dict]]] = {}
    for r in results:
        if not r.get("unavailable"):
            groups.setdefault((r["tool"], r["setting"]), {}).setdefault(r["urls"], []).append(r)
    return {key: {n: best(runs) for n, runs in sorted(by_size.items())} for key, by_size in groups.items()}


def show_costs(summary: dict) -> None:
    print("\ncost per URL, best run of each tool and size; start-up (wall - own time) apart:")
    for (tool, setting), by_size in summary.items():
        name = f"{tool} ({setting})"
        for n, b in by_size.items():
            own = (f"{b['own_per_s']:.1f} on own time; {b['own_ms']:.2f} ms/URL own" if b["own_ms"] is not None
                   else "own time unknown; -")
            cpu = f", CPU {b['cpu_ms']:.2f} ms/URL" if b["cpu_ms"] is not None else ""
            start = f"; start-up {b['startup_s']:.1f} s" if b["startup_s"] is not None else ""
            print(f"  {name}, {n:,} URLs (best of {b['runs']}): {b['wall_per_s']:.1f} images/s on wall time, {own}, "
                  f"{b['wall_ms']:.2f} ms/URL wall{cpu}{start}; peak RSS {b['peak_rss_mib']:.0f} MiB, "
                  f"PSS {b['peak_pss_mib']:.0f} MiB (highest of its runs)")
    for (tool, setting), by_size in summary.items():
        if len(by_size) < 2:
            continue
        name = f"{tool} ({setting})"
        costs = {n: b["own_ms"] for n, b in by_size.items()}
        line = (measure.trend(costs, "ms/URL", " URLs") if None not in costs.values()
                else "own time unknown at some size")
        fit = measure.fit_text({n: b["wall_s"] for n, b in by_size.items()}, "URL")
        print(f"  {name}: cost per URL on own time (start-up excluded) {line}{fit}")


def _ints(text: str) -> list[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--urls", default="5000",
                        help="URLs in the input table; comma-separated for several sizes, e.g. 5000,20000 (1x, 4x)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each tool per size; the best is reported")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image pool and of the URL list")
    parser.add_argument("--pool", type=int, default=200, help="distinct images in the pool (cached per seed)")
    parser.add_argument("--hosts", type=int, default=16, help="loopback hosts 127.0.0.1 .. 127.0.0.N")
    parser.add_argument("--timeout", type=float, default=3.0,
                        help="client timeout, both tools (ours: connect and read; deadline 3x)")
    parser.add_argument("--threads", type=int, default=0, help="ours: download.threads (0: the stage's default)")
    parser.add_argument("--partitions", type=int, default=0, help="ours: download.partitions (0: the default)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override for ours, e.g. --set download.per_host_connections=8")
    parser.add_argument("--only", choices=("ours", "img2dataset", "both"), default="both")
    parser.add_argument("--img2dataset-threads", default="32", help="thread_count; comma-separated for several runs")
    parser.add_argument("--img2dataset-shard-size", default="2500",
                        help="number_sample_per_shard; comma-separated for several runs")
    parser.add_argument("--img2dataset-processes", type=int, default=2, help="processes_count")
    parser.add_argument("--keep", action="store_true", help="keep img2dataset's output folders")
    args = parser.parse_args()
    url_counts = measure.sizes(args.urls)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

    t0 = time.perf_counter()
    pool_dir, pool, fresh = imageset.load_pool(args.seed, args.pool)
    mean_kb = sum(p.size for p in pool) / len(pool) / 1e3
    print(f"image pool: {len(pool)} images, mean {mean_kb:.0f} kB, {pool_dir} "
          f"({'generated' if fresh else 'cached'}, {time.perf_counter() - t0:.1f} s, not timed)")
    OUT.mkdir(parents=True, exist_ok=True)
    binary = os.environ.get("IMG2DATASET")
    if args.only == "img2dataset" and not binary:
        parser.error("--only img2dataset needs IMG2DATASET=path of the img2dataset binary")

    results: list[dict] = []
    server = Server(pool_dir, args.hosts, slow_s=args.timeout * 3 + 5)  # one pool and server for every size
    try:
        print(f"server: pid {server.pid}, 127.0.0.1 .. 127.0.0.{args.hosts} port {server.port}")
        for n in url_counts:
            rows = imageset.build_urls(args.seed, n, pool, [f"127.0.0.{k}" for k in range(1, args.hosts + 1)],
                                       server.port)
            check_server(rows)
            import pyarrow as pa
            import pyarrow.parquet as pq

            input_path = OUT / "input.parquet"
            pq.write_table(pa.table({"url": [r["url"] for r in rows], "text": [r["text"] for r in rows],
                                     "sample_id": pa.array([r["sample_id"] for r in rows], pa.int64())}), input_path)
            expected = {r["url"] for r in rows if r["expected_success"]}
            kinds: dict[str, int] = {}
            for r in rows:
                kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
            print(f"\ninput: {input_path}, {len(rows)} URLs: {kinds}; expected successes {len(expected)}")

            def record(r: dict, n: int = n, expected: set = expected, k: int = 0) -> None:
                results.append({**r, "urls": n, "expected": len(expected), "run": k})
                show(results[-1], len(expected))

            # the runs of a size alternate between the tools, so slow spells of the shared machine
            # hit both rather than one tool's every run
            for k in range(1, args.repeat + 1):
                if args.repeat > 1:
                    print(f"\n-- {n:,} URLs, run {k} of {args.repeat} --")
                if args.only in ("ours", "both"):
                    record(run_ours(args, input_path, server, expected), k=k)
                if args.only in ("img2dataset", "both"):
                    if not binary:
                        if k == 1:
                            print("\nimg2dataset: skipped (set IMG2DATASET=path of the img2dataset binary)")
                    else:
                        for threads in _ints(args.img2dataset_threads):
                            for shard in _ints(args.img2dataset_shard_size):
                                record(run_img2dataset(binary, args, input_path, server, expected, threads, shard),
                                       k=k)
    finally:
        server.stop()

    print(f"\n{table(results)}")
    summary = summarise(results)
    label_size = len(url_counts) > 1
    ours_by_size = next((by_size for (tool, _), by_size in summary.items() if tool == "ours"), {})
    for (tool, setting), by_size in summary.items():
        if tool != "img2dataset":
            continue
        for n, peer in by_size.items():
            ours = ours_by_size.get(n)
            if not ours:
                continue
            ratio_wall = ours["wall_per_s"] / peer["wall_per_s"]
            ratio_own = (ours["own_per_s"] / peer["own_per_s"] if ours["own_per_s"] and peer["own_per_s"]
                         else float("nan"))
            at = f", {n:,} URLs" if label_size else ""
            print(f"ours / img2dataset ({setting}{at}): {ratio_wall:.2f}x on wall time, "
                  f"{ratio_own:.2f}x on own time; successes {ours['successes']} vs {peer['successes']}")
    show_costs(summary)
    (OUT / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
