"""A takedown under a running search service (issue 26): once tombstones.npy is written, no answer holds a
removed row, whatever the index files still hold; a service whose index is mid-rewrite answers 503, never
the files as they were; the search cache keeps no copy of a removed row.

Real components: small faiss indices built here with the index stage's own functions (no Spark), a real
SearchServer on 127.0.0.1 asked over real sockets, the takedown's file changes done here the way the
takedown does them (each file written beside, then moved over). Expectations come from the test's own
vectors (the exact ranking, IndexFlatIP over them) and its own rows.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import faiss
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laion_spark import cli
from laion_spark.index import build as B
from laion_spark.search.searcher import Searcher, open_indices
from laion_spark.serve.api import Settings
from laion_spark.serve.app import SearchServer, SearchService
from laion_spark.serve.job import build_server
from laion_spark.serve.thumbs import ImageStore
from tests.test_serve import request  # the same HTTP helper as the serve tests

N, D = 300, 16
PNG = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ a small world, built without Spark
@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(26)
    vectors = rng.normal(size=(N, D)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = 5_000 + 3 * np.arange(N, dtype=np.int64)
    return {"vectors": vectors, "ids": ids, "url": {int(i): f"http://takedown.test/row-{int(i)}.png" for i in ids},
            "png": {int(i): PNG + f"image of {int(i)}".encode() for i in ids}}


def exact(world, query: np.ndarray, depth: int = N) -> list[int]:
    flat = faiss.IndexIDMap(faiss.IndexFlatIP(D))
    flat.add_with_ids(world["vectors"], world["ids"])
    return flat.search(query[None, :], depth)[1][0].tolist()


def build_index(world, folder: Path, layout: str = "merged") -> Path:
    """-> an index folder as the index stage lays it out: knn.index (IVF1,Flat; with knn.ivfdata for
    ondisk; IVF4 searched with nprobe=4; an HNSW graph), or shards/knn_*.index; metadata/; index_infos.json."""
    vectors, ids = world["vectors"], world["ids"]
    folder.mkdir(parents=True)
    param = "nprobe=4" if layout == "ivf4" else ("" if layout == "hnsw" else "nprobe=1")
    if layout == "hnsw":
        index = faiss.IndexIDMap(faiss.IndexHNSWFlat(D, 16, faiss.METRIC_INNER_PRODUCT))
        index.add_with_ids(vectors, ids)
        faiss.write_index(index, str(folder / "knn.index"))
    elif layout == "shards":
        trained = B.to_bytes(B.train("IVF1,Flat", vectors))
        (folder / "shards").mkdir()
        for s, part in enumerate(np.array_split(np.arange(N), 3)):
            faiss.write_index(B.from_bytes(B.add_part(trained, ids[part], vectors[part])),
                              str(folder / "shards" / f"knn_{s:05d}.index"))
    else:
        trained = B.to_bytes(B.train("IVF4,Flat" if layout == "ivf4" else "IVF1,Flat", vectors))
        part = folder.parent / f".{folder.name}.part"
        part.write_bytes(B.add_part(trained, ids, vectors))
        B.merge_parts(trained, [str(part)], str(folder / "knn.index"), ondisk=layout == "ondisk")
        part.unlink()
    (folder / "metadata").mkdir()
    rows = pa.table({"sample_id": ids, "url": [world["url"][int(i)] for i in ids],
                     "text": [f"caption of {int(i)}" for i in ids]})
    pq.write_table(rows.slice(0, N // 2), folder / "metadata" / "part-00000.parquet")
    pq.write_table(rows.slice(N // 2), folder / "metadata" / "part-00001.parquet")
    infos = {"dimension": D, "field": "image", "index_param": param, "nb_vectors": N, "model": {},
             "clip_model": "test/ViT", "metadata_columns": ["sample_id", "url", "text"], "layout": layout}
    (folder / "index_infos.json").write_text(json.dumps(infos, indent=2))
    return folder


def build_images(world, folder: Path) -> Path:
    """-> an images table: two parquet files of row groups of 40 rows, sample_id + image bytes."""
    folder.mkdir(parents=True)
    ids = world["ids"]
    table = pa.table({"sample_id": ids, "image": pa.array([world["png"][int(i)] for i in ids], pa.binary())})
    pq.write_table(table.slice(0, N // 2), folder / "part-00000.parquet", row_group_size=40)
    pq.write_table(table.slice(N // 2), folder / "part-00001.parquet", row_group_size=40)
    return folder


# ------------------------------------------------------------------ the takedown's file changes, written here
def replace(path: Path, data: bytes) -> None:
    """Written beside, then moved over the old file (what the takedown does with every file)."""
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, path)


def tombstone(folder: Path, ids) -> np.ndarray:
    """Step 1 of a takedown: tombstones.npy (the ids added to those there), then index_infos.json."""
    path = folder / "tombstones.npy"
    old = np.load(path) if path.exists() else np.empty(0, np.int64)
    dead = np.unique(np.concatenate([old, np.asarray(ids, dtype=np.int64)]))
    buf = io.BytesIO()
    np.save(buf, dead)
    replace(path, buf.getvalue())
    infos = json.loads((folder / "index_infos.json").read_text())
    infos.update(tombstones=int(len(dead)), generation=int(infos.get("generation", 0)) + 1,
                 nb_vectors=N - int(len(dead)))
    replace(folder / "index_infos.json", json.dumps(infos, indent=2).encode())
    return dead


def rewrite_without(folder: Path, ids) -> None:
    """Step 2: knn.index without the ids (faiss remove_ids), the metadata parquet without their rows."""
    index = faiss.read_index(str(folder / "knn.index"))
    assert index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64))) == len(ids)
    replace(folder / "knn.index", faiss.serialize_index(index).tobytes())
    for f in sorted((folder / "metadata").glob("*.parquet")):
        table = pq.read_table(f)
        kept = table.filter(pa.array(~np.isin(table.column("sample_id").to_numpy(), ids)))
        buf = pa.BufferOutputStream()
        pq.write_table(kept, buf)
        replace(f, buf.getvalue().to_pybytes())


def null_images(folder: Path, ids) -> None:
    """The takedown's images-table rewrite: the files holding the ids, their image bytes nulled."""
    for f in sorted(folder.glob("*.parquet")):
        table = pq.read_table(f)
        hit = np.isin(table.column("sample_id").to_numpy(), ids)
        if hit.any():
            images = [None if h else v for h, v in zip(hit.tolist(), table.column("image").to_pylist(), strict=True)]
            buf = pa.BufferOutputStream()
            pq.write_table(table.set_column(1, "image", pa.array(images, pa.binary())), buf, row_group_size=40)
            replace(f, buf.getvalue().to_pybytes())


