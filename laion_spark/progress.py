"""Progress people can follow while a stage runs: the Spark UI's address, and every few seconds a log
line with the tasks done out of the running stages' total and the time left in them.

INPUT  -> a SparkSession (classic or Spark Connect) and a label (the stage or pipeline step)
OUTPUT -> log lines only ("download: tasks 12/40 (30%), 4 running, 0.8 tasks/s, about 35s left in
          the running stages"); nothing a stage computes depends on them

Display only, as the issue allows: on classic Spark a daemon thread polls the driver's status tracker
(the one place the library touches the SparkContext: it has no Connect equivalent, and a Connect
session never reaches it); on Spark Connect the client's progress handler feeds the same thread.
LAION_SPARK_PROGRESS sets the seconds between lines (default 15; 0 turns the lines off).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENV = "LAION_SPARK_PROGRESS"
DEFAULT_SECONDS = 15.0
WINDOW_SECONDS = 60.0  # the rate behind "time left": completions over the last minute
_announced: set[str] = set()
_labels: list[str] = []  # nested shown() blocks (the pipeline's steps inside the pipeline): the innermost names


@dataclass(frozen=True)
class Tasks:
    """The running stages' tasks at one moment: their total, completed and running counts."""

    total: int
    done: int
    running: int
    stages: int


def is_connect(spark) -> bool:
    return type(spark).__module__.startswith("pyspark.sql.connect")


def interval() -> float:
    """LAION_SPARK_PROGRESS -> seconds between progress lines (0: none)."""
    raw = os.environ.get(ENV, "")
    try:
        return max(0.0, float(raw)) if raw.strip() else DEFAULT_SECONDS
    except ValueError:
        log.warning("%s=%r is not a number of seconds: using %s", ENV, raw, DEFAULT_SECONDS)
        return DEFAULT_SECONDS


def ui_address(spark) -> str | None:
    """-> the Spark UI's URL of a classic session (None with the UI off, or on Connect: the UI is the
    server's, at an address only the server knows)."""
    if is_connect(spark):
        return None
    try:
        return spark.sparkContext.uiWebUrl  # display only (module docstring)
    except Exception:  # noqa: BLE001 (a stopped context, a Py4J error: no UI to show, never a failed stage)
        return None


def announce(spark) -> None:
    """Log the Spark UI's address once per application."""
    if is_connect(spark):
        return
    try:
        app = spark.sparkContext.applicationId  # display only (module docstring); Connect returned above
    except Exception:  # noqa: BLE001 (as in ui_address)
        return
    if app in _announced:
        return
    _announced.add(app)
    url = ui_address(spark)
    log.info("Spark UI: %s (application %s)", url or "off (spark.ui.enabled=false)", app)


def _classic_tasks(spark) -> Tasks | None:
    tracker = spark.sparkContext.statusTracker()  # display only (module docstring)
    infos = [i for i in (tracker.getStageInfo(s) for s in tracker.getActiveStageIds()) if i is not None]
    if not infos:
        return None
    return Tasks(sum(i.numTasks for i in infos), sum(i.numCompletedTasks for i in infos),
                 sum(i.numActiveTasks for i in infos), len(infos))


class _ConnectFeed:
    """A Spark Connect progress handler -> the latest Tasks of the operation running (None between)."""

    def __init__(self):
        self.latest: Tasks | None = None

    def __call__(self, stages=None, inflight_tasks=0, operation_id=None, done=False, **_):
        stages = [s for s in (stages or []) if not s.done]
        if done or not stages:
            self.latest = None
            return
        self.latest = Tasks(sum(s.num_tasks for s in stages), sum(s.num_completed_tasks for s in stages),
                            inflight_tasks, len(stages))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def line(label: str, tasks: Tasks, rate: float | None) -> str:
    """Tasks + completions per second -> the progress line."""
    share = 100.0 * tasks.done / tasks.total if tasks.total else 0.0
    text = f"{label}: tasks {tasks.done}/{tasks.total} ({share:.0f}%) in {tasks.stages} running stage" \
           f"{'s' if tasks.stages != 1 else ''}, {tasks.running} running"
    left = tasks.total - tasks.done
    if rate:
        text += f", {rate:.2f} tasks/s, about {_duration(left / rate)} left in the running stages"
    else:
        text += ", time left: not known yet (no task finished)"
    return text


class _Rate:
    """Completed-task counts over time -> completions per second over the last WINDOW_SECONDS.

    Stages come and go, so completions are counted as increases of `done` and new stages reset the
    base instead of counting as negative progress."""

    def __init__(self):
        self.events: deque[tuple[float, int]] = deque()
        self.last_done: int | None = None

    def add(self, now: float, done: int) -> float | None:
        finished = done - self.last_done if self.last_done is not None and done >= self.last_done else 0
        self.last_done = done
        self.events.append((now, finished))
        while self.events and now - self.events[0][0] > WINDOW_SECONDS:
            self.events.popleft()
        span = now - self.events[0][0]
        count = sum(n for _, n in list(self.events)[1:])
        return count / span if span > 0 and count else None


@contextlib.contextmanager
def shown(spark, label: str, every: float | None = None):
    """While the block runs: a progress line every `every` seconds (LAION_SPARK_PROGRESS) from a daemon
    thread; the block's own work never waits on it."""
    every = interval() if every is None else every
    if spark is None or every <= 0:
        yield
        return
    if _labels:  # one thread already reports: it names this block while it runs
        _labels.append(label)
        try:
            yield
        finally:
            _labels.pop()
        return
    _labels.append(label)
    announce(spark)
    feed = None
    if is_connect(spark):
        feed = _ConnectFeed()
        spark.registerProgressHandler(feed)
        read = lambda: feed.latest  # noqa: E731
    else:
        read = lambda: _classic_tasks(spark)  # noqa: E731
    stop = threading.Event()

    def loop():
        rate, next_line = _Rate(), time.monotonic() + every
        while not stop.wait(min(1.0, every)):
            try:
                tasks = read()
            except Exception:  # noqa: BLE001 (a session going away: progress is not worth an error)
                return
            now = time.monotonic()
            per_second = rate.add(now, tasks.done) if tasks else None
            if tasks and tasks.total and now >= next_line:
                log.info("%s", line(_labels[-1] if _labels else label, tasks, per_second))
                next_line = now + every

    thread = threading.Thread(target=loop, name=f"progress-{label}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        _labels.clear()
        stop.set()
        thread.join(timeout=5)
        if feed is not None:
            with contextlib.suppress(Exception):
                spark.removeProgressHandler(feed)
