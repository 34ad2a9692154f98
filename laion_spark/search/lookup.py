"""Parquet rows by sample_id, read where they lie: nothing per row is held in memory.

INPUT  -> a folder of parquet files (any fsspec URI) with a sample_id column; a cache folder (used only when
          the table's row groups are not ordered by sample_id); sample_ids to leave out (tombstones)
OUTPUT -> `ParquetLookup.rows(ids, columns)`: one dict per id (None where the table has no such row, or
          the id is left out); `.value(id, column)`: one cell, or NOT_FOUND

On open only the files' footers are read (in parallel for a remote store): per row group, its file, its
number in the file, its rows and the min / max of sample_id. That is the state held: a few numbers per
row group, whatever the rows. Two ways to find a row:

- ordered (the index's metadata/: range-partitioned by sample_id and sorted in each file): the row groups'
  [min, max] ranges, put in order, do not overlap (or overlap a few at a time), so the row groups that can
  hold an id are found by binary search in those ranges; the id's row by binary search in that row
  group's sample_id column, read alone first: an id that is absent costs that column only.
- not ordered (download writes images tables in host order; metadata of an older index): every row
  group's range spans nearly every id, so the ranges tell nothing. Then a locator is built once in the
  cache, with bounded memory: `ids.npy` (the ids, sorted) and `pos.npy` (each one's row number in the
  table), memory-mapped: 16 bytes a row on local disk, not in memory; a lookup is a binary search there.
  It is built from the sample_id column alone, one row group at a time (pass 1: the ids in table order,
  to a scratch file), cut into buckets at quantiles of a sample (each about BUCKET_ROWS ids), scattered
  bucket by bucket (pass 2) and each bucket sorted alone (pass 3). It is kept while the table's layout
  (files, rows per row group) is the same: a file rewritten with the same layout (a takedown nulling
  image bytes) is checked against it, its sample_id column alone, and the locator kept when it agrees.

Reads: only the columns asked for of the row groups that can hold the ids, each read through its own
file handle (a memory map for a local file), under no lock that other row groups wait on. The row
groups read last stay in a small LRU bounded by bytes; two requests for one row group at once make one
read (the second waits for it, not for any other read). Every read checks that the file's row group is
still the one the footers said (rows, sample_id min / max) and that the row found holds the id asked: a
file rewritten since (a takedown) makes the lookup open the table again and retry, never answer from a
row of another id.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from laion_spark.io import fsspec_uri

log = logging.getLogger(__name__)

SAMPLE_ID = "sample_id"
CACHE_BYTES = 64 * 2**20  # row groups kept in memory (at least the last one read, whatever its size)
MAX_GROUPS_PER_ID = 4  # ordered: at most this many row groups' ranges hold any one id
CHUNK_ROWS = 1 << 22  # locator build: ids handled at once (32 MB of int64)
BUCKET_ROWS = 1 << 22  # locator build: ids sorted at once (about 64 MB of ids and positions)
SAMPLE_ROWS = 1 << 20  # locator build: ids sampled for the bucket bounds
FOOTER_THREADS = 8
_DONE = "_done"
NOT_FOUND = object()  # value(): the table has no row of that id

# what tells one version of a file from the next, as each filesystem reports it (local: inode and times;
# s3: ETag; gcs: generation): a file written beside and moved over the old one differs in one of them
_VERSION_KEYS = ("size", "ino", "mtime", "created", "ETag", "LastModified", "generation", "updated")


class TableError(ValueError):
    """A folder that cannot be looked up by sample_id (no parquet files, a column missing)."""


class TableUnavailable(Exception):
    """The table's files changed and cannot be read again yet (mid-rewrite): answer 503, not old rows."""


class _Stale(Exception):
    """A file is not what the footers read at open said (rewritten since): open the table again."""