# ------------------------------------------------------------------ a real server, real requests
@contextmanager
def serving(run_index: Path, cache: Path, images: Path | None = None, interval: float = 0.0):
    store = ImageStore(str(images), check_interval=interval) if images is not None else None
    service = SearchService(open_indices(str(run_index), cache_dir=str(cache)), Settings(), store,
                            check_interval=interval)
    server = SearchServer(("127.0.0.1", 0), service)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def knn(server, vector, k: int = 5, **more):
    body = {"embedding_input": [float(x) for x in vector], "num_images": k, "deduplicate": False, **more}
    return request(server, "POST", "/knn-service", body)


def metadata(server, ids):
    return request(server, "POST", "/metadata", {"indice_name": "image", "ids": [int(i) for i in ids]})


def thumb(server, sid):
    return request(server, "GET", f"/thumb/image/{int(sid)}")


def holding(root: Path, needle: bytes) -> list[str]:
    """-> the files under root whose bytes hold needle."""
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


# ------------------------------------------------------------------ the tests
def test_a_running_server_never_answers_a_taken_down_row_again(world, tmp_path):
    folder = build_index(world, tmp_path / "run" / "index" / "image")
    images = build_images(world, tmp_path / "images")
    vectors, ids = world["vectors"], world["ids"]
    x, y = int(ids[7]), int(ids[8])
    with serving(tmp_path / "run" / "index", tmp_path / "cache", images) as server:
        status, _, got = knn(server, vectors[7])
        assert status == 200 and [r["id"] for r in got] == exact(world, vectors[7], 5) and got[0]["id"] == x
        assert got[0]["url"] == world["url"][x] and got[0]["thumbnail"] == f"/thumb/image/{x}"
        status, _, data = thumb(server, x)
        assert status == 200 and data == world["png"][x]
        status, _, meta = metadata(server, [x, y])
        assert status == 200 and [m["metadata"]["url"] for m in meta] == [world["url"][x], world["url"][y]]

        # step 1: tombstones + index_infos.json; knn.index, metadata and images still hold x
        tombstone(folder, [x])
        want = [i for i in exact(world, vectors[7]) if i != x]
        status, _, got = knn(server, vectors[7])
        assert status == 200 and [r["id"] for r in got] == want[:5]
        status, _, every = knn(server, vectors[7], k=N)  # every row the index answers: x is none of them
        assert status == 200 and sorted(r["id"] for r in every) == sorted(set(ids.tolist()) - {x})
        status, _, meta = metadata(server, [x, y])
        assert status == 200 and meta[0]["metadata"] is None and meta[1]["metadata"]["url"] == world["url"][y]
        status, _, refused = thumb(server, x)
        assert status == 404 and "no sample_id" in refused["error"]
        status, _, data = thumb(server, y)
        assert status == 200 and data == world["png"][y]

        # step 2: the files rewritten without x (its image bytes nulled); the server is not restarted
        rewrite_without(folder, [x])
        null_images(images, [x])
        status, _, got = knn(server, vectors[7], k=N)
        assert status == 200 and x not in [r["id"] for r in got] and len(got) == N - 1
        assert [r["id"] for r in got[:5]] == want[:5]
        status, _, meta = metadata(server, [x, y])
        assert meta[0]["metadata"] is None and meta[1]["metadata"]["caption"] == f"caption of {y}"
        assert thumb(server, x)[0] == 404
        status, _, data = thumb(server, y)  # y's row group was in the LRU: read again from the new file
        assert status == 200 and data == world["png"][y]
        store = server.service.images
        assert store.reopened >= 1 and store.get(x) is None  # the store follows the rewritten table


