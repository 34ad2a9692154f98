"""Benchmark: `laion-spark download` against img2dataset on one generated image set, served from loopback.

INPUT  -> a seeded synthetic image set (bench/imageset.py: a pool of JPEG/PNG/WebP images, cached under
          bench/out/, reused under --urls URLs spread over --hosts loopback hosts, with ~5% HTTP
          404/500, a few time-outs and a few corrupt bodies), served by a separate server process
          on 127.0.0.1 .. 127.0.0.N; IMG2DATASET=path of an img2dataset binary for the baseline
OUTPUT -> printed figures per run: successes (expected: the image URLs), images/s on wall time and
          on the tool's own download time, peak memory and CPU time of the run's whole process tree,
          the server's CPU time; the ratio ours / img2dataset; a table at the end

Run: `SPARK_LOCAL_IP=127.0.0.1 .venv/bin/python bench/download.py [--urls 5000] [--only both]`
     with `IMG2DATASET=build/img2dataset-venv/bin/img2dataset` for the baseline (see bench/README.md)

Memory: /proc is polled for the process tree under the tool's process (driver JVM, Python
workers; img2dataset's processes): the peak of the summed RSS (shared pages counted once per
process) every 0.2 s and of the summed PSS (shared pages split, from smaps_rollup) every 1 s are
reported, with the tree's CPU seconds and the sampler's own CPU cost. Without /proc,
getrusage(RUSAGE_CHILDREN).ru_maxrss (the largest single process) is the fallback.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imageset  # bench/ is not a package: imported from its folder

REPO = Path(__file__).resolve().parents[1]
OUT = imageset.OUT / "download"
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


# ------------------------------------------------------------------------------- process tree sampling


def _stat(pid: int) -> tuple[int, float, int, str] | None:
    """-> (ppid, CPU seconds, RSS bytes, command name) of one process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            head, rest = f.read().rsplit(b")", 1)
    except OSError:
        return None
    fields = rest.split()  # after the ")": state ppid ... utime(11) stime(12) ... rss(21), 0-based
    comm = head.split(b"(", 1)[1].decode(errors="replace")
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK, int(fields[21]) * PAGE, comm


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    s = _stat(pid)
    return s[1] if s else 0.0


