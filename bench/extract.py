"""Benchmark: `laion-spark extract` against a plain single-process loop doing the same work.

INPUT  -> the real archives of ../shared/corpora/warc, linked repeatedly until the input is at
          least --mb megabytes of compressed archives (default 500; several sizes comma-separated,
          e.g. 500,2000 for 1x and 4x)
OUTPUT -> printed figures per size: MB/s of compressed input and candidates/s, per core, for the
          plain loop (same reader, parser, CLD3 and rules: laion_spark.extract.process.process_file)
          in 1 and N processes and for the Spark job (local[N]), the Spark overhead ratio, the
          JVM/session start-up time measured apart from the throughput; the cost per MB (ms of the
          timed run per MB) with each run's fixed part (process start, imports, for Spark the session
          start and the warm-up run) apart; the peak RSS/PSS of every run's process tree; and per
          run kind whether the cost per MB is flat (within 20%) or falling from the smallest size to
          the largest

Run: `make bench` or `SPARK_LOCAL_IP=127.0.0.1 .venv/bin/python bench/extract.py [--mb 500]`;
     1x and 4x, best of two: `... bench/extract.py --mb 500,2000 --repeat 2`

Each measured run is a child process (this script with the hidden --one KIND) under
bench/measure.py's sampler, so its peak memory is its own tree: the loop's process (and its pool),
or Spark's driver, JVM and Python workers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import measure  # bench/ is not a package: imported from its folder

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora" / "warc"
LOGS = Path(__file__).resolve().parent / "out" / "extract"  # the children's logs, kept for a failed run


def build_input(directory: Path, target_mb: float) -> list[str]:
    """Symlink the corpora archives into `directory` repeatedly -> the file list (>= target_mb)."""
    sources = sorted(p for p in CORPORA.rglob("*") if p.is_file() and p.name != "WARC_FACTS.tsv")
    per_round = sum(p.stat().st_size for p in sources)
    rounds = max(1, int(-(-target_mb * 1e6 // per_round)))
    files = []
    for r in range(rounds):
        for p in sources:
            link = directory / f"r{r:03d}" / p.relative_to(CORPORA)
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(p)
            files.append(str(link))
    return files


def plain_loop(files: list[str], cfg) -> dict:
    """The same row logic in one Python process, no Spark: the baseline."""
    from laion_spark.extract.process import process_file

    size = sum(os.path.getsize(f) for f in files)
    started = time.perf_counter()
    candidates = 0
    for f in files:
        for row in process_file(f, cfg):
            candidates += row.kind == "candidate"
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "mb": size / 1e6, "candidates": candidates}


def _plain_worker(files: list[str]) -> int:
    from laion_spark.config import ExtractConfig
    from laion_spark.extract.process import process_file

    cfg = ExtractConfig()
    return sum(row.kind == "candidate" for f in files for row in process_file(f, cfg))


def plain_processes(files: list[str], n: int) -> dict:
    """The plain loop in n processes (files split n ways): how far the machine itself scales."""
    from multiprocessing import get_context

    size = sum(os.path.getsize(f) for f in files)
    with get_context("spawn").Pool(n) as pool:
        pool.map(_plain_worker, [files[:3]] * n)  # imports done before the clock starts
        started = time.perf_counter()
        candidates = sum(pool.map(_plain_worker, [files[i::n] for i in range(n)]))
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "mb": size / 1e6, "candidates": candidates}


def spark_job(files: list[str], cores: int, out_dir: Path, repeat: int = 1) -> dict:
    from pyspark.sql import SparkSession

    from laion_spark import cli
    from laion_spark.config import load_config
    from laion_spark.extract import job
    from laion_spark.session import ensure_java, local_driver_java_options

    ensure_java()
    t0 = time.perf_counter()
    spark = (
        SparkSession.builder.master(f"local[{cores}]")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", "4g")
        # the JVM options get_spark() gives every local driver (C1 only, the class archive): as it ships
        .config("spark.driver.extraJavaOptions",
                os.environ.get("LAION_SPARK_DRIVER_JAVA_OPTIONS", local_driver_java_options()))
        .getOrCreate()
    )
    spark.range(1).collect()
    startup = time.perf_counter() - t0
    # warm-up: start the Python workers and import the extract modules once, on a tiny input
    warm = load_config([], [f"input={files[0]}", f"output={out_dir / 'warm'}", "mode=overwrite"])
    t_warm = time.perf_counter()
    cli.run("extract", warm, job, spark=spark)
    warmup = time.perf_counter() - t_warm
    cfg = load_config([], [f"input={','.join(files)}", f"output={out_dir / 'out'}", "mode=overwrite"])
    seconds = float("inf")
    for _ in range(repeat):  # best of `repeat`: the machine is shared, noise only slows down
        t1 = time.perf_counter()
        summary = cli.run("extract", cfg, job, spark=spark)
        seconds = min(seconds, time.perf_counter() - t1)
    spark.stop()
    size = sum(os.path.getsize(f) for f in files)
    return {"seconds": seconds, "mb": size / 1e6, "candidates": summary["candidates"], "startup_s": startup,
            "warmup_s": warmup}


def one(kind: str, n: int, mb: float, work: Path, out_dir: Path) -> dict:
    """The child side: one measured run of `kind` (plain, or spark) on n processes or cores -> its figures."""
    from laion_spark.config import ExtractConfig

    files = build_input(work / "in", mb)  # the links the parent made: the same file list
    if kind == "spark":
        return spark_job(files, n, out_dir)
    return plain_loop(files, ExtractConfig()) if n == 1 else plain_processes(files, n)


def measured(kind: str, n: int, mb: float, work: Path, k: int) -> dict:
    """This script as a child in --one mode, its process tree sampled -> the child's figures with the
    process's wall seconds, its fixed part (wall - timed seconds) and the tree's peak memory."""
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{kind}-{n}-{mb:g}mb-run{k}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", kind, "--n", str(n), "--mb", repr(mb),
           "--work", str(work), "--out", str(work / f"{kind}-{n}")]
    m = measure.run_measured(cmd, dict(os.environ), log)
    got = measure.read_result(log)
    if m["rc"] != 0 or got is None:
        raise RuntimeError(f"{kind} n={n} failed, rc {m['rc']}; last lines of {log}:\n{measure.tail(log, 30)}")
    return {**got, **m, "process_wall_s": m["wall_s"], "fixed_s": m["wall_s"] - got["seconds"]}


def best_of(runs: list[dict]) -> dict:
    """Runs of one kind and size -> the fastest (the machine is shared: noise only slows a run down),
    with the smallest fixed part and start-up of any run and the highest peak memory of any run."""
    fastest = dict(min(runs, key=lambda r: r["seconds"]))
    fastest["fixed_s"] = min(r["fixed_s"] for r in runs)
    if "startup_s" in fastest:
        fastest["startup_s"] = min(r["startup_s"] for r in runs)
    fastest["peak_rss_mib"] = max(r.get("peak_rss_mib", 0) for r in runs)
    fastest["peak_pss_mib"] = max(r.get("peak_pss_mib", 0) for r in runs)
    fastest["runs"] = len(runs)
    return fastest


def run_kind(label: str, kind: str, n: int, mb: float, work: Path, repeat: int) -> dict:
    """`repeat` measured runs of one kind, each run's time and memory printed -> the best of them."""
    runs = []
    for k in range(1, repeat + 1):
        r = measured(kind, n, mb, work, k)
        runs.append(r)
        start = f", session start {r['startup_s']:.1f} s + warm-up {r['warmup_s']:.1f} s" if "startup_s" in r else ""
        print(f"  {label}, run {k}: {r['seconds']:.1f} s timed, {r['process_wall_s']:.1f} s wall of the process "
              f"(fixed part {r['fixed_s']:.1f} s{start}); {measure.memory_text(r)}", flush=True)
    return best_of(runs)