def test_while_the_index_is_mid_rewrite_the_service_answers_503_then_recovers(world, tmp_path):
    folder = build_index(world, tmp_path / "run" / "index" / "image")
    images = build_images(world, tmp_path / "images")
    vectors, ids = world["vectors"], world["ids"]
    x, y = int(ids[20]), int(ids[21])
    with serving(tmp_path / "run" / "index", tmp_path / "cache", images) as server:
        status, _, got = knn(server, vectors[20])
        assert status == 200 and got[0]["id"] == x
        tombstone(folder, [x])
        os.replace(folder / "knn.index", tmp_path / "knn.index.aside")  # mid-swap: no knn.index at all
        for status, headers, body in (knn(server, vectors[20]), metadata(server, [x, y]), thumb(server, y),
                                      thumb(server, x)):
            assert status == 503 and headers["Retry-After"] == "1", body
            assert "cannot be opened" in body["error"] and "knn.index" in body["error"]
        assert request(server, "GET", "/indices-list")[0] == 200  # what needs no index rows still answers
        os.replace(tmp_path / "knn.index.aside", folder / "knn.index")
        status, _, got = knn(server, vectors[20])
        assert status == 200 and [r["id"] for r in got] == [i for i in exact(world, vectors[20]) if i != x][:5]
        status, _, meta = metadata(server, [x, y])
        assert status == 200 and meta[0]["metadata"] is None and meta[1]["metadata"] is not None
        assert thumb(server, x)[0] == 404 and thumb(server, y)[0] == 200


