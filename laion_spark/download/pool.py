"""A bounded thread pool that caps concurrent work per host: the politeness core of a download task.

INPUT  -> (host, item) pairs from one producer, a function item -> result, thread and per-host limits
OUTPUT -> results, in completion order, from `HostPool.take()` / `drain()`; at most `per_host` items of one host
          are in flight at any moment, at most `threads` in all, and at most `max_pending` items are
          queued (so a task reads its input as fast as it downloads, not all at once); no item of a
          host that asked for a pause (HostPauses: 429/503 Retry-After) starts before the pause ends

Why not concurrent.futures: a plain executor would hand a free thread the next row even when that
row's host is already at its cap, so a task with one big host would either break the cap or block
every thread behind it. Here a free thread takes the oldest item of any host that is under its cap,
round-robin over hosts, so one slow or crowded site cannot stall the rest.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

# --- the one host function ---------------------------------------------------------------------------
# One host per URL for the partitioning (transform.host_column, in Spark SQL), the per-host cap and the
# host pauses (host_of, in Python). Why a regex: the same pattern string runs in Python's re and in
# Spark's regexp_extract (java.util.regex), and it only uses constructs both engines read alike
# (explicit ASCII classes, greedy/lazy quantifiers, alternation; no \s, \w, '.', '$', no case
# folding), on the URL with a "/" appended in both, so the two answers are the same by construction
# (tests/test_download_host.py also compares them on tricky and random URLs). What it reads is where
# urllib3 (so requests) connects: the authority ends at / \ ? #; userinfo is cut at its last '@';
# [IPv6] keeps its brackets; the port and trailing dots go. Lower-casing is ASCII-only (translate in
# both: Python's and Java's Unicode lower() differ). No host ('not a url', a missing '//') is ''.
HOST_PATTERN = (r"^[\x00-\x20]*[A-Za-z][A-Za-z0-9+.-]*://(?:[^/\\?#]*@)?"
                r"(\[[^\]/\\?#]*\]|[^\x00-\x20:/\\?#@]*?)\.*[\x00-\x20:/\\?#]")
ASCII_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
ASCII_LOWER = "abcdefghijklmnopqrstuvwxyz"
_HOST_RE = re.compile(HOST_PATTERN)
_LOWER = str.maketrans(ASCII_UPPER, ASCII_LOWER)


def host_of(url) -> str:
    """URL -> its host key: lower-case (ASCII), no port, no userinfo, no trailing dot; '' when none.

    The Python twin of transform.host_column (see HOST_PATTERN); never raises.
    """
    if not isinstance(url, str):
        return ""
    m = _HOST_RE.match(url + "/")
    return m.group(1).translate(_LOWER) if m else ""


class HostPauses:
    """host -> until when it asked us to wait (429/503 with Retry-After); one per task, thread-safe.

    The Fetcher writes it (pause) and waits on it before each request (remaining); the HostPool reads
    it so that no queued row of a paused host is handed to a thread meanwhile. Every pause asked is
    also recorded (host, asked seconds, seconds it extended the pause by) for the job's summary.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._until: dict[str, tuple[float, int | None]] = {}  # host -> (monotonic end, http status)
        self._records: list[tuple[str, float, float]] = []  # not yet taken by take_records()

    def pause(self, host: str, seconds: float, http_status: int | None = None) -> None:
        now = time.monotonic()
        end = now + max(0.0, seconds)
        with self._lock:
            old_end = self._until.get(host, (0.0, None))[0]
            added = max(0.0, end - max(old_end, now))  # the union of overlapping pauses counts once
            if end > old_end:
                self._until[host] = (end, http_status)
            self._records.append((host, float(seconds), added))

    def remaining(self, host: str) -> tuple[float, int | None]:
        """-> (seconds this host is still paused for, the HTTP status that asked), (0.0, None) if not paused."""
        with self._lock:
            got = self._until.get(host)
            if got is None:
                return 0.0, None
            left = got[0] - time.monotonic()
            if left <= 0:
                del self._until[host]
                return 0.0, None
            return left, got[1]

    def take_records(self) -> list[tuple[str, float, float]]:
        """The pauses asked since the last call: [(host, Retry-After seconds, seconds added to the pause)]."""
        with self._lock:
            out, self._records = self._records, []
            return out


