"""Does the pipeline stay flat as the data grows? The whole pipeline (`laion-spark demo`: a generated crawl ->
extract -> dedupe -> download from a loopback image server -> embed with the toy CLIP -> filter -> tag with the
toy heads -> export -> index -> report) at N and 10N toy scenes, stage defaults, each run in a process of its
own whose whole tree (the driver's Python, the JVM, Spark's Python workers) is sampled from /proc.

    SPARK_LOCAL_IP=127.0.0.1 .venv/bin/python bench/scale.py --sizes 5000,50000
    SPARK_LOCAL_IP=127.0.0.1 .venv/bin/python bench/scale.py --sizes 5000,50000 --code /path/to/older/checkout

INPUT  -> --sizes (toy scenes per run; each scene is a few candidates, one image), --code (the checkout whose
          laion_spark runs: PYTHONPATH; default this one), --out (a folder for the runs; default a temp dir),
          --every (seconds between samples)
OUTPUT -> per size and per stage (the manifest's steps, timed to the millisecond where the manifest carries
          `started_unix`, else to the second): seconds and CPU-seconds per 1,000 rows in, peak RSS of the
          driver (Python), the JVM and the Python workers (summed over live workers), rows in and out; then the
          ratios 10N / N (CPU per row, driver peak RSS) and whether they hold (CPU per row <= 1.1x, driver
          peak RSS < +20%). The same as JSON in <out>/scale.json.

Not a test: a full run at 50,000 scenes takes about half an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.processes import descendants, rss  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """-> user + system CPU seconds of a process, its reaped children included; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    # fields[0] is the state (field 3); utime, stime, cutime, cstime are fields 14-17
    return sum(int(v) for v in fields[11:15]) / TICK


def kind(pid: int, root: int) -> str:
    if pid == root:
        return "driver"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read()
    except OSError:
        return "other"
    return "jvm" if b"java" in cmd.split(b"\0")[0] else "workers"


class Timeline:
    """Samples every process under root -> samples [(t, {pid: (kind, rss bytes, cpu seconds)})]."""

    def __init__(self, root: int, every: float) -> None:
        self.root, self.every, self.samples = root, every, []
        self.kinds: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now, seen = time.time(), {}
            for pid in descendants(self.root):
                r, c = rss(pid), cpu_seconds(pid)
                if r is None or c is None:
                    continue
                if pid not in self.kinds:
                    k = kind(pid, self.root)
                    if k != "workers":  # a JVM starts as spark-class' shell, then execs java: ask again
                        self.kinds[pid] = k
                seen[pid] = (self.kinds.get(pid) or kind(pid, self.root), r, c)
            self.samples.append((now, seen))
            time.sleep(self.every)

    def start(self) -> Timeline:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def window(self, a: float, b: float) -> dict:
        """[a, b] -> CPU seconds spent in it and peak RSS per kind (RSS summed over a kind's live processes)."""
        before, last, peak = {}, {}, {"driver": 0, "jvm": 0, "workers": 0}
        for t, seen in self.samples:
            if t <= a:
                before.update({pid: v[2] for pid, v in seen.items()})
                continue
            if t > b + self.every:
                break
            total = {"driver": 0, "jvm": 0, "workers": 0}
            for pid, (k, r, c) in seen.items():
                last[pid] = c
                if k in total:
                    total[k] += r
            peak = {k: max(peak[k], total[k]) for k in peak}
        cpu = sum(c - before.get(pid, 0.0) for pid, c in last.items())
        return {"cpu_s": round(cpu, 2), **{f"peak_rss_{k}_mb": round(v / 2**20) for k, v in peak.items()}}


def step_window(step: dict) -> tuple[float, float]:
    start = step.get("started_unix")
    if start is None:  # older manifests: the start to the second
        start = calendar.timegm(time.strptime(step["started"], "%Y-%m-%dT%H:%M:%SZ"))
    return start, start + (step.get("seconds") or 0)


def rows(counts: dict) -> tuple:
    """A step's counts -> (rows in, rows out), each stage's summary naming them its own way."""
    rin = next((counts[k] for k in ("rows_in", "records") if isinstance(counts.get(k), int)), None)
    rout = next((counts[k] for k in ("rows_out", "candidates", "pairs", "dataset", "tagged", "released", "indexed",
                                     "thumbnails") if isinstance(counts.get(k), int)), None)
    return rin, rout