def cost_line(r: dict, n: int) -> str:
    """-> "cost N ms/MB (N core-ms/MB), fixed N s apart; peak RSS N MiB" of a best run on n cores."""
    ms = r["seconds"] / r["mb"] * 1e3
    per_core = f" ({ms * n:.1f} core-ms/MB)" if n > 1 else ""
    return (f"    cost {ms:.1f} ms/MB{per_core} of the timed run, start-up apart: fixed {r['fixed_s']:.1f} s per "
            f"run; peak RSS {r.get('peak_rss_mib', 0):.0f} MiB, PSS {r.get('peak_pss_mib', 0):.0f} MiB "
            f"(highest of {r['runs']} runs)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", default="500",
                        help="input size in MB of compressed archives; comma-separated for several sizes, "
                             "e.g. 500,2000 (1x, 4x)")
    parser.add_argument("--cores", default="1,2", help="comma-separated N of the local[N] Spark runs")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each measurement; the best is kept")
    # the child side of one measured run (see measured())
    parser.add_argument("--one", choices=("plain", "spark"), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        measure.print_result(one(args.one, args.n, float(args.mb), args.work, args.out))
        return 0
    if not CORPORA.is_dir():
        print(f"skipped: {CORPORA} not found (the benchmark reads the shared corpora)")
        return 0
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    cores = sorted({int(c) for c in args.cores.split(",")})

    work = Path(tempfile.mkdtemp(prefix="laion-bench-"))
    results: dict[str, dict] = {}
    try:
        seen: dict[int, float] = {}  # files -> the first size that gave that input
        for target in measure.sizes(args.mb, float):
            files = build_input(work / "in", target)
            mb = sum(os.path.getsize(f) for f in files) / 1e6
            if len(files) in seen:  # the input grows by whole rounds of the corpora (18.4 MB each)
                print(f"--mb {target:g}: the same {mb:.1f} MB input as --mb {seen[len(files)]:g}, skipped")
                continue
            seen[len(files)] = target
            print(f"input: {len(files)} files, {mb:.1f} MB compressed (corpora repeated)", flush=True)
            res = results[f"{target:g}"] = {}
            plain = res["plain"] = run_kind("plain loop, 1 process", "plain", 1, target, work, args.repeat)
            base = plain["mb"] / plain["seconds"]
            print(
                f"plain loop, 1 process:     {base:6.2f} MB/s per core  "
                f"{plain['candidates'] / plain['seconds']:8.0f} candidates/s  ({plain['seconds']:.1f} s)"
            )
            print(cost_line(plain, 1), flush=True)
            for n in cores:
                multi = None
                if n > 1:
                    multi = res[f"plain_{n}"] = run_kind(f"plain loop, {n} processes", "plain", n, target, work,
                                                         args.repeat)
                    print(f"plain loop, {n} processes:   {multi['mb'] / multi['seconds'] / n:6.2f} MB/s per core "
                          f"(the machine's own scaling)")
                    print(cost_line(multi, n), flush=True)
                sp = res[f"spark_{n}"] = run_kind(f"spark local[{n}]", "spark", n, target, work, args.repeat)
                per_core = sp["mb"] / sp["seconds"] / n
                print(
                    f"spark local[{n}]:           {per_core:6.2f} MB/s per core  "
                    f"{sp['candidates'] / sp['seconds'] / n:8.0f} candidates/s per core  ({sp['seconds']:.1f} s; "
                    f"start-up {sp['startup_s']:.1f} s not included)"
                )
                print(cost_line(sp, n))
                print(f"  spark overhead per core vs the 1-process plain loop: {(base / per_core - 1) * 100:+.1f}%")
                peer = multi or plain
                peer_rate = peer["mb"] / peer["seconds"] / n
                print(f"  Spark / plain, local[{n}] vs {n} process{'es' if n > 1 else ''}"
                      f"{' (per core)' if n > 1 else ''}: {per_core / peer_rate:.2f}x MB/s, "
                      f"{peer_rate / per_core:.2f}x the cost per MB", flush=True)
                if sp["candidates"] != plain["candidates"]:
                    print(f"WARNING: candidates differ: plain {plain['candidates']} spark {sp['candidates']}")
        show_sizes(results)
        print(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def show_sizes(results: dict) -> None:
    """Best runs per size -> a table of every run kind at every size, and per kind the trend of its
    cost per MB (timed run only: the fixed start-up is apart)."""
    kinds = list(next(iter(results.values())))
    print("\n| size | run | MB/s per core | ms/MB (timed run) | fixed s per run | peak RSS MiB | peak PSS MiB |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    for res in results.values():
        for kind, r in res.items():
            n = int(kind.split("_")[1]) if "_" in kind else 1
            print(f"| {r['mb']:.0f} MB | {label_of(kind)} | {r['mb'] / r['seconds'] / n:.2f} | "
                  f"{r['seconds'] / r['mb'] * 1e3:.1f} | {r['fixed_s']:.1f} | {r.get('peak_rss_mib', 0):.0f} | "
                  f"{r.get('peak_pss_mib', 0):.0f} |")
    if len(results) < 2:
        return
    for kind in kinds:
        costs = {res[kind]["mb"]: res[kind]["seconds"] / res[kind]["mb"] * 1e3 for res in results.values()}
        line = measure.trend(costs, "ms/MB", " MB")
        print(f"{label_of(kind)}: cost per MB of the timed run (start-up excluded) {line}")


def label_of(kind: str) -> str:
    name, _, n = kind.partition("_")
    if name == "spark":
        return f"spark local[{n}]"
    return f"plain loop, {n or 1} process{'es' if n else ''}"


if __name__ == "__main__":
    sys.exit(main())
