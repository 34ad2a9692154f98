"""serve's thumbnails (ImageStore): the bytes a brute-force read of the images table gives, for a table in
download's host order (the on-disk locator) and one ordered by sample_id (row-group ranges); nothing per
row held in memory at open; a miss reads one row group without making other requests wait; one read per
row group however many requests want it at once; a takedown's rewrite followed without rebuilding the
locator when the rows stay where they were, and a file replaced with its rows moved never misread.

No Spark: the tables are written here with pyarrow, several files of many row groups.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laion_spark.serve.thumbs import ImageStore, content_type
from tests.test_search_lookup import measured

N, FILES, GROUP_ROWS = 2_000, 4, 50
PNG = b"\x89PNG\r\n\x1a\n"


def image_rows(n: int, seed: int = 0) -> dict:
    """n rows as download writes them: sample_id (spaced by 5), status, image bytes (None where it failed)."""
    rng = np.random.default_rng(seed)
    ids = 10_000 + 5 * rng.permutation(n).astype(np.int64)  # host order: ids in no order
    failed = rng.random(n) < 0.05
    images = [None if f else PNG + f"image {int(i)}".encode() for i, f in zip(ids, failed, strict=True)]
    return {"sample_id": ids, "status": ["failed" if f else "success" for f in failed], "image": images}


def write_images(rows: dict, folder: Path, ordered: bool = False, group_rows: int = GROUP_ROWS) -> Path:
    table = pa.table({"sample_id": pa.array(rows["sample_id"], pa.int64()), "status": rows["status"],
                      "image": pa.array(rows["image"], pa.binary())})
    if ordered:
        table = table.sort_by("sample_id")
    folder.mkdir(parents=True)
    per_file = -(-table.num_rows // FILES)
    for f in range(FILES):
        pq.write_table(table.slice(f * per_file, per_file), folder / f"part-{f:05d}.parquet", row_group_size=group_rows)
    return folder


def expected(rows: dict, sample_id: int):
    hits = np.flatnonzero(rows["sample_id"] == sample_id)
    if not len(hits) or rows["image"][hits[0]] is None:
        return None
    data = rows["image"][hits[0]]
    return data, content_type(data)


def probes(rows: dict) -> list[int]:
    ids = rows["sample_id"]
    return [int(i) for i in ids[::7]] + [int(ids.min()) - 5, int(ids.max()) + 5, int(ids.min()) + 1, 0, -1,
                                         2**63 - 1, -2**63]


@pytest.mark.parametrize("ordered", [False, True])
def test_thumbnails_are_the_bytes_the_table_holds(tmp_path, ordered, caplog):
    rows = image_rows(N)
    folder = write_images(rows, tmp_path / "images", ordered)
    with caplog.at_level(logging.INFO, logger="laion_spark"):
        store = ImageStore(str(folder), cache_dir=str(tmp_path / "cache"))
    assert store.lookup.ordered == ordered and len(store) == N
    ids = probes(rows)
    assert [store.get(i) for i in ids] == [expected(rows, i) for i in ids]
    assert sum(expected(rows, i) is None for i in ids) >= 10  # absent ids and failed downloads were asked
    located = sorted((tmp_path / "cache").rglob("locator-*/ids.npy"))
    if ordered:
        assert not located  # the row groups' ranges find the rows: nothing built
    else:
        assert len(located) == 1 and "not ordered by sample_id" in caplog.text
        assert np.array_equal(np.load(located[0]), np.sort(rows["sample_id"]))
        again = ImageStore(str(folder), cache_dir=str(tmp_path / "cache"))  # a restart: the locator is reused
        assert again.lookup.rows_read == 0 and again.get(ids[3]) == expected(rows, ids[3])


@pytest.mark.parametrize("ordered", [False, True])
def test_opening_holds_nothing_that_grows_with_the_rows(tmp_path, ordered):
    ImageStore(str(write_images(image_rows(100), tmp_path / "warm", ordered)), cache_dir=str(tmp_path / "c"))
    seen = {}
    for n in (N, 10 * N):  # the same files and row groups, 10x the rows in each
        folder = write_images(image_rows(n, seed=n), tmp_path / str(n), ordered, group_rows=n // (FILES * 10))
        store, held, peak, arrow_held, _ = measured(lambda f=folder: ImageStore(str(f), cache_dir=str(tmp_path / "c")))
        assert arrow_held == 0 and len(store) == n
        seen[n] = held
        del store
    assert seen[10 * N] - seen[N] < 16_384, seen


def _blocking(store, block_group: int):
    """-> (entered, release): store's reads of row group block_group wait for release once started."""
    lookup = store.lookup
    read = lookup._read
    entered, release = threading.Event(), threading.Event()

    def slow(snap, g, columns):
        if g == block_group and "image" in columns:
            entered.set()
            assert release.wait(30)
        return read(snap, g, columns)

    lookup._read = slow
    return entered, release


def _group_of(store, sample_id: int) -> int:
    snap = store.lookup.snapshot()
    return store.lookup._locate(snap, np.asarray([sample_id], dtype=np.int64))[0][0]