def parquet_files(fs, root: str) -> dict[str, tuple]:
    """A table folder (or one file) -> {its parquet file: the file's version}, in name order, without the
    hidden ones (Spark's _temporary/, _SUCCESS, .crc; a takedown's `.name` written beside a file)."""
    listing = {root: fs.info(root)} if fs.isfile(root) else fs.find(root, detail=True)
    files = {}
    for path in sorted(listing):
        rel = path[len(root.rstrip("/")) + 1:]
        if any(part.startswith(("_", ".")) for part in rel.split("/") if part):
            continue
        if path.endswith(".parquet"):
            files[path] = tuple(str(listing[path].get(k)) for k in _VERSION_KEYS)
    return files


@dataclass
class _Snapshot:
    """One version of the table's files, from their footers: per row group (in table order: files by
    name, row groups in file order) its file, its number in the file, its first row in the table and
    the min / max of the key (has: whether the footer had them)."""

    files: dict  # {path: version}
    paths: list
    file: np.ndarray  # int32 per row group
    group: np.ndarray  # int32 per row group
    start: np.ndarray  # int64, one more than row groups: start[g] .. start[g + 1] are row group g's rows
    lo: np.ndarray
    hi: np.ndarray
    has: np.ndarray  # bool
    columns: list  # every file's columns, in the order first seen
    ordered: bool = False
    order: np.ndarray | None = None  # ordered: row groups by (lo, hi), and their lo / hi in that order
    lo_sorted: np.ndarray | None = None
    hi_sorted: np.ndarray | None = None
    locator: tuple | None = None  # not ordered: (ids, pos) memory-mapped

    @property
    def rows(self) -> int:
        return int(self.start[-1])

    def group_rows(self, g: int) -> int:
        return int(self.start[g + 1] - self.start[g])


def _stats(rg, col: int) -> tuple[int, int, bool, bool]:
    """A footer's row group, the key's column number -> (min, max, whether known, whether all null)."""
    chunk = rg.column(col)
    st = chunk.statistics if chunk.is_stats_set else None
    if st is not None and st.has_min_max:
        return int(st.min), int(st.max), True, False
    all_null = st is not None and st.has_null_count and st.null_count == rg.num_rows
    return 0, 0, False, all_null


def _key_column(md, key: str) -> int | None:
    for i in range(md.num_columns):
        if md.schema.column(i).path == key:
            return i
    return None


def _ordered(lo: np.ndarray, hi: np.ndarray, has: np.ndarray, live: np.ndarray):
    """-> (row groups by (lo, hi), their lo, their hi) when the row groups with rows have key ranges that,
    in that order, both rise and hold any one id at most MAX_GROUPS_PER_ID at a time; else None."""
    if not np.all(has[live]):
        return None
    idx = np.flatnonzero(live)
    order = idx[np.lexsort((hi[idx], lo[idx]))]
    lo_s, hi_s = lo[order], hi[order]
    if len(order) > 1 and not np.all(hi_s[1:] >= hi_s[:-1]):
        return None
    if len(order):  # how many ranges, from range i on, start at or before range i's end
        depth = np.searchsorted(lo_s, hi_s, side="right") - np.arange(len(order))
        if int(depth.max()) > MAX_GROUPS_PER_ID:
            return None
    return order, lo_s, hi_s


