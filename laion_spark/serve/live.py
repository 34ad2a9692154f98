"""Served indices that follow their files: a takedown (tombstones.npy, a new index_infos.json) or a rebuilt
index at the same URI -> the next answers come from the new version, never from the one before.

INPUT  -> {name: Searcher} opened at start, and how often (seconds) an index's files are looked at
OUTPUT -> `LiveIndices.get(name)`: the Searcher to answer from now: the one opened while its files are
          unchanged (Searcher.changed(), looked at no more than once per interval); a new one, opened
          and swapped in, once they changed; IndexUnavailable (the app answers 503) while the new one
          cannot be opened (files mid-rewrite, missing), until an attempt succeeds

Why refuse rather than keep the old Searcher when the new one fails: the old one does not know the new
tombstones, and a takedown must never leave a removed row answerable. Why one thread at a time looks:
the others go on with the current Searcher meanwhile (the change is at most one interval old), or are
refused once a change has been seen and the new Searcher is not open yet.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

CHECK_SECONDS = 1.0


class IndexUnavailable(Exception):
    """The files of a served index changed and the index cannot be opened again yet: answer 503."""


class _Live:
    """One served index: its current Searcher, or why there is none to answer from."""

    def __init__(self, searcher, interval: float):
        self.searcher = searcher  # the last one opened (its name, field and infos describe the index)
        self.interval = interval
        self.broken: str | None = None  # set: the files changed and no Searcher of them is open
        self.checked = time.monotonic()
        self.busy = False  # a thread is looking at the files (or opening them) now
        self.lock = threading.Lock()

    def get(self):
        with self.lock:
            due = not self.busy and time.monotonic() - self.checked >= self.interval
            if due:
                self.busy = True
            else:
                return self._current()
        try:
            self._refresh()
        finally:
            with self.lock:
                self.checked = time.monotonic()
                self.busy = False
        with self.lock:
            return self._current()

    def _current(self):
        if self.broken is not None:
            raise IndexUnavailable(self.broken)
        return self.searcher

    def _refresh(self) -> None:
        """Look at the files; when they changed (or the last reopening failed), open them again."""
        old = self.searcher
        if self.broken is None:
            try:
                if not old.changed():
                    return
            except Exception as exc:  # noqa: BLE001 - whatever reading the files raises: the index is unreadable
                log.debug("serve: %s: its files cannot be read: %s", old.name, exc)
            with self.lock:  # from now on, no answer from the old Searcher
                self.broken = (f"index {old.name!r} changed on disk (a takedown or a rebuild) and is being "
                               "opened again; retry in a moment")
        try:
            new = old.reopen()
        except Exception as exc:  # noqa: BLE001 - files mid-rewrite or missing: refuse until they open
            with self.lock:
                self.broken = (f"index {old.name!r} changed on disk and cannot be opened now "
                               f"({type(exc).__name__}: {exc}); it is tried again on the next request")
            log.warning("serve: index %s changed and cannot be opened again: %s: %s", old.name,
                        type(exc).__name__, exc)
            return
        with self.lock:
            self.searcher, self.broken = new, None
        log.info("serve: index %s changed on disk and was opened again (%s tombstoned ids)", old.name,
                 len(getattr(new, "tombstones", ())))


class LiveIndices:
    """{name: Searcher} -> each kept current as its files change (thread-safe)."""

    def __init__(self, searchers: dict, interval: float = CHECK_SECONDS):
        self._live = {name: _Live(s, interval) for name, s in searchers.items()}

    def __contains__(self, name) -> bool:
        return name in self._live

    def __iter__(self):
        return iter(self._live)

    def __len__(self) -> int:
        return len(self._live)

    def last_opened(self) -> dict:
        """-> {name: the Searcher last opened}: what describes each index (field, model, infos), not what
        answers (that is get())."""
        return {name: live.searcher for name, live in self._live.items()}

    def get(self, name: str):
        """-> the Searcher that answers for name now; IndexUnavailable while its changed files cannot be opened."""
        return self._live[name].get()