def descendants(root: int) -> set[int]:
    """root and every process under it (by parent pid)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            s = _stat(int(name))
            if s:
                children.setdefault(s[0], []).append(int(name))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += children.get(pid, [])
    return tree


class TreeSampler(threading.Thread):
    """Polls the process tree under `root`: peak summed RSS every `interval` s and summed PSS every
    `pss_every` samples (smaps_rollup walks a process's page tables: ~20 ms for a JVM, so not every
    tick), CPU seconds, most processes at once."""

    def __init__(self, root: int, interval: float = 0.2, pss_every: int = 5):
        super().__init__(daemon=True)
        self.root, self.interval, self.pss_every = root, interval, pss_every
        self.peak_rss = self.peak_pss = self.max_procs = 0
        self.cpu: dict[int, float] = {}  # pid -> last CPU seconds seen (a process's final ~0.2 s may be missed)
        self.names: dict[int, str] = {}
        self.proc_ok = os.path.isfile(f"/proc/{os.getpid()}/stat")
        self.own_cpu = 0.0
        self._halt = threading.Event()

    def run(self) -> None:
        tick = 0
        while self.proc_ok and not self._halt.is_set():
            rss = 0
            tree = descendants(self.root)
            for pid in tree:
                s = _stat(pid)
                if s:
                    rss += s[2]
                    self.cpu[pid] = s[1]
                    self.names[pid] = "driver" if pid == self.root else s[3]
            if tick % self.pss_every == 0:
                self.peak_pss = max(self.peak_pss, sum(_pss(pid) for pid in tree))
            self.peak_rss = max(self.peak_rss, rss)
            self.max_procs = max(self.max_procs, len(tree))
            tick += 1
            self._halt.wait(self.interval)
        self.own_cpu = time.thread_time()  # the sampler's own cost, in the benchmark's process

    def _by_name(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, cpu in self.cpu.items():
            out[self.names[pid]] = round(out.get(self.names[pid], 0.0) + cpu, 1)
        return out

    def stop(self) -> dict:
        self._halt.set()
        self.join()
        if not self.proc_ok:
            import resource

            return {"memory_method": "getrusage(RUSAGE_CHILDREN).ru_maxrss: largest single process",
                    "peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
        return {"memory_method": f"/proc, process tree: RSS every {self.interval} s, PSS every "
                                 f"{self.interval * self.pss_every:g} s", "peak_rss_mib": self.peak_rss / 2**20,
                "peak_pss_mib": self.peak_pss / 2**20, "cpu_s": sum(self.cpu.values()), "processes": self.max_procs,
                "cpu_by_process": self._by_name(),
                "sampler_cpu_s": self.own_cpu}


def run_measured(cmd: list[str], env: dict, log_path: Path, server_pid: int) -> dict:
    """Run cmd in its own session, sample its process tree -> rc, wall seconds, memory, CPU, server CPU."""
    server_cpu = cpu_seconds(server_pid)
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=REPO)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        try:
            rc = proc.wait()
            wall = time.perf_counter() - started
        finally:
            try:
                if proc.poll() is None:  # interrupted: end the run's process group (the tool and its workers)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
            finally:
                with contextlib.suppress(ProcessLookupError):  # stragglers left in the run's group (a JVM)
                    os.killpg(proc.pid, signal.SIGKILL)
                measured = sampler.stop()
    return {"rc": rc, "wall_s": wall, "server_cpu_s": cpu_seconds(server_pid) - server_cpu, **measured}


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ----------------------------------------------------------------------------------------- server


class Server:
    """bench/imageset.py serve in a separate process; stopped on exit (its stdin closing also ends it)."""

    def __init__(self, pool_dir: Path, hosts: int, slow_s: float):
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(imageset.__file__)), "serve", str(pool_dir), "--hosts", str(hosts),
             "--slow-s", str(slow_s)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"image server did not start (got {line!r})")
        self.port = int(line)
        self.pid = self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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
                 + (f"; sampling cost {r['sampler_cpu_s']:.1f} CPU-s" if "sampler_cpu_s" in r else ""))
    print("\n".join(lines), flush=True)


def table(results: list[dict], expected: int) -> str:
    head = ("| run | successes | images/s (wall) | images/s (own time) | wall s | peak RSS MiB | peak PSS MiB "
            "| CPU s | server CPU s |")
    rows = [head, "|" + " --- |" * 9]
    for r in results:
        name = f"{r['tool']} ({r['setting']})"
        if r.get("unavailable"):
            rows.append(f"| {name} | {r['unavailable']} |" + " - |" * 7)
            continue
        own = f"{r['successes'] / r['own_s']:.1f}" if r.get("own_s") else "-"
        rows.append(f"| {name} | {r['successes']:,} / {expected:,} | {r['successes'] / r['wall_s']:.1f} | {own} | "
                    f"{r['wall_s']:.1f} | {r.get('peak_rss_mib', 0):.0f} | {r.get('peak_pss_mib', 0):.0f} | "
                    f"{r.get('cpu_s', 0):.1f} | {r['server_cpu_s']:.1f} |")
    return "\n".join(rows)


def _ints(text: str) -> list[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--urls", type=int, default=5000, help="URLs in the input table")
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
    server = Server(pool_dir, args.hosts, slow_s=args.timeout * 3 + 5)
    try:
        print(f"server: pid {server.pid}, 127.0.0.1 .. 127.0.0.{args.hosts} port {server.port}")
        rows = imageset.build_urls(args.seed, args.urls, pool, [f"127.0.0.{k}" for k in range(1, args.hosts + 1)],
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
        print(f"input: {input_path}, {len(rows)} URLs: {kinds}; expected successes {len(expected)}")

        if args.only in ("ours", "both"):
            results.append(run_ours(args, input_path, server, expected))
            show(results[-1], len(expected))
        if args.only in ("img2dataset", "both"):
            if not binary:
                print("\nimg2dataset: skipped (set IMG2DATASET=path of the img2dataset binary)")
            else:
                for threads in _ints(args.img2dataset_threads):
                    for shard in _ints(args.img2dataset_shard_size):
                        results.append(run_img2dataset(binary, args, input_path, server, expected, threads, shard))
                        show(results[-1], len(expected))
    finally:
        server.stop()

    print(f"\n{table(results, len(expected))}")
    ours = next((r for r in results if r["tool"] == "ours" and not r.get("unavailable")), None)
    for r in results:
        if ours and r["tool"] == "img2dataset" and not r.get("unavailable"):
            ratio_wall = (ours["successes"] / ours["wall_s"]) / (r["successes"] / r["wall_s"])
            ratio_own = ((ours["successes"] / ours["own_s"]) / (r["successes"] / r["own_s"])
                         if ours.get("own_s") and r.get("own_s") else float("nan"))
            print(f"ours / img2dataset ({r['setting']}): {ratio_wall:.2f}x on wall time, {ratio_own:.2f}x on own time; "
                  f"successes {ours['successes']} vs {r['successes']}")
    (OUT / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