@pytest.mark.parametrize("layout", ["merged", "ivf4", "ondisk", "shards", "hnsw"])
def test_tombstones_alone_hide_rows_and_k_results_still_come(world, tmp_path, layout):
    """An index whose files cannot be rewritten (on-disk lists: rebuilt later) gets only tombstones."""
    folder = build_index(world, tmp_path / "run" / "index" / "image", layout)
    if layout == "ondisk":
        assert (folder / "knn.ivfdata").is_file()
    vectors = world["vectors"]
    top = exact(world, vectors[3], 10)  # every one of the query's 10 best rows taken down
    files = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with serving(tmp_path / "run" / "index", tmp_path / "cache") as server:
        status, _, got = knn(server, vectors[3], k=10)
        assert status == 200 and len({r["id"] for r in got} & set(top)) >= 8  # hnsw: approximate
        dead = tombstone(folder, top)
        assert all(p.read_bytes() == data for p, data in files.items() if p.name != "index_infos.json")
        status, _, got = knn(server, vectors[3], k=10)
        assert status == 200 and len(got) == 10 and not {r["id"] for r in got} & set(dead.tolist())
        if layout != "hnsw":  # the exact ones: the next ten of the exact ranking
            assert [r["id"] for r in got] == exact(world, vectors[3], 20)[10:]
        status, _, meta = metadata(server, top)
        assert status == 200 and all(m["metadata"] is None for m in meta)
    s = Searcher(str(folder), cache_dir=str(tmp_path / "cache"))
    for dedup in (True, False):  # with dedup, the search reconstructs its results: no IDSelector there
        rows = s.query(embedding=vectors[3], k=10, deduplicate=dedup, unique_urls=dedup)
        assert len(rows) == 10 and not {r["sample_id"] for r in rows} & set(top)
        rows = s.query(embedding=vectors[3], k=N, deduplicate=dedup, unique_urls=False)
        assert len(rows) <= N - 10 and not {r["sample_id"] for r in rows} & set(top)
    alive = exact(world, vectors[3], 11)[10]
    assert s.metadata([top[0], alive, top[1]])[::2] == [None, None] and s.metadata([alive])[0] is not None


def test_the_served_job_notices_a_takedown_within_a_second(world, tmp_path):
    folder = build_index(world, tmp_path / "run" / "index" / "image")
    cfg, _ = cli.prepare("serve", [], [f"input={tmp_path / 'run' / 'index'}", "port=0",
                                       f"search.cache_dir={tmp_path / 'cache'}"])
    server = build_server(cfg)
    server.start()
    try:
        x = int(world["ids"][40])
        assert knn(server, world["vectors"][40])[2][0]["id"] == x
        tombstone(folder, [x])
        time.sleep(1.1)  # the files are looked at once a second at most
        status, _, got = knn(server, world["vectors"][40])
        assert status == 200 and x not in [r["id"] for r in got] and len(got) == 5
    finally:
        server.stop()


@pytest.mark.parametrize("where", ["local", "remote"])
def test_the_search_cache_keeps_no_copy_of_a_taken_down_row(world, tmp_path, where):
    folder = build_index(world, tmp_path / "index" / "image")
    uri, fs = str(folder), None
    if where == "remote":
        fs = fsspec.filesystem("memory")
        fs.put(str(folder), "/takedown-remote/image", recursive=True)
        uri = "memory://takedown-remote/image"
    cache = tmp_path / "cache"
    try:
        x, y = int(world["ids"][5]), int(world["ids"][6])
        s = Searcher(uri, cache_dir=str(cache))
        assert not s.changed()
        assert s.query(embedding=world["vectors"][5], k=1, deduplicate=False)[0]["sample_id"] == x
        assert holding(cache, world["url"][x].encode()) == []  # rows are read where they lie: no copy in the cache
        tombstone(folder, [x])
        # mid-rewrite, a file written beside the one it replaces: hidden, and no part of the metadata
        shutil.copy(folder / "metadata" / "part-00000.parquet", folder / "metadata" / ".takedown-part-00000.parquet")
        if fs is not None:
            fs.put(str(folder / "metadata"), "/takedown-remote/image/", recursive=True)
            for name in ("tombstones.npy", "index_infos.json"):
                fs.pipe(f"/takedown-remote/image/{name}", (folder / name).read_bytes())
        assert s.changed()
        fresh = s.reopen()
        assert not fresh.changed() and fresh.tombstones.tolist() == [x]
        assert fresh.metadata([x, y])[0] is None and fresh.metadata([x, y])[1]["url"] == world["url"][y]
        assert len(fresh.meta) == N - 1
        assert holding(cache, world["url"][x].encode()) == []
        assert holding(cache, world["url"][y].encode()) == []  # still no copy of any row
        assert len([p for p in cache.iterdir() if p.is_dir()]) == 1  # the older version's folder is gone
        if where == "remote":
            assert (Path(fresh.folder) / "tombstones.npy").read_bytes() == (folder / "tombstones.npy").read_bytes()
        got = fresh.query(embedding=world["vectors"][5], k=5, deduplicate=False)
        assert [r["sample_id"] for r in got] == [i for i in exact(world, world["vectors"][5]) if i != x][:5]
    finally:
        if fs is not None:
            fs.rm("/takedown-remote", recursive=True)
