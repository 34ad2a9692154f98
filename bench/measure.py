"""Shared measurement helpers of the benchmarks: a command's process tree sampled from /proc, and the
per-size cost summaries.

INPUT  -> a command line (and its environment) to run, or the pid of a process tree to watch; per-run
          figures (items, timed seconds, wall seconds) at one or more input sizes
OUTPUT -> per run: exit code, wall seconds, peak summed RSS/PSS of the whole tree, CPU seconds per
          process name, the sampler's own CPU cost (and a server's CPU over the run if its pid is
          given); per tool: the best of the runs at each size, cost per item with the fixed
          start-up apart, and whether the cost per item is flat or falling from the smallest size to
          the largest

Memory: /proc is polled for the process tree under the command's process: the peak of the summed
RSS (shared pages counted once per process) every 0.2 s and of the summed PSS (shared pages split,
from smaps_rollup) every 1 s, with the tree's CPU seconds and the sampler's own CPU cost. Without
/proc, getrusage(RUSAGE_CHILDREN).ru_maxrss (the largest single process) is the fallback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
RESULT = "BENCH-RESULT "  # prefix of the JSON line a benchmark's child run prints (its log mixes in other output)
FLAT = 0.20  # cost per item within +-20% from the smallest size to the largest: flat


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


def _label(pid: int, comm: str) -> str:
    """-> a process's command line, short: programs and files by base name, options' long values cut."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return comm
    if not args:  # a process exiting (a zombie has an empty command line)
        return comm
    if args[0].rsplit("/", 1)[-1] == "java":  # the JVM: its main class, not its options
        main = next((a for prev, a in zip(args, args[1:]) if not a.startswith("-")
                     and prev not in ("-cp", "-classpath", "--class-path")), "")
        return f"java {main}".strip()

    def short(arg: str) -> str:  # paths by base name, also as the value of KEY=PATH
        key, eq, value = arg.rpartition("=") if "=" in arg else ("", "", arg)
        return key + eq + value.rsplit("/", 1)[-1] if value.startswith(("/", "./", "../")) else arg

    words = [args[0].rsplit("/", 1)[-1]] + [short(a) for a in args[1:]]
    words = [w if len(w) <= 40 else w[:37] + "..." for w in words if not w.startswith("-Xshare")]
    text = " ".join(words) or comm
    return text if len(text) <= 120 else text[:117] + "..."


def per_process_text(m: dict, min_mib: int = 20) -> str:
    """run_measured's figures -> one line per process of at least min_mib peak RSS: pid, MiB, command."""
    rows = [p for p in m.get("peak_rss_mib_per_process", []) if p["mib"] >= min_mib]
    small = len(m.get("peak_rss_mib_per_process", [])) - len(rows)
    lines = [f"    {p['mib']:6,} MiB  pid {p['pid']:<7} {p['command']}" for p in rows]
    if small:
        lines.append(f"    ({small} more process{'es' if small > 1 else ''} under {min_mib} MiB each)")
    return "\n".join(lines)


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
        self.peak_by_name: dict[str, int] = {}  # name -> peak of the summed RSS of that name's processes
        self.peak_by_pid: dict[int, int] = {}  # pid -> its own peak RSS
        self.labels: dict[int, tuple[str, str]] = {}  # pid -> (name, its command line, short), read once per name
        self.proc_ok = os.path.isfile(f"/proc/{os.getpid()}/stat")
        self.own_cpu = 0.0
        self._halt = threading.Event()

    def run(self) -> None:
        tick = 0
        while self.proc_ok and not self._halt.is_set():
            rss = 0
            by_name: dict[str, int] = {}
            tree = descendants(self.root)
            for pid in tree:
                s = _stat(pid)
                if s:
                    rss += s[2]
                    self.cpu[pid] = s[1]
                    self.names[pid] = "driver" if pid == self.root else s[3]
                    by_name[self.names[pid]] = by_name.get(self.names[pid], 0) + s[2]
                    self.peak_by_pid[pid] = max(self.peak_by_pid.get(pid, 0), s[2])
                    if self.labels.get(pid, ("",))[0] != s[3]:  # new, or exec'd another program (spark-class)
                        self.labels[pid] = (s[3], _label(pid, s[3]))
            for name, value in by_name.items():  # which part grows: the JVM, the Python workers, the driver
                self.peak_by_name[name] = max(self.peak_by_name.get(name, 0), value)
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
                "peak_rss_mib_by_process": {k: round(v / 2**20) for k, v in self.peak_by_name.items()},
                "peak_rss_mib_per_process": [
                    {"pid": pid, "name": self.names[pid], "command": self.labels.get(pid, ("", ""))[1],
                     "mib": round(v / 2**20)}
                    for pid, v in sorted(self.peak_by_pid.items(), key=lambda kv: -kv[1])],
                "sampler_cpu_s": self.own_cpu}