def _keys(column) -> tuple[np.ndarray, np.ndarray]:
    """An Arrow key column -> (int64 values, mask of the rows that hold one: not null)."""
    import pyarrow.compute as pc

    valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    values = pc.fill_null(column, 0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return values, valid


class _GroupCache:
    """Row groups read (Arrow tables), the last ones kept up to a byte bound; one read per key at once."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict = OrderedDict()
        self._sizes: dict = {}
        self._loading: dict = {}
        self._lock = threading.Lock()

    def get(self, key, load):
        while True:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
                event = self._loading.get(key)
                mine = event is None
                if mine:
                    event = self._loading[key] = threading.Event()
            if mine:
                break
            event.wait()  # another thread reads this row group: its result, or (it failed) a read of our own
        try:
            value = load()
            with self._lock:
                self._items[key] = value
                self._sizes[key] = value.nbytes
                while len(self._items) > 1 and sum(self._sizes.values()) > self.max_bytes:
                    old, _ = self._items.popitem(last=False)
                    del self._sizes[old]
            return value
        finally:
            with self._lock:
                del self._loading[key]
            event.set()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._sizes.clear()

    def __len__(self) -> int:
        return len(self._items)


class ParquetLookup:
    """One parquet folder opened for lookups by sample_id (thread-safe). See the module's docstring.

    check_interval: seconds between looks at the file listing (a change: the table opened again and the
    row groups kept dropped); None: no looks, the table is opened again only when a read finds a file
    rewritten. error, label, hint: the exception and words of a table that cannot be looked up."""

    def __init__(self, uri: str, cache: str = "", key: str = SAMPLE_ID, required: tuple = (), exclude=None,
                 cache_bytes: int = CACHE_BYTES, check_interval: float | None = None,
                 error: type[Exception] = TableError, label: str = "", hint: str = "",
                 chunk_rows: int = CHUNK_ROWS, bucket_rows: int = BUCKET_ROWS, sample_rows: int = SAMPLE_ROWS):
        import fsspec

        from laion_spark.search import local

        self.uri = uri
        self.cache = cache
        self.key = key
        self.required = tuple(dict.fromkeys((key, *required)))
        self.exclude = np.unique(np.asarray([] if exclude is None else exclude, dtype=np.int64))
        self.error, self.label, self.hint = error, label or uri, hint
        self.build = {"chunk_rows": chunk_rows, "bucket_rows": bucket_rows, "sample_rows": sample_rows}
        self._fs, self._root = fsspec.core.url_to_fs(fsspec_uri(uri))
        self._mmap = local.is_local(uri)  # a FUSE mount of a store is read, not memory-mapped
        self._groups = _GroupCache(cache_bytes)
        self._interval = check_interval
        self._checked = time.monotonic()
        self._broken: str | None = None
        self._lock = threading.Lock()  # one thread looks at the listing or opens the table at a time
        self._count_lock = threading.Lock()
        self.row_group_reads = 0  # row groups read from storage (a column set of one row group: one read)
        self.rows_read = 0  # rows decoded from storage, all reads together
        self.reopened = 0  # times the table was opened again after its files changed
        self._snap = self._open(parquet_files(self._fs, self._root))

    # ------------------------------------------------------------------ opening
    def _footer(self, path: str):
        import pyarrow.parquet as pq

        if self._mmap:
            return pq.read_metadata(path, memory_map=True)
        with self._open_file(path) as fh:
            return pq.ParquetFile(fh).metadata

    def _open_file(self, path: str):
        """A file of a store (or of a FUSE mount), opened without read-ahead: a footer or a column chunk is
        one ranged read of its own bytes, not of a block of the bytes after it too."""
        if type(self._fs).__name__ == "LocalFileSystem":
            return self._fs.open(path, "rb")
        return self._fs.open(path, "rb", cache_type="none")

    def _open(self, files: dict) -> _Snapshot:
        if not files:
            raise self.error(f"{self.label} holds no parquet files{f' ({self.hint})' if self.hint else ''}")
        paths = list(files)
        if len(paths) > 1 and not self._mmap:
            with concurrent.futures.ThreadPoolExecutor(min(FOOTER_THREADS, len(paths))) as pool:
                footers = list(pool.map(self._footer, paths))
        else:
            footers = [self._footer(p) for p in paths]
        file_of, group_of, rows, lo, hi, has, empty, columns = [], [], [], [], [], [], [], {}
        for f, (path, md) in enumerate(zip(paths, footers, strict=True)):
            names = md.schema.to_arrow_schema().names
            missing = [c for c in self.required if c not in names]
            if missing:
                raise self.error(f"{self.label}: {path} has no {' or '.join(missing)} column"
                                 f"{f' ({self.hint})' if self.hint else ''}; its columns: {names}")
            columns.update(dict.fromkeys(names))
            col = _key_column(md, self.key)
            for g in range(md.num_row_groups):
                rg = md.row_group(g)
                g_lo, g_hi, known, all_null = _stats(rg, col)
                file_of.append(f)
                group_of.append(g)
                rows.append(rg.num_rows)
                lo.append(g_lo)
                hi.append(g_hi)
                has.append(known)
                empty.append(all_null or rg.num_rows == 0)
        start = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(np.asarray(rows, dtype=np.int64), out=start[1:])
        snap = _Snapshot(files=dict(files), paths=paths, file=np.asarray(file_of, dtype=np.int32),
                         group=np.asarray(group_of, dtype=np.int32), start=start,
                         lo=np.asarray(lo, dtype=np.int64), hi=np.asarray(hi, dtype=np.int64),
                         has=np.asarray(has, dtype=bool), columns=list(columns))
        found = _ordered(snap.lo, snap.hi, snap.has, ~np.asarray(empty, dtype=bool))
        if found is not None:
            snap.ordered = True
            snap.order, snap.lo_sorted, snap.hi_sorted = found
        else:
            snap.locator = self._locator(snap)
        return snap

    # ------------------------------------------------------------------ the locator (not ordered)
    def _layout_key(self, snap: _Snapshot) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([self.key, snap.paths]).encode())
        h.update(np.ascontiguousarray(snap.file).tobytes() + np.ascontiguousarray(snap.start).tobytes())
        h.update(self.exclude.tobytes())
        return h.hexdigest()[:16]

    def _locator(self, snap: _Snapshot) -> tuple:
        from laion_spark.search.local import default_cache_dir

        root = self.cache or os.path.join(default_cache_dir(), "lookup",
                                          hashlib.sha256(fsspec_uri(self.uri).encode()).hexdigest()[:16])
        folder = os.path.join(root, f"locator-{self._layout_key(snap)}")
        done = os.path.join(folder, _DONE)
        located = None
        if os.path.exists(done):
            try:
                with open(done) as fh:
                    built = json.load(fh)
                versions, kept = built["versions"], built["kept"]
                located = (np.load(os.path.join(folder, "ids.npy"), mmap_mode="r"),
                           np.load(os.path.join(folder, "pos.npy"), mmap_mode="r"))
            except (OSError, ValueError, KeyError, TypeError) as exc:  # cut short, or an older format: built again
                log.warning("lookup %s: the locator in %s cannot be read (%s); building it again", self.label,
                            folder, exc)
        if located is not None:
            changed = [p for p in snap.paths if versions.get(p) != list(snap.files[p])]
            if not changed or self._agrees(snap, located, {p: kept.get(p) for p in changed}):
                if changed:
                    log.info("lookup %s: %d file(s) rewritten with the same rows: the locator in %s is kept",
                             self.label, len(changed), folder)
                    _write_done(folder, snap.files, kept)
                return located
            log.info("lookup %s: rewritten files hold other rows: building the locator again", self.label)
        log.info("lookup %s: its row groups are not ordered by %s (each spans most ids): building an on-disk "
                 "locator of its %d rows in %s (once per layout; 16 bytes a row on disk, memory-mapped)",
                 self.label, self.key, snap.rows, folder)
        t = time.time()
        _build_locator(snap, folder, self._read_keys, self.exclude, **self.build)
        log.info("lookup %s: locator built in %.1f s", self.label, time.time() - t)
        return (np.load(os.path.join(folder, "ids.npy"), mmap_mode="r"),
                np.load(os.path.join(folder, "pos.npy"), mmap_mode="r"))

    def _read_keys(self, snap: _Snapshot, g: int) -> tuple[np.ndarray, np.ndarray]:
        """Row group g's key column, read now (not kept): (int64 values, not-null mask)."""
        return _keys(self._read(snap, g, (self.key,)).column(self.key))

    def _agrees(self, snap: _Snapshot, located: tuple, changed: dict) -> bool:
        """changed: {rewritten file: how many ids the locator places in it} -> whether each holds, row for
        row, the ids the locator places there (as many, each where the locator says)."""
        ids, pos = located
        for path, count in changed.items():
            f = snap.paths.index(path)
            held = 0
            for g in np.flatnonzero(snap.file == f).tolist():
                try:
                    keys, valid = self._read_keys(snap, g)
                except _Stale:
                    return False
                where = np.arange(snap.start[g], snap.start[g + 1], dtype=np.int64)
                keep = valid & ~_isin(keys, self.exclude)
                keys, where = keys[keep], where[keep]
                held += len(keys)
                i = np.searchsorted(ids, keys)
                ok = i < len(ids)
                ok[ok] = (np.asarray(ids[i[ok]]) == keys[ok]) & (np.asarray(pos[i[ok]]) == where[ok])
                for k in np.flatnonzero(~ok).tolist():  # duplicate ids: any of the id's places
                    lo, hi = np.searchsorted(ids, keys[k]), np.searchsorted(ids, keys[k], side="right")
                    if where[k] not in np.asarray(pos[lo:hi]):
                        return False
            if held != count:  # an id the locator places in this file is no longer there
                return False
        return True

    # ------------------------------------------------------------------ following the files
    def _reopen(self, why: str, seen: _Snapshot | None = None) -> None:
        """Open the table's files again (under the lock), the row groups kept dropped; a thread that finds
        the table already opened again since it saw `seen` does nothing."""
        if seen is not None and self._snap is not seen:
            return
        self._groups.clear()
        self._broken = f"{self.label} changed ({why}) and cannot be read again yet; retry in a moment"
        try:
            self._snap = self._open(parquet_files(self._fs, self._root))
        except Exception as exc:  # noqa: BLE001 - files mid-rewrite or gone: refuse until they read
            log.warning("lookup %s changed and cannot be opened again: %s: %s", self.label, type(exc).__name__, exc)
            raise TableUnavailable(f"{self._broken}: {type(exc).__name__}: {exc}") from None
        self._broken = None
        self.reopened += 1
        log.info("lookup %s changed (%s); opened again: %d rows", self.label, why, len(self))

    def snapshot(self) -> _Snapshot:
        """-> the version of the files to read from now: the listing is looked at first when that is due
        (once per check_interval); after a failed reopening, the table is opened again first (once per
        check_interval; without one, at every call), TableUnavailable until it opens."""
        if self._broken is None and (self._interval is None or time.monotonic() - self._checked < self._interval):
            return self._snap
        with self._lock:
            now = time.monotonic()
            due = self._interval is None or now - self._checked >= self._interval
            if not due:  # another thread looked meanwhile
                if self._broken is not None:
                    raise TableUnavailable(self._broken)
                return self._snap
            self._checked = now
            if self._broken is not None:
                self._reopen("a reopening failed")
                return self._snap
            try:
                files = parquet_files(self._fs, self._root)
            except Exception as exc:  # noqa: BLE001 - the folder cannot be listed: its files are not known
                files = {"<unlisted>": (f"{type(exc).__name__}: {exc}",)}
            if files != self._snap.files:
                self._reopen("its files were rewritten")
            return self._snap

    def __len__(self) -> int:
        """Rows in the table, as its footers count them (left-out ids included)."""
        return self._snap.rows

    def answerable(self) -> int:
        """Rows a lookup can answer: the files' rows as their footers count them, less the left-out ids the
        files still hold (ordered: found as any id is, reading the sample_id column of their row groups;
        a locator holds only the others)."""
        snap = self.snapshot()
        if not snap.ordered:
            return len(snap.locator[0])
        if not len(self.exclude):
            return snap.rows
        return snap.rows - sum(1 for spot in self._locate(snap, self.exclude) if spot is not None)

    def describe(self) -> str:
        """-> rows, files and row groups of the version open, and how rows are found (for a log line)."""
        snap = self._snap
        how = "row groups ordered by sample_id" if snap.ordered else "an on-disk locator"
        return f"{snap.rows} rows in {len(snap.paths)} files, {len(snap.file)} row groups; found through {how}"

    @property
    def columns(self) -> list[str]:
        return list(self._snap.columns)

    @property
    def ordered(self) -> bool:
        return self._snap.ordered

    # ------------------------------------------------------------------ reading
    def _read(self, snap: _Snapshot, g: int, columns: tuple):
        """Columns of row group g as the snapshot knows it, read now; _Stale when the file is another."""
        import pyarrow.parquet as pq

        path = snap.paths[int(snap.file[g])]
        gi = int(snap.group[g])

        def read(pf):
            md = pf.metadata
            if gi >= md.num_row_groups or md.row_group(gi).num_rows != snap.group_rows(g):
                raise _Stale(path)
            if snap.has[g]:
                col = _key_column(md, self.key)
                lo, hi, known, _ = _stats(md.row_group(gi), col) if col is not None else (0, 0, False, False)
                if not known or (lo, hi) != (int(snap.lo[g]), int(snap.hi[g])):
                    raise _Stale(path)
            names = set(pf.schema_arrow.names)
            return pf.read_row_group(gi, columns=[c for c in columns if c in names])

        try:
            if self._mmap:
                with pq.ParquetFile(path, memory_map=True) as pf:
                    table = read(pf)
            else:
                with self._open_file(path) as fh, pq.ParquetFile(fh) as pf:
                    table = read(pf)
        except _Stale:
            raise
        except (OSError, ValueError, IndexError) as exc:  # replaced mid-read, cut short: not the file we know
            raise _Stale(f"{path}: {type(exc).__name__}: {exc}") from None
        with self._count_lock:
            self.row_group_reads += 1
            self.rows_read += table.num_rows
        return table

    def _cached(self, snap: _Snapshot, g: int, columns: tuple):
        path = snap.paths[int(snap.file[g])]
        key = (path, snap.files[path], int(snap.group[g]), columns)
        return self._groups.get(key, lambda: self._read(snap, g, columns))

    def _candidates(self, snap: _Snapshot, ids: np.ndarray) -> list[np.ndarray]:
        """Ordered: per id, the row groups (in table order) whose key range holds it."""
        first = np.searchsorted(snap.hi_sorted, ids, side="left")
        last = np.searchsorted(snap.lo_sorted, ids, side="right")
        return [np.sort(snap.order[a:b]) for a, b in zip(first.tolist(), last.tolist(), strict=True)]

    def _locate(self, snap: _Snapshot, ids: np.ndarray) -> list[tuple[int, int] | None]:
        """ids -> (row group, row in it) of each id's first row in table order, or None."""
        out: list[tuple[int, int] | None] = [None] * len(ids)
        if snap.ordered:
            pending = self._candidates(snap, ids)
            by_group: dict[int, list[int]] = {}
            for i, groups in enumerate(pending):
                if len(groups):
                    by_group.setdefault(int(groups[0]), []).append(i)
            depth = 0
            while by_group:  # each round: the next candidate row group of the ids not found yet
                nxt: dict[int, list[int]] = {}
                for g, which in sorted(by_group.items()):
                    keys, valid = _keys(self._cached(snap, g, (self.key,)).column(self.key))
                    rows = _first_rows(keys, valid, ids[which])
                    for i, row in zip(which, rows.tolist(), strict=True):
                        if row >= 0:
                            out[i] = (g, row)
                        elif depth + 1 < len(pending[i]):
                            nxt.setdefault(int(pending[i][depth + 1]), []).append(i)
                by_group, depth = nxt, depth + 1
            return out
        located_ids, located_pos = snap.locator
        n = len(located_ids)
        if not n:
            return out
        at = np.searchsorted(located_ids, ids)
        for i, a in enumerate(at.tolist()):
            if a < n and int(located_ids[a]) == int(ids[i]):
                p = int(located_pos[a])
                g = int(np.searchsorted(snap.start, p, side="right")) - 1
                out[i] = (g, p - int(snap.start[g]))
        return out

    def _fetch(self, snap: _Snapshot, ids: np.ndarray, columns: tuple) -> list:
        """ids -> per id (the Arrow table of its row group with columns + the key, its row) or None."""
        where = self._locate(snap, ids)
        wanted = tuple(dict.fromkeys((self.key, *columns)))
        out = []
        for i, spot in enumerate(where):
            if spot is None:
                out.append(None)
                continue
            g, row = spot
            table = self._cached(snap, g, wanted)
            keys, valid = _keys(table.column(self.key).slice(row, 1))
            if not valid[0] or keys[0] != ids[i]:  # the row group read is not the one located in
                raise _Stale(snap.paths[int(snap.file[g])])
            out.append((table, row))
        return out

    def _with_retry(self, ids: np.ndarray, columns: tuple) -> list:
        snap = self.snapshot()
        try:
            return self._fetch(snap, ids, columns)
        except _Stale as exc:
            with self._lock:
                self._reopen(f"a read found a file rewritten: {exc}", seen=snap)
                self._checked = time.monotonic()
            try:
                return self._fetch(self._snap, ids, columns)
            except _Stale as again:
                raise TableUnavailable(f"{self.label} is being rewritten ({again}); retry in a moment") from None

    def _ids(self, sample_ids) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(sample_ids, dtype=np.int64).reshape(-1)
        return ids, ~_isin(ids, self.exclude)

    def rows(self, sample_ids, columns=None) -> list[dict | None]:
        """sample_ids -> one dict per id ({column: value}, every column of the table unless given; a column
        a file lacks is None), or None where the table has no row of that id or the id is left out."""
        ids, alive = self._ids(sample_ids)
        out: list[dict | None] = [None] * len(ids)
        if not alive.any():
            return out
        want = np.flatnonzero(alive)
        names = tuple(columns) if columns is not None else tuple(self._snap.columns)
        found = self._with_retry(ids[want], names)
        for i, hit in zip(want.tolist(), found, strict=True):
            if hit is not None:
                table, row = hit
                got = table.slice(row, 1).to_pylist()[0]
                out[i] = {c: got.get(c) for c in names}
        return out

    def value(self, sample_id: int, column: str):
        """One id's cell of one column (read: that column of that row group), or NOT_FOUND."""
        ids, alive = self._ids([sample_id])
        if not alive[0]:
            return NOT_FOUND
        hit = self._with_retry(ids, (column,))[0]
        if hit is None:
            return NOT_FOUND
        table, row = hit
        if column not in table.column_names:
            return None
        return table.column(column)[row].as_py()


def _first_rows(keys: np.ndarray, valid: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """A row group's key column (values, not-null mask) -> each wanted id's first row in it, -1 where none
    (binary search: in the column as written when it is sorted, else in a stable sort of it)."""
    if valid.all() and (len(keys) < 2 or bool(np.all(keys[1:] >= keys[:-1]))):
        at = np.searchsorted(keys, wanted)
        hit = at < len(keys)
        hit[hit] = keys[at[hit]] == wanted[hit]
        return np.where(hit, at, -1)
    order = np.flatnonzero(valid)
    order = order[np.argsort(keys[order], kind="stable")]
    at = np.searchsorted(keys[order], wanted)
    hit = at < len(order)
    hit[hit] = keys[order[at[hit]]] == wanted[hit]
    return np.where(hit, order[np.minimum(at, max(len(order) - 1, 0))] if len(order) else -1, -1)


def _isin(values: np.ndarray, sorted_unique: np.ndarray) -> np.ndarray:
    """-> values' membership in a sorted unique array (binary search: no copy of either)."""
    if not len(sorted_unique):
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_unique, values), len(sorted_unique) - 1)
    return sorted_unique[at] == values