PAUSE_HOST = "_download_pause_host"  # the report's columns (download_partition(report=True) only)
PAUSE_COUNTS = ("_download_pause_requests", "_download_pause_s", "_download_pause_max_s")


class PauseReport:
    """A task's host-pause records, frame by frame -> the report columns of each frame it releases: every
    host that asked this task for a pause named once, one host a row (PAUSE_HOST), and the frame's
    requests, seconds paused and longest pause asked on its first row (PAUSE_COUNTS; 0 elsewhere).

    Why one host a row: the job counts hosts with an HLL sketch in an Observation, constant size on the
    driver however many hosts paused (a list of them was not). Every host named has a row of its own in
    the task: the row whose fetch was answered with the pause is released in this frame or a later one,
    so a host not named in a full frame is named in a later one."""

    def __init__(self) -> None:
        self.named: set[str] = set()  # bounded by the task's hosts
        self.waiting: list[str] = []

    def columns(self, records, rows: int) -> dict[str, list]:
        """take_records()'s list + the frame's rows -> {column: values for the frame's rows}."""
        for host, _, _ in records:
            if host not in self.named:
                self.named.add(host)
                self.waiting.append(host)
        hosts = [None] * rows
        take, self.waiting = self.waiting[:rows], self.waiting[rows:]
        hosts[: len(take)] = take
        counts = [(len(records), 0), (round(sum(p for _, _, p in records), 3), 0.0),
                  (round(max((a for _, a, _ in records), default=0.0), 3), 0.0)]
        out = {PAUSE_HOST: hosts}
        for name, (first, rest) in zip(PAUSE_COUNTS, counts, strict=True):
            out[name] = [first] + [rest] * (rows - 1) if rows else []
        return out


def pause_metrics():
    """-> the Observation's aggregates of the report columns: an HLL sketch of the hosts, the sums, the max."""
    from pyspark.sql import functions as F

    requests, paused, longest = PAUSE_COUNTS
    return [F.hll_sketch_agg(PAUSE_HOST).alias("pause_hosts"), F.sum(requests).alias("pause_requests"),
            F.sum(paused).alias("paused_s"), F.max(longest).alias("pause_max_s")]


def pause_summary(spark, observed: list[dict]) -> dict:
    """The Observations' values (one per download_images call: per chunk) -> {hosts, requests, paused_s,
    max_s}: hosts that asked for a pause (the chunks' sketches united: a host in several chunks counts
    once), how many times, seconds paused in all (summed over tasks) and the longest pause asked."""
    from pyspark.sql import functions as F

    sketches = [(bytearray(o["pause_hosts"]),) for o in observed if o.get("pause_hosts") is not None]
    hosts = 0
    if sketches:
        hosts = spark.createDataFrame(sketches, "s binary").agg(
            F.hll_sketch_estimate(F.hll_union_agg("s")).alias("n")).first()["n"]
    return {"hosts": int(hosts or 0), "requests": int(sum(o.get("pause_requests") or 0 for o in observed)),
            "paused_s": round(float(sum(o.get("paused_s") or 0 for o in observed)), 3),
            "max_s": round(float(max((o.get("pause_max_s") or 0 for o in observed), default=0.0)), 3)}