@pytest.mark.parametrize("ordered", [False, True])
def test_a_miss_does_not_make_a_request_for_another_row_group_wait(tmp_path, ordered):
    rows = image_rows(N)
    store = ImageStore(str(write_images(rows, tmp_path / "images", ordered)), cache_dir=str(tmp_path / "cache"))
    a, b = int(rows["sample_id"][0]), int(rows["sample_id"][-1])
    assert _group_of(store, a) != _group_of(store, b)
    entered, release = _blocking(store, _group_of(store, a))
    slow = threading.Thread(target=lambda: store.get(a))
    slow.start()
    try:
        assert entered.wait(10)  # a's row group is being read (and stays so)
        got = {}
        other = threading.Thread(target=lambda: got.setdefault("b", store.get(b)))
        other.start()
        other.join(10)
        assert not other.is_alive(), "a thumbnail of another row group waited for a's read"
        assert got["b"] == expected(rows, b)
    finally:
        release.set()
        slow.join(10)


@pytest.mark.parametrize("ordered", [False, True])
def test_requests_for_one_row_group_at_once_read_it_once(tmp_path, ordered):
    rows = image_rows(N)
    store = ImageStore(str(write_images(rows, tmp_path / "images", ordered)), cache_dir=str(tmp_path / "cache"))
    group = _group_of(store, int(rows["sample_id"][0]))
    ids = [int(i) for i in rows["sample_id"] if _group_of(store, int(i)) == group][:8]
    assert len(ids) == 8
    entered, release = _blocking(store, group)
    store.lookup._groups.clear()  # what finding the ids above read
    before = store.row_group_reads
    answers = [None] * len(ids)
    threads = [threading.Thread(target=lambda k=k: answers.__setitem__(k, store.get(ids[k]))) for k in range(8)]
    for t in threads:
        t.start()
    assert entered.wait(10)
    time.sleep(0.3)  # the others are waiting now, for that one read
    release.set()
    for t in threads:
        t.join(10)
    assert answers == [expected(rows, i) for i in ids]
    # one read of the row group's sample_id + image (ordered: its sample_id column first, alone)
    assert store.row_group_reads - before == (2 if ordered else 1)


def null_images(folder: Path, gone: list[int], group_rows: int = GROUP_ROWS) -> None:
    """The takedown's images rewrite: the files holding the ids, their image bytes nulled, moved over."""
    for f in sorted(folder.glob("*.parquet")):
        table = pq.read_table(f)
        hit = np.isin(table.column("sample_id").to_numpy(), gone)
        if hit.any():
            images = [None if h else v for h, v in zip(hit.tolist(), table.column("image").to_pylist(), strict=True)]
            tmp = f.parent / f".{f.name}.tmp"
            pq.write_table(table.set_column(2, "image", pa.array(images, pa.binary())), tmp, row_group_size=group_rows)
            tmp.replace(f)


def test_a_takedown_rewrite_is_followed_and_the_locator_kept_while_rows_stay_put(tmp_path, caplog):
    rows = image_rows(N)
    folder = write_images(rows, tmp_path / "images")
    store = ImageStore(str(folder), cache_dir=str(tmp_path / "cache"), check_interval=0.0)
    x, y = (int(i) for i in rows["sample_id"][[10, 11]])
    assert store.get(x) == expected(rows, x) is not None and store.get(y) is not None
    null_images(folder, [x])
    read_before = store.lookup.rows_read
    with caplog.at_level(logging.INFO, logger="laion_spark.search.lookup"):
        assert store.get(x) is None and store.get(y) == expected(rows, y)
    assert store.reopened == 1 and "locator" in caplog.text and "is kept" in caplog.text
    assert "building" not in caplog.text
    assert store.lookup.rows_read - read_before < N // FILES + 2 * GROUP_ROWS  # the rewritten file's ids, checked
    # rows removed from a file: the layout changed, the locator is built again
    f = folder / "part-00002.parquet"
    table = pq.read_table(f)
    z = int(table.column("sample_id")[5].as_py())
    tmp = folder / ".part.tmp"
    pq.write_table(table.filter(pa.array(table.column("sample_id").to_numpy() != z)), tmp, row_group_size=33)
    tmp.replace(f)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="laion_spark.search.lookup"):
        assert store.get(z) is None
    assert "building" in caplog.text
    assert [store.get(i) for i in probes(rows) if i != z and i != x] == \
        [expected(rows, i) for i in probes(rows) if i != z and i != x]
    assert len(list((tmp_path / "cache").rglob("locator-*"))) == 1  # the old layout's locator removed


def test_a_file_replaced_with_its_rows_moved_is_never_misread(tmp_path):
    """No listing look (a long check interval): a file replaced with the same row counts, its rows in
    another order, is found out by the row read not holding the id asked, and read again."""
    rows = image_rows(N)
    folder = write_images(rows, tmp_path / "images")
    store = ImageStore(str(folder), cache_dir=str(tmp_path / "cache"), check_interval=3600.0)
    f = folder / "part-00001.parquet"
    table = pq.read_table(f)
    some = [int(i) for i in table.column("sample_id").to_numpy()[:5]]
    assert [store.get(i) for i in some] == [expected(rows, i) for i in some]
    tmp = folder / ".part.tmp"
    pq.write_table(table.take(pa.array(np.arange(table.num_rows)[::-1])), tmp, row_group_size=GROUP_ROWS)
    tmp.replace(f)
    store.lookup._groups.clear()  # the LRU aside (a listing look drops it): the file itself is read again
    assert [store.get(i) for i in some] == [expected(rows, i) for i in some]
    assert store.reopened == 1
