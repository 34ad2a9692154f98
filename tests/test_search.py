"""search: Searcher over indices the index stage built (merged, shards, on-disk lists, a remote copy),
the query-time filters, metadata lookups, bad queries, the CLI; and the toy CLIP answering text
queries with the pictures they describe.

Expectations are computed here: the exact top-k with IndexFlatIP over the test's own vectors, the
filters written out again over that exact ranking, metadata from the test's own dataset rows, and for
the toy CLIP the toy world's ground truth of each picture (its attributes), not its caption.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import faiss
import fsspec
import numpy as np
import pytest

from laion_spark import cli
from laion_spark import schemas as S
from laion_spark.index.synthetic import clustered_vectors
from laion_spark.search.metadata import Metadata
from laion_spark.search.searcher import Searcher, SearchError, open_indices

REPO = Path(__file__).resolve().parents[1]
N, D = 3000, 32


def run_stage(spark, stage, *args) -> dict:
    cfg, module = cli.prepare(stage, [], list(args))
    return cli.run(stage, cfg, module, spark)


@pytest.fixture(scope="module")
def synthetic(spark, tmp_path_factory):
    """3,000 clustered vectors (+ near copies of the first ten, a shared URL pair) -> a dataset table and three
    indices of them: merged, 3 shards, on-disk lists (each exact: the table is small)."""
    root = tmp_path_factory.mktemp("search")
    vectors, _ = clustered_vectors(N, D, clusters=30, seed=11)
    rng = np.random.default_rng(4)
    copies = vectors[:10] + rng.normal(0, 0.002, (10, D)).astype(np.float32)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    vectors = np.vstack([vectors, copies]).astype(np.float32)
    ids = np.arange(len(vectors), dtype=np.int64) * 7919 - 10_000_000  # negative ids too
    urls = [f"http://img.test/{i}.jpg" for i in range(len(vectors))]
    twin = int(np.argsort(-(vectors[:N] @ vectors[20]))[1])  # vector 20's nearest neighbour
    urls[twin] = urls[20]  # one URL under two sample_ids that a query near 20 finds together
    punsafe = rng.random(len(vectors)).round(3)
    pwatermark = rng.random(len(vectors)).round(3)
    emb_rows = [(int(i), [float(x) for x in v], [float(x) for x in v[::-1]], 0.25, "ViT-T/test", None)
                for i, v in zip(ids, vectors, strict=True)]
    spark.createDataFrame(emb_rows, S.EMBEDDINGS).repartition(4).write.parquet(str(root / "embeddings"))
    data_rows = [(int(i), urls[k], f"caption {k}", ("en", "fr", None)[k % 3], float(punsafe[k]),
                  float(pwatermark[k]), 4.0 + k % 7 / 2, 64 + k % 5, 48 + k % 3) for k, i in enumerate(ids)]
    spark.createDataFrame(data_rows, "sample_id long, url string, text string, language string, punsafe double, "
                          "pwatermark double, aesthetic_score double, original_width int, original_height int"
                          ).repartition(3).write.parquet(str(root / "dataset"))
    common = [f"input={root / 'embeddings'}", f"dataset={root / 'dataset'}", "index.eval_queries=100"]
    run_stage(spark, "index", *common, f"output={root / 'merged'}")
    run_stage(spark, "index", *common, f"output={root / 'shards'}", "index.shards=3")
    run_stage(spark, "index", *common, f"output={root / 'ondisk'}", "index.ondisk=true")
    meta = {int(i): {"url": urls[k], "text": f"caption {k}", "language": ("en", "fr", None)[k % 3],
                     "punsafe": float(punsafe[k]), "pwatermark": float(pwatermark[k]),
                     "aesthetic_score": 4.0 + k % 7 / 2, "original_width": 64 + k % 5,
                     "original_height": 48 + k % 3} for k, i in enumerate(ids)}
    return {"root": root, "vectors": vectors, "ids": ids, "meta": meta, "cache": str(root / "cache"), "twin": twin}


def exact_ranking(data, query: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    flat = faiss.IndexIDMap(faiss.IndexFlatIP(D))
    flat.add_with_ids(data["vectors"], data["ids"])
    scores, ids = flat.search(query[None, :].astype(np.float32), depth)
    return scores[0], ids[0]


def plain(searcher, vector, k):
    return searcher.query(embedding=vector, k=k, deduplicate=False, unique_urls=False)


@pytest.mark.parametrize("layout", ["merged", "shards", "ondisk"])
def test_embedding_query_returns_the_exact_top_k_with_metadata(synthetic, layout):
    s = Searcher(str(synthetic["root"] / layout), cache_dir=synthetic["cache"])
    if layout == "ondisk":
        assert (synthetic["root"] / layout / "knn.ivfdata").is_file()
    if layout == "shards":
        assert len(list((synthetic["root"] / layout / "shards").glob("knn_*.index"))) == 3
    for q in (5, 777, 2999):
        query = synthetic["vectors"][q]
        want_scores, want = exact_ranking(synthetic, query, 10)
        got = plain(s, query, 10)
        assert [r["sample_id"] for r in got] == want.tolist()
        assert np.allclose([r["similarity"] for r in got], want_scores, atol=1e-4)
        for row in got:
            m = synthetic["meta"][row["sample_id"]]
            assert {c: row[c] for c in m} == m  # every metadata column the dataset had, as it had it
            assert row["pair_similarity"] == pytest.approx(0.25)  # the dataset has none: the embeddings' cosine


def test_filters_drop_near_duplicates_shared_urls_and_unsafe_rows(synthetic):
    s = Searcher(str(synthetic["root"] / "merged"), cache_dir=synthetic["cache"])
    vectors, ids = synthetic["vectors"], synthetic["ids"]
    by_id = {int(i): k for k, i in enumerate(ids)}
    for q in (3, 20):  # vector 3 has a near copy (N + 3); 20 and its nearest neighbour share a URL
        query = vectors[q]
        _, ranked = exact_ranking(synthetic, query, 200)
        # deduplicate, written again: walk the exact ranking, keep what is not within 0.94 of a kept one
        kept = []
        for i in ranked:
            v = vectors[by_id[int(i)]]
            if all(float(v @ vectors[by_id[j]]) <= 0.94 for j in kept):
                kept.append(int(i))
        got = s.query(embedding=query, k=10, deduplicate=True, unique_urls=False)
        assert [r["sample_id"] for r in got] == kept[:10]
        # unique URLs: the first row of each URL in the exact ranking
        seen, want = set(), []
        for i in ranked:
            url = synthetic["meta"][int(i)]["url"]
            if url not in seen:
                want.append(int(i))
            seen.add(url)
        got = s.query(embedding=query, k=10, deduplicate=False, unique_urls=True)
        assert [r["sample_id"] for r in got] == want[:10]
        # punsafe above 0.5 dropped
        want = [int(i) for i in ranked if synthetic["meta"][int(i)]["punsafe"] <= 0.5]
        got = s.query(embedding=query, k=10, deduplicate=False, unique_urls=False, max_punsafe=0.5)
        assert [r["sample_id"] for r in got] == want[:10]
        # pwatermark above 0.3 dropped (most rows: the search must dig deeper than k)
        want = [int(i) for i in ranked if synthetic["meta"][int(i)]["pwatermark"] <= 0.3]
        got = s.query(embedding=query, k=10, deduplicate=False, unique_urls=False, max_pwatermark=0.3)
        assert [r["sample_id"] for r in got] == want[:10]
    # the filters removed something in these cases (otherwise the checks above prove little)
    assert ids[N + 3] in [r["sample_id"] for r in plain(s, vectors[3], 5)]
    assert int(ids[N + 3]) not in [r["sample_id"] for r in s.query(embedding=vectors[3], k=5)]
    pair = {int(ids[20]), int(ids[synthetic["twin"]])}
    assert pair <= {r["sample_id"] for r in plain(s, vectors[20], 5)}
    assert len(pair & {r["sample_id"] for r in s.query(embedding=vectors[20], k=5)}) == 1


def test_metadata_lookup_by_sample_id(synthetic, tmp_path):
    s = Searcher(str(synthetic["root"] / "merged"), cache_dir=synthetic["cache"])
    rng = np.random.default_rng(9)
    want_ids = [int(i) for i in rng.choice(synthetic["ids"], 50, replace=False)]
    absent = [int(synthetic["ids"].max()) + 1, int(synthetic["ids"].min()) - 1, 12345]
    rows = s.metadata(want_ids + absent)
    for i, row in zip(want_ids, rows, strict=False):
        assert (row["url"], row["text"]) == (synthetic["meta"][i]["url"], synthetic["meta"][i]["text"])
    assert rows[len(want_ids):] == [None, None, None]
    # the index stage's metadata is ordered by sample_id: looked up through its row groups' ranges, from
    # the footers read at open; nothing decoded at open, nothing written to the cache
    meta = Metadata(str(synthetic["root"] / "merged" / "metadata"), str(tmp_path / "m"))
    assert meta.lookup.ordered and meta.lookup.rows_read == 0 and not (tmp_path / "m").exists()
    assert len(meta) == len(synthetic["ids"])
    assert [r["url"] for r in meta.rows(want_ids)] == [synthetic["meta"][i]["url"] for i in want_ids]


def test_remote_index_is_copied_to_the_cache_and_gives_the_same_results(synthetic, tmp_path):
    fs = fsspec.filesystem("memory")
    fs.put(str(synthetic["root"] / "ondisk"), "/remote/ondisk", recursive=True)
    try:
        s = Searcher("memory://remote/ondisk", cache_dir=str(tmp_path / "cache"))
        assert s.folder.startswith(str(tmp_path / "cache"))
        assert Path(s.folder, "knn.ivfdata").is_file()
        # the metadata is read from the source where it lies: neither copied nor turned into lookup files
        assert not Path(s.folder, "metadata").exists() and not Path(s.folder).parent.joinpath("metadata").exists()
        assert s.meta.lookup.ordered
        local = Searcher(str(synthetic["root"] / "ondisk"), cache_dir=synthetic["cache"])
        q = synthetic["vectors"][42]
        assert plain(s, q, 10) == plain(local, q, 10)
    finally:
        fs.rm("/remote", recursive=True)


def test_an_index_on_a_fuse_mount_is_searched_from_a_local_copy(synthetic, tmp_path, monkeypatch):
    from laion_spark.search import local

    assert not local.is_local("dbfs:/run/index/image") and not local.is_local("/Volumes/cat/db/vol/index")
    assert local.is_local(str(synthetic["root"] / "merged"))
    mount = tmp_path / "mnt"  # stands in for /dbfs/: the same local-path code, another prefix
    shutil.copytree(synthetic["root"] / "merged", mount / "run" / "merged")
    monkeypatch.setattr(local, "REMOTE_MOUNTS", (str(mount) + "/",))
    s = Searcher(str(mount / "run" / "merged"), cache_dir=str(tmp_path / "cache"))
    assert s.folder.startswith(str(tmp_path / "cache")) and Path(s.folder, "knn.index").is_file()
    q = synthetic["vectors"][7]
    assert plain(s, q, 10) == plain(Searcher(str(synthetic["root"] / "merged"), cache_dir=synthetic["cache"]), q, 10)


def test_bad_queries_are_search_errors(synthetic):
    s = Searcher(str(synthetic["root"] / "merged"), cache_dir=synthetic["cache"])
    v = synthetic["vectors"][0]
    cases = [dict(text="   "), dict(text="a", embedding=v), dict(), dict(embedding=v, k=0),
             dict(embedding=v, k=10**7), dict(embedding=v[:5]), dict(embedding=np.zeros(D)),
             dict(embedding=[float("nan")] * D), dict(embedding=["x"] * D), dict(image=b"not an image"),
             dict(image=b""), dict(text="a red circle")]  # the last: this index names no model to encode text
    for kwargs in cases:
        with pytest.raises(SearchError):
            s.query(**kwargs)


def test_open_indices_names_each_index_by_its_folder(synthetic, tmp_path):
    both = tmp_path / "run_index"
    shutil.copytree(synthetic["root"] / "merged", both / "image")
    shutil.copytree(synthetic["root"] / "shards", both / "text")
    found = open_indices(str(both), cache_dir=synthetic["cache"])
    assert sorted(found) == ["image", "text"]
    assert list(open_indices(str(both / "image"), cache_dir=synthetic["cache"])) == ["image"]
    with pytest.raises(FileNotFoundError):
        open_indices(str(tmp_path), cache_dir=synthetic["cache"])


# --- the toy CLIP: text queries find the pictures they describe --------------------------------------------
TOY_N = 540  # tests/toy_index.py: the session's toy_index fixture (conftest.py)


@pytest.mark.slow
@pytest.mark.parametrize("query", ["a red circle", "two blue squares", "three green triangles", "a yellow square"])
def test_toy_clip_text_query_finds_that_colour_and_shape(toy_index, query):
    from laion_spark.toy import world

    words = query.split()
    colour = next(w for w in words if w in world.COLOURS)
    shape = next(s for s, plural in world.SHAPES.items() if s in words or plural in words)
    truth = toy_index["truth"]
    assert sum(a["colour"] == colour and a["shape"] == shape for a in truth.values()) >= 10  # the index has them
    s = Searcher(toy_index["index"], cache_dir=toy_index["cache"])
    # deduplicate=False: to the toy CLIP, pictures of one caption are near duplicates (cosine > 0.94), so the
    # 0.94 filter keeps one per caption; with it on, the best result still shows that colour and shape
    top = s.query(text=query, k=5, deduplicate=False)
    best = s.query(text=query, k=1)[0]
    assert (truth[best["sample_id"]]["colour"], truth[best["sample_id"]]["shape"]) == (colour, shape)
    shown = [(truth[r["sample_id"]]["colour"], truth[r["sample_id"]]["shape"]) for r in top]
    assert len(top) == 5
    assert sum(c == colour and sh == shape for c, sh in shown) >= 4, shown


@pytest.mark.slow
def test_toy_index_names_its_model_and_image_queries_work(toy_index):
    from laion_spark.toy import world

    infos = json.loads(Path(toy_index["index"], "index_infos.json").read_text())
    ck = toy_index["checkpoint"]
    assert infos["model"]["model"] == ck.model and infos["model"]["pretrained"] == ck.checkpoint
    assert infos["field"] == "image" and infos["nb_vectors"] == TOY_N
    s = Searcher(toy_index["index"], cache_dir=toy_index["cache"])
    # a new picture (not in the index) of a purple triangle: its neighbours are purple triangles
    scene = next(sc for sc in world.split("validation", 200) if sc.attributes["colour"] == "purple"
                 and sc.attributes["shape"] == "triangle")
    buf = io.BytesIO()
    scene.image.save(buf, "PNG")
    top = s.query(image=buf.getvalue(), k=5, deduplicate=False)
    truth = toy_index["truth"]
    assert sum(truth[r["sample_id"]]["colour"] == "purple" and truth[r["sample_id"]]["shape"] == "triangle"
               for r in top) >= 4


@pytest.mark.slow
def test_search_cli_prints_a_table_and_json_lines(toy_index):
    s = Searcher(toy_index["index"], cache_dir=toy_index["cache"])
    want = s.query(text="a red circle", k=5)
    base = [sys.executable, "-m", "laion_spark.cli", "search", f"input={toy_index['index']}", "query=a red circle",
            "k=5", f"search.cache_dir={toy_index['cache']}"]
    res = subprocess.run([*base, "format=jsonl"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert [r["sample_id"] for r in lines] == [r["sample_id"] for r in want]
    assert [r["text"] for r in lines] == [r["text"] for r in want] and [r["rank"] for r in lines] == [1, 2, 3, 4, 5]
    res = subprocess.run(base, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr
    table = [line for line in res.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert len(table) == 5 and all(str(r["sample_id"]) in line and r["text"] in line
                                   for r, line in zip(want, table, strict=True))
    res = subprocess.run([*base[:5], "k=5"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 2 and "query=TEXT or image=FILE" in res.stderr