class HostPool:
    """submit(host, item) from the producer thread; take()/drain() give fn(item) for every item."""

    def __init__(self, fn: Callable, threads: int, per_host: int, max_pending: int | None = None,
                 pauses: HostPauses | None = None, hold_s: float = 0.0, tuner=None,
                 overload: Callable | None = None, tune_every_s: float = 1.0):
        """pauses: the task's HostPauses; a host paused for at most hold_s more keeps its queued items
        until the pause ends (a longer pause: they are handed out, and the fetcher fails them at once).
        tuner: an adaptive.Tuner; then at most tuner.limit items are in flight (of `threads` threads),
        and a thread feeds it a Window every tune_every_s; overload(result) -> True for the results
        that count as timeouts / connection errors."""
        self._fn = fn
        self._tuner = tuner
        self._limit = tuner.limit if tuner is not None else threads
        self._overload = overload
        self._tune_every_s = tune_every_s
        self._total = 0  # items in flight, all hosts
        self._done = 0  # items finished (for the tuner)
        self._overloads = 0
        self._pauses = pauses
        self._hold_s = hold_s
        self._parked: dict[str, float] = {}  # paused hosts taken out of _ready -> when to put them back
        self._per_host = per_host
        self._max_pending = max_pending or threads * 4
        # one lock, two conditions: a submit wakes one worker and a finish wakes the producer, not
        # every thread (notify_all on one condition woke 32 threads per row: measurable CPU)
        self._mutex = threading.Lock()
        self._work_ready = threading.Condition(self._mutex)
        self._result_ready = threading.Condition(self._mutex)
        self._queues: dict[str, collections.deque] = {}
        self._ready: collections.deque[str] = collections.deque()  # hosts with queued items, under cap
        self._in_flight: collections.Counter = collections.Counter()
        self._pending = 0  # submitted, result not yet taken by results()
        self._results: collections.deque = collections.deque()
        self._closed = False
        self._stopped = False
        self._threads = [threading.Thread(target=self._work, name=f"download-{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()
        if tuner is not None:
            self._tuner_thread = threading.Thread(target=self._tune, name="download-tuner", daemon=True)
            self._tuner_thread.start()

    def set_limit(self, limit: int) -> None:
        """Allow `limit` items in flight (at most the thread count)."""
        with self._mutex:
            grew = limit > self._limit
            self._limit = max(1, min(limit, len(self._threads)))
            if grew and self._ready:
                self._work_ready.notify_all()

    # --- producer side (one thread: submits items and takes results) ---------------------------
    @property
    def full(self) -> bool:
        """True while max_pending items are unfinished or untaken: take results before submitting."""
        return self._pending >= self._max_pending

    def submit(self, host: str, item) -> None:
        """Queue one item for a worker thread (never blocks; check `full` first)."""
        with self._mutex:
            self._pending += 1
            queue = self._queues.get(host)
            if queue is None:
                queue = self._queues[host] = collections.deque()
            queue.append(item)
            if len(queue) == 1 and self._in_flight[host] < self._per_host and host not in self._parked:
                self._ready.append(host)
                self._work_ready.notify()

    def take(self, wait: bool = True) -> list:
        """Results finished so far; with wait, blocks until there is at least one (or nothing is pending)."""
        with self._mutex:
            while wait and not self._results and self._pending:
                self._result_ready.wait()
            out = list(self._results)
            self._results.clear()
            self._pending -= len(out)
            return out

    def drain(self) -> Iterator[list]:
        """After the last submit: lists of results until every item is done; then the threads exit."""
        with self._mutex:
            self._closed = True
            self._work_ready.notify_all()
        while self._pending:
            yield self.take()
        self.stop()

    def stop(self) -> None:
        """Stop the threads (items not started are dropped: only for a task that is being killed)."""
        with self._mutex:
            self._stopped = True
            self._closed = True
            self._work_ready.notify_all()
            self._result_ready.notify_all()
        for t in self._threads:
            t.join(timeout=60)
        tuner_thread = getattr(self, "_tuner_thread", None)
        if tuner_thread is not None:
            tuner_thread.join(timeout=5)

    # --- worker side ---------------------------------------------------------------------------
    def _paused(self, host: str) -> bool:
        """Under the mutex: park `host` if it is paused for at most hold_s more -> True if parked."""
        if self._pauses is None:
            return False
        left, _ = self._pauses.remaining(host)
        if 0 < left <= self._hold_s:
            self._parked[host] = time.monotonic() + left
            # threads asleep without a timeout must now wake when the pause ends (rare: notify_all is cheap)
            self._work_ready.notify_all()
            return True
        return False

    def _unpark(self) -> float | None:
        """Under the mutex: hosts whose pause is over are ready again -> seconds to the next one, or None."""
        if not self._parked:
            return None
        now = time.monotonic()
        for host, until in list(self._parked.items()):
            if until <= now:
                del self._parked[host]
                if self._queues.get(host) and self._in_flight[host] < self._per_host:
                    self._ready.append(host)
        return min(self._parked.values()) - now if self._parked else None

    def _next(self):
        with self._mutex:
            while True:
                wake_in = self._unpark()
                while self._ready and self._paused(self._ready[0]):
                    self._ready.popleft()
                if (self._ready and self._total < self._limit) or self._stopped:
                    break
                if self._closed and not self._queues:
                    return None  # nothing queued and nothing more coming
                self._work_ready.wait(wake_in)
            if self._stopped:
                return None
            host = self._ready.popleft()
            queue = self._queues[host]
            item = queue.popleft()
            self._in_flight[host] += 1
            self._total += 1
            # the host stays ready (at the back: round-robin) while it has items and room
            if queue and self._in_flight[host] < self._per_host:
                self._ready.append(host)
            elif not queue:
                del self._queues[host]
                if self._closed and not self._queues:
                    self._work_ready.notify_all()  # the last item is taken: idle threads may exit
            if self._ready and self._total < self._limit:
                self._work_ready.notify()  # more work than this thread: pass the wake-up on
            return host, item

    def _finish(self, host: str, result) -> None:
        with self._mutex:
            self._results.append(result)
            self._done += 1
            if self._overload is not None and self._overload(result):
                self._overloads += 1
            at_limit = self._total >= self._limit
            self._total -= 1
            self._in_flight[host] -= 1
            if not self._in_flight[host]:
                del self._in_flight[host]
            queue = self._queues.get(host)
            # the host was at its cap (not in _ready) and still has work: it is ready again
            if queue and self._in_flight[host] == self._per_host - 1 and host not in self._parked:
                self._ready.append(host)
                self._work_ready.notify()
            elif at_limit and self._ready:  # a slot under the limit opened for hosts already waiting
                self._work_ready.notify()
            self._result_ready.notify()

    def _work(self) -> None:
        while True:
            got = self._next()
            if got is None:
                return
            host, item = got
            try:
                result = self._fn(item)
            except Exception as exc:  # fn turns failures into rows; this is the last guard (logged)
                log.exception("download worker: unexpected error")
                result = exc
            self._finish(host, result)

    # --- the tuner (adaptive in-flight limit) ------------------------------------------------
    def _tune(self) -> None:
        """Every tune_every_s: the window's counts -> tuner.update -> the new limit. The window after a
        change is skipped: fetches started by a step up take about one latency to show in throughput."""
        from laion_spark.download.adaptive import Window

        sample_s = min(0.1, self._tune_every_s / 4)
        start, cpu0 = time.monotonic(), time.process_time()
        done0 = over0 = 0
        samples = binding = 0
        settle = False
        while True:
            with self._mutex:
                if self._stopped or (self._closed and not self._queues):
                    return
                samples += 1
                binding += bool(self._ready) and self._total >= self._limit
            time.sleep(sample_s)
            now = time.monotonic()
            if now - start < self._tune_every_s:
                continue
            with self._mutex:
                done, over = self._done, self._overloads
            cpu = time.process_time()
            window = Window(now - start, done - done0, over - over0, cpu - cpu0, binding / max(1, samples))
            start, cpu0, done0, over0, samples, binding = now, cpu, done, over, 0, 0
            if settle:
                settle = False
                continue
            limit = self._tuner.update(window)
            if limit != self._limit:
                self.set_limit(limit)
                settle = True
