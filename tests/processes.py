"""Processes the tests start or watch: `laion-spark serve` as its own CLI process, and the resident memory
of a process and everything under it, sampled from /proc (Spark's Python workers are children of its JVM,
so `/usr/bin/time` and a single pid miss them). Used by test_serve, test_serve_load, test_extract_memory
and bench/serve_load.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def serve_process(*args: str):
    """`laion-spark serve port=0 <args>` -> (process, port) once it listens; SIGTERM at the end, and the
    summary it prints (stdout) set on process.summary."""
    proc = subprocess.Popen([sys.executable, "-m", "laion_spark.cli", "serve", "port=0", *args], cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        port, lines, deadline = None, [], time.time() + 240
        while port is None and time.time() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"listening at http://127\.0\.0\.1:(\d+)/", line)
            port = found and int(found[1])
        assert port, "".join(lines)
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep its log from filling the pipe
        yield proc, port
        proc.send_signal(signal.SIGTERM)
        proc.summary = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def descendants(root: int) -> list[int]:
    """root and every process under it, from /proc/PID/task/TID/children (no walk over all of /proc)."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:  # the process ended meanwhile
            continue
    return out


def rss(pid: int) -> int | None:
    """-> VmRSS of a process in bytes, None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


class RssSampler:
    """Samples the RSS of every process under `root` (itself included) every `every` seconds, from entering
    to leaving the block -> `seen` {pid: [RSS when first seen, peak RSS, command line]}, `rounds` taken."""

    def __init__(self, root: int, every: float = 0.05) -> None:
        self.root, self.every, self.rounds = root, every, 0
        self.seen: dict[int, list] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def first(self, pid: int) -> int:
        return self.seen[pid][0]

    def peak(self, pid: int) -> int:
        return self.seen[pid][1]

    def _sample(self) -> None:
        for pid in descendants(self.root):
            now = rss(pid)
            if now is None:
                continue
            if pid not in self.seen:
                self.seen[pid] = [now, now, _cmdline(pid)]
            elif now > self.seen[pid][1]:
                self.seen[pid][1] = now
        self.rounds += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.every)

    def __enter__(self) -> RssSampler:
        self._sample()  # the processes that exist before: their RSS then is their baseline
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