def _write_done(folder: str, files: dict, kept: dict) -> None:
    """The locator's completion marker: the file versions it was built from (or checked against) and how
    many of its ids each file holds."""
    tmp = os.path.join(folder, f"{_DONE}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w") as fh:
        json.dump({"versions": {p: list(v) for p, v in files.items()}, "kept": kept}, fh)
    os.replace(tmp, os.path.join(folder, _DONE))


def _build_locator(snap: _Snapshot, folder: str, read_keys, exclude: np.ndarray, chunk_rows: int,
                   bucket_rows: int, sample_rows: int) -> None:
    """The table's key column -> folder/ids.npy (sorted) + pos.npy (each id's row in the table; of equal ids
    the first row first) + _done (the file versions it was built from), with memory bounded by chunk_rows,
    bucket_rows, sample_rows and a row group's key column, not by the table's rows. Built in a scratch
    folder, then moved in place."""
    from numpy.lib.format import open_memmap

    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    for old in os.listdir(parent):  # the locators of other layouts of this table: stale, and its rows' ids
        if old.startswith("locator-") and os.path.join(parent, old) != folder:
            shutil.rmtree(os.path.join(parent, old), ignore_errors=True)
    work = os.path.join(parent, f".build-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(work)
    try:
        n = snap.rows
        # pass 1: the ids in table order, and which are kept (not null, not left out)
        raw = open_memmap(os.path.join(work, "raw.npy"), "w+", np.int64, (n,))
        keep = open_memmap(os.path.join(work, "keep.npy"), "w+", np.bool_, (n,))
        per_file = dict.fromkeys(snap.paths, 0)
        for g in range(len(snap.file)):
            a, b = int(snap.start[g]), int(snap.start[g + 1])
            if a == b:
                continue
            keys, valid = read_keys(snap, g)
            raw[a:b] = keys
            keep[a:b] = mine = valid & ~_isin(keys, exclude)
            per_file[snap.paths[int(snap.file[g])]] += int(np.count_nonzero(mine))
        # bucket bounds: quantiles of a strided sample of the kept ids
        stride = max(1, -(-n // sample_rows))
        sample = np.sort(np.asarray(raw[::stride])[np.asarray(keep[::stride])])
        kept = int(sum(int(np.count_nonzero(keep[a:a + chunk_rows])) for a in range(0, n, chunk_rows)))
        buckets = max(1, -(-kept // bucket_rows))
        bounds = np.unique(sample[(np.arange(1, buckets) * len(sample)) // buckets]) if len(sample) else \
            np.empty(0, np.int64)
        counts = np.zeros(len(bounds) + 1, dtype=np.int64)
        for a in range(0, n, chunk_rows):
            x = np.asarray(raw[a:a + chunk_rows])[np.asarray(keep[a:a + chunk_rows])]
            counts += np.bincount(np.searchsorted(bounds, x, side="right"), minlength=len(counts))
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        # pass 2: each chunk's ids scattered to their buckets, in table order within each bucket
        ids = open_memmap(os.path.join(work, "ids.npy"), "w+", np.int64, (kept,))
        pos = open_memmap(os.path.join(work, "pos.npy"), "w+", np.int64, (kept,))
        cursor = offsets[:-1].copy()
        for a in range(0, n, chunk_rows):
            k = np.asarray(keep[a:a + chunk_rows])
            x = np.asarray(raw[a:a + chunk_rows])[k]
            p = (a + np.arange(len(k), dtype=np.int64))[k]
            b = np.searchsorted(bounds, x, side="right")
            o = np.argsort(b, kind="stable")
            b, x, p = b[o], x[o], p[o]
            cuts = np.flatnonzero(np.diff(b)) + 1
            for s, e in zip([0, *cuts.tolist()], [*cuts.tolist(), len(b)], strict=True):
                if s == e:
                    continue
                c = int(cursor[b[s]])
                ids[c:c + e - s] = x[s:e]
                pos[c:c + e - s] = p[s:e]
                cursor[b[s]] += e - s
        del raw, keep
        # pass 3: each bucket sorted alone (stable: of equal ids, the first row in the table first)
        for i in range(len(counts)):
            a, b = int(offsets[i]), int(offsets[i + 1])
            if b - a > 1:
                o = np.argsort(ids[a:b], kind="stable")
                ids[a:b] = np.asarray(ids[a:b])[o]
                pos[a:b] = np.asarray(pos[a:b])[o]
        ids.flush()
        pos.flush()
        del ids, pos
        os.remove(os.path.join(work, "raw.npy"))
        os.remove(os.path.join(work, "keep.npy"))
        _write_done(work, snap.files, per_file)
        if os.path.exists(folder):  # another process built it meanwhile, or an older build of this layout
            trash = f"{work}.old"
            os.replace(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(work, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