def run_measured(cmd: list[str], env: dict, log_path: Path, server_pid: int | None = None,
                 cwd: Path = REPO) -> dict:
    """Run cmd in its own session, sample its process tree -> rc, wall seconds, memory, CPU (and the
    server's CPU over the run when server_pid is given). stdout and stderr go to log_path."""
    server_cpu = cpu_seconds(server_pid) if server_pid else 0.0
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=cwd)
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
    server = {"server_cpu_s": cpu_seconds(server_pid) - server_cpu} if server_pid else {}
    return {"rc": rc, "wall_s": wall, **server, **measured}


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def print_result(result: dict) -> None:
    """A child run's figures -> one line on stdout that read_result finds among the child's other output."""
    print(RESULT + json.dumps(result, default=str), flush=True)


def read_result(log_path: Path) -> dict | None:
    """A child run's log -> the figures of its last print_result line, None if it printed none."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    return None


def memory_text(m: dict) -> str:
    """run_measured's figures -> "peak RSS N MiB, PSS N MiB, N processes" (what is known of them)."""
    return (f"peak RSS {m.get('peak_rss_mib', 0):.0f} MiB"
            + (f", PSS {m['peak_pss_mib']:.0f} MiB" if "peak_pss_mib" in m else "")
            + (f", {m['processes']} process{'es' if m['processes'] > 1 else ''} at most" if "processes" in m
               else "")
            + (f"; peak RSS by process name (MiB) {m['peak_rss_mib_by_process']}" if m.get("peak_rss_mib_by_process")
               else ""))


# ------------------------------------------------------------------------------------ sizes and costs


def sizes(text: str, kind: type = int) -> list:
    """"5000,20000" -> [5000, 20000] (sorted, duplicates dropped), as `kind`."""
    values = sorted({kind(x) for x in str(text).split(",") if x.strip()})
    if not values:
        raise ValueError(f"no size in {text!r}")
    return values


def _num(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() or x >= 100 else f"{x:.1f}"


def _cost(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def trend(costs: dict, unit: str, size_unit: str = "") -> str:
    """{size: cost per item (start-up excluded)} -> the change from the smallest size to the largest,
    and whether it is flat (within FLAT), falling or rising."""
    small, large = min(costs), max(costs)
    if small == large or not costs[small] or costs[large] is None:
        return "one size only: run two sizes (e.g. 1x and 4x) to see the trend"
    ratio = costs[large] / costs[small]
    verdict = ("flat (within 20%)" if abs(ratio - 1) <= FLAT else "falling" if ratio < 1
               else "RISING (more than 20%)")
    return (f"{_cost(costs[small])} -> {_cost(costs[large])} {unit} from {_num(small)}{size_unit} to "
            f"{_num(large)}{size_unit} ({ratio:.2f}x): {verdict}")


def fixed_and_marginal(points: dict) -> tuple[float, float] | None:
    """{size: best wall seconds} at two sizes or more -> (fixed seconds, seconds per item) of the line
    through the smallest and the largest size: what a run costs before its first item, and each item
    after it. None with one size."""
    small, large = min(points), max(points)
    if small == large:
        return None
    per_item = (points[large] - points[small]) / (large - small)
    return points[small] - per_item * small, per_item


def fit_text(points: dict, unit: str) -> str:
    """{size: best wall seconds} -> "; on wall time a fixed N s + N ms/<unit>" ("" with one size)."""
    fit = fixed_and_marginal(points)
    if not fit:
        return ""
    if fit[1] <= 0:  # the larger size ran no longer: run-to-run noise exceeds the per-item cost here
        return "; on wall time no per-item cost visible between the sizes (noise; sizes too small)"
    return f"; on wall time a fixed {fit[0]:.1f} s + {fit[1] * 1e3:.2f} ms/{unit} (the line through both sizes)"