def run_once(size: int, code: Path, out: Path, every: float) -> dict:
    """One `laion-spark demo demo.toy_images=size` -> per step: seconds, CPU, peak RSS, rows."""
    output = out / f"run-{size}"
    env = {**os.environ, "PYTHONPATH": str(code), "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
    started = time.time()
    with open(out / f"run-{size}.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "laion_spark.cli", "demo", f"demo.toy_images={size}",
                                 f"output={output}"], cwd=code, env=env, stdout=log, stderr=subprocess.STDOUT)
        timeline = Timeline(proc.pid, every).start()
        rc = proc.wait()
        timeline.stop()
    wall = time.time() - started
    if rc != 0:
        raise SystemExit(f"the run at {size} failed (rc {rc}); see {out}/run-{size}.log")
    manifest = json.loads((output / "manifest.json").read_text())
    steps = []
    for step in manifest["steps"]:
        if step.get("action") != "run":
            continue
        a, b = step_window(step)
        rin, rout = rows(step.get("counts") or {})
        measured = timeline.window(a, b)
        per_k = 1000 / rin if rin else None
        steps.append({"stage": step.get("step") or step["stage"], "seconds": step.get("seconds"), "rows_in": rin,
                      "rows_out": rout,
                      "s_per_1k": per_k and round(step["seconds"] * per_k, 3),
                      "cpu_s_per_1k": per_k and round(measured["cpu_s"] * per_k, 3), **measured})
    whole = timeline.window(started - 1, time.time())
    return {"size": size, "wall_s": round(wall, 1), "steps": steps, "whole": whole}


def table(run: dict) -> str:
    lines = [f"toy scenes {run['size']:,}: wall {run['wall_s']} s, whole tree: CPU {run['whole']['cpu_s']} s, "
             f"peak RSS driver {run['whole']['peak_rss_driver_mb']} MB, JVM {run['whole']['peak_rss_jvm_mb']} MB, "
             f"workers {run['whole']['peak_rss_workers_mb']} MB",
             "| stage | rows in | rows out | s | s / 1k rows | CPU-s / 1k rows | driver MB | JVM MB | workers MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in run["steps"]:
        lines.append(f"| {s['stage']} | {s['rows_in']} | {s['rows_out']} | {s['seconds']} | {s['s_per_1k']} | "
                     f"{s['cpu_s_per_1k']} | {s['peak_rss_driver_mb']} | {s['peak_rss_jvm_mb']} | "
                     f"{s['peak_rss_workers_mb']} |")
    return "\n".join(lines)


def compare(small: dict, big: dict) -> str:
    lines = [f"10N / N ({big['size']:,} / {small['size']:,} scenes)",
             "| stage | CPU per row | holds (<= 1.1x) | driver peak RSS | holds (< 1.2x) |",
             "| --- | --- | --- | --- | --- |"]
    by_stage = {s["stage"]: s for s in small["steps"]}
    for s in big["steps"]:
        base = by_stage.get(s["stage"])
        if not base or not base["cpu_s_per_1k"] or s["cpu_s_per_1k"] is None:
            lines.append(f"| {s['stage']} | - | - | - | - |")
            continue
        cpu = s["cpu_s_per_1k"] / base["cpu_s_per_1k"]
        mem = s["peak_rss_driver_mb"] / max(base["peak_rss_driver_mb"], 1)
        lines.append(f"| {s['stage']} | {cpu:.2f}x | {'yes' if cpu <= 1.1 else 'NO'} | {mem:.2f}x | "
                     f"{'yes' if mem < 1.2 else 'NO'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="5000,50000")
    parser.add_argument("--code", type=Path, default=REPO)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--every", type=float, default=0.25)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="scale-"))
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for size in (int(s) for s in args.sizes.split(",")):
        runs.append(run_once(size, args.code.resolve(), out, args.every))
        print(table(runs[-1]), flush=True)
        (out / "scale.json").write_text(json.dumps(runs, indent=1))
    for small, big in zip(runs, runs[1:]):
        print(compare(small, big))
    print(f"runs and scale.json under {out}")


if __name__ == "__main__":
    main()
