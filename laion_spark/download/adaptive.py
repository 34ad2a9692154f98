"""How many fetches a download task keeps in flight: a limit that follows throughput, CPU and errors.

INPUT  -> one window at a time (Window: seconds, rows finished, of them timeouts / connection errors,
          the worker process's CPU seconds, and the share of the window the limit held rows back)
OUTPUT -> the limit for the next window, between `floor` and `ceiling` (download.threads)

Why adapt: on the open web a fetch waits hundreds of milliseconds for its first byte, so a task needs
throughput x latency fetches in flight to keep its CPU busy (Little's law): ~100 on a latency of 0.5 s
at 200 rows/s, while on a loopback test or a fast CDN 16 are plenty and more only cost memory and
contention. No fixed number serves a loopback test, a 10 Mbps worker and a 10 Gbps node, so the limit
climbs (doubling at first, like TCP's slow start, then by a quarter) while all of these hold:
  - the limit is what holds rows back (they wait for a slot for most of the window), not the per-host
    cap or the input;
  - the worker's CPU is not busy (under cpu_busy of one core: the image work holds the GIL, so one
    Python worker does not use much more than one core);
  - the last step up raised throughput by at least `gain` (a link that is full, or a CPU taken by
    other workers, shows as no gain: the limit steps back down and waits `hold_windows` before trying
    again, since conditions change over a task).
It backs off by a third when the share of timeouts and connection errors rises well above its usual
share (an average over the windows that were not overloaded, and what it was before the last step
up): that is the sign of a link or a resolver overloaded by us. Dead hosts (a steady share of errors
on every crawl) do not count, since they do not rise with the limit.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """What one task did over one window of time."""

    seconds: float
    done: int  # rows finished
    overloads: int  # of them: timeouts and connection errors
    cpu_s: float  # CPU seconds the worker process used (all threads)
    binding: float  # share of the window during which rows waited because the limit was reached


@dataclass
class _Level:
    limit: int
    rate: float  # rows/s
    errors: float  # share of rows that were timeouts / connection errors


class Tuner:
    """Window -> the next limit (pure logic: no clock, no threads; pool.py's tuner thread feeds it)."""

    def __init__(self, start: int, ceiling: int, floor: int = 4, cpu_busy: float = 0.85, gain: float = 1.08,
                 min_rows: int = 16, hold_windows: int = 8):
        self.ceiling = max(1, ceiling)
        self.floor = min(max(1, floor), self.ceiling)
        self.limit = min(max(start, self.floor), self.ceiling)
        self.cpu_busy = cpu_busy
        self.gain = gain
        self.min_rows = min_rows
        self.hold_windows = hold_windows
        self._slow_start = True
        self._before: _Level | None = None  # the level before the last step up (None: no step pending)
        self._hold = 0
        self._errors: float | None = None  # the usual share of timeouts / connection errors
        self._pending: list[Window] = []
        # (limit, why) of the latest decisions, one a window: for the task's log line and tests (bounded:
        # a task may run for hours)
        self.history: collections.deque[tuple[int, str]] = collections.deque(maxlen=512)

    def update(self, window: Window) -> int:
        """One more window -> the limit to use now. Windows with too few rows are pooled with the next."""
        self._pending.append(window)
        w = _merge(self._pending)
        if w.done < self.min_rows and w.seconds < 8 * max(p.seconds for p in self._pending):
            return self.limit  # too little evidence yet (a slow start, or the end of the input)
        self._pending = []
        level = _Level(self.limit, w.done / w.seconds if w.seconds > 0 else 0.0,
                       w.overloads / w.done if w.done else 0.0)
        self._decide(level, w)
        return self.limit

    def _decide(self, now: _Level, w: Window) -> None:
        before = self._before
        base = self._errors if self._errors is not None else now.errors
        if before is not None:
            base = min(base, before.errors)
        if now.errors > base + 0.1 and now.errors > 1.5 * base and self.limit > self.floor:
            self._set(max(self.floor, math.floor(self.limit * 2 / 3)), "back off: errors rose")
            self._before, self._slow_start, self._hold = None, False, self.hold_windows
            return
        # the usual share of errors (dead hosts): follows the windows that were not overloaded, slowly,
        # so a crawl that moves into a region of dead hosts raises it (and the floor absorbs the rest)
        self._errors = now.errors if self._errors is None else 0.8 * self._errors + 0.2 * now.errors
        if before is not None and now.rate < before.rate * self.gain:
            # the last step up did not pay: go back to where we were and wait before probing again
            self._set(before.limit, "no gain: step back")
            self._before, self._slow_start, self._hold = None, False, self.hold_windows
            return
        self._before = None  # a step that paid (or no step): judge the next one against this level
        if self._hold:
            self._hold -= 1
            self.history.append((self.limit, "hold"))
            return
        cpu = w.cpu_s / w.seconds if w.seconds > 0 else 0.0
        if cpu >= self.cpu_busy:
            self.history.append((self.limit, "cpu busy"))
            return
        if w.binding < 0.5:
            self.history.append((self.limit, "not limited by the limit"))
            return
        if self.limit >= self.ceiling:
            self.history.append((self.limit, "at the ceiling"))
            return
        step = self.limit * 2 if self._slow_start else math.ceil(self.limit * 1.25)
        self._before = now
        self._set(min(self.ceiling, step), "step up")

    def _set(self, limit: int, why: str) -> None:
        self.limit = limit
        self.history.append((limit, why))


def _merge(windows: list[Window]) -> Window:
    return Window(sum(w.seconds for w in windows), sum(w.done for w in windows),
                  sum(w.overloads for w in windows), sum(w.cpu_s for w in windows),
                  sum(w.binding * w.seconds for w in windows) / max(1e-9, sum(w.seconds for w in windows)))
