"""Issue 28: a takedown on a run of many small files finds the files that hold the rows with Spark and opens
those alone; the driver receives the matching (file, sample_id) pairs, never a table.

A run is written here with pyarrow and export's own shard writers, every table in many small files: the
release (48 part files), two subsets, webdataset shards, clip-retrieval .npy shards, images, dataset,
dataset_rejected, embeddings, and an IVF index with its metadata, in a run directory whose name holds a
space (Spark gives its file paths URL-encoded). Two URLs are taken down. Expectations come from the files
as they were, read here with pyarrow and pandas: which files hold the two rows, and what each table
holds without them.
"""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from laion_spark import cli
from laion_spark.export import npy as NPY
from laion_spark.export import webdataset as WDS

N, D = 240, 8
IDS = (np.arange(N, dtype=np.int64) * 7919 + 101) * (-1) ** np.arange(N)  # hash-like, signed, unordered
PNG = b"\x89PNG\r\n\x1a\n"


def _rows(ids) -> pd.DataFrame:
    ids = [int(i) for i in ids]
    return pd.DataFrame({"sample_id": ids, "url": [f"http://scale.test/{i}.png" for i in ids],
                         "text": [f"caption {i}" for i in ids], "language": ["en" if i % 2 else "de" for i in ids],
                         "status": ["success"] * len(ids), "image": [PNG + str(i).encode() for i in ids],
                         "image_format": ["png"] * len(ids), "width": [64 + (i % 3) * 512 for i in ids]})


def _parts(folder: Path, table: pa.Table, files: int) -> None:
    folder.mkdir(parents=True)
    for k, rows in enumerate(np.array_split(np.arange(table.num_rows), files)):
        pq.write_table(table.take(pa.array(rows)), folder / f"part-{k:05d}-c000.snappy.parquet")


def _vectors(ids) -> np.ndarray:
    rng = np.random.default_rng(abs(int(ids[0])) % 1000 if len(ids) else 0)
    return rng.standard_normal((len(ids), D)).astype(np.float32)


def make_run(root: Path) -> Path:
    run = root / "a run"
    order = np.random.default_rng(28).permutation(IDS)  # rows in no id order across the files
    rows = _rows(order)
    vectors = {int(i): v for i, v in zip(order, _vectors(order), strict=True)}
    images = pa.Table.from_pandas(rows, preserve_index=False)
    _parts(run / "images", images, 6)
    scored = rows.assign(similarity=np.float32(0.3), clip_model="toy")
    _parts(run / "dataset", pa.Table.from_pandas(scored, preserve_index=False), 6)
    _parts(run / "dataset_rejected", pa.Table.from_pandas(_rows([3, 5]).assign(reason="below_threshold"),
                                                          preserve_index=False), 1)
    emb = pd.DataFrame({"sample_id": order, "image_embedding": [vectors[int(i)].tolist() for i in order],
                        "text_embedding": [(-vectors[int(i)]).tolist() for i in order]})
    _parts(run / "embeddings", pa.Table.from_pandas(emb, preserve_index=False), 6)
    release = pa.table({"SAMPLE_ID": pa.array(order, pa.int64()), "URL": rows["url"], "TEXT": rows["text"],
                        "WIDTH": pa.array(rows["width"], pa.int32()), "LANGUAGE": rows["language"]})
    _parts(run / "export" / "laion", release, 48)
    en = release.filter(pc.equal(release["LANGUAGE"], "en"))
    _parts(run / "export" / "subsets" / "en", en, 12)
    high = release.filter(pc.greater_equal(release["WIDTH"], 512))
    _parts(run / "export" / "subsets" / "high_resolution", high, 8)
    # webdataset: export's own writer, 8 shards of 30 rows
    layout = WDS.ShardLayout(str(run / "export" / "webdataset"),
                             WDS.meta_schema(pa.Schema.from_pandas(rows, preserve_index=False)), key_digits=2)
    for shard, part in enumerate(np.array_split(np.arange(N), 8)):
        WDS.write_shard(rows.iloc[part].reset_index(drop=True), layout, shard)
    # clip-retrieval shards in one model's folder, 6 of 40 rows
    for shard, part in enumerate(np.array_split(np.arange(N), 6)):
        NPY.write_shard(pa.Table.from_pandas(rows.iloc[part][["sample_id", "url", "text"]].join(emb.iloc[part][
            ["image_embedding", "text_embedding"]]), preserve_index=False), str(run / "export" / "emb" / "toy"),
            shard, "float16")
    # an IVF index of the vectors, its metadata sorted by sample_id in 4 files
    folder = run / "index" / "image"
    folder.mkdir(parents=True)
    x = np.stack([vectors[int(i)] for i in order])
    index = faiss.index_factory(D, "IVF4,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add_with_ids(x, order)
    faiss.write_index(index, str(folder / "knn.index"))
    meta = pa.table({"sample_id": pa.array(np.sort(order), pa.int64())})
    _parts(folder / "metadata", meta, 4)
    (folder / "index_infos.json").write_text(json.dumps({"nb_vectors": N, "dimension": D}))
    (run / "export" / "_summary.json").write_text(json.dumps({
        "format": "release", "released": N, "removed": 0, "reasons": {},
        "subsets": {"en": {"rows": en.num_rows}, "high_resolution": {"rows": high.num_rows}},
        "webdataset": {"rows": N}, "emb": {"rows": N}}))
    return run


def snapshot(run: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run.rglob("*"))
            if p.is_file() and not p.name.endswith(".crc")}


def holding(run: Path, gone: set[int]) -> dict[str, set[int]]:
    """Independently: every parquet file of the run (relative path) that holds some of gone -> which."""
    out = {}
    for p in sorted(run.rglob("*.parquet")):
        table = pq.read_table(p)
        column = "SAMPLE_ID" if "SAMPLE_ID" in table.column_names else "sample_id"
        hit = gone & set(table[column].to_pylist())
        if hit:
            out[str(p.relative_to(run))] = hit
    return out


def read_folder(folder: Path) -> pd.DataFrame:
    return pd.concat([pq.read_table(p).to_pandas() for p in sorted(folder.glob("*.parquet"))], ignore_index=True)


@pytest.fixture
def driver_log(spark, monkeypatch):
    """What the driver does during the takedown: the rows each Spark collect returned, the files fsspec opened
    to read, and what locate found."""
    import fsspec.implementations.local as local

    from laion_spark.takedown import locate as L

    DataFrame = type(spark.range(0))  # the session's own class (classic or Connect), not the abstract one

    seen = {"collects": [], "opened": [], "located": None}
    collect, open_ = DataFrame.collect, local.LocalFileSystem._open

    def counted(self):
        rows = collect(self)
        seen["collects"].append(len(rows))
        return rows

    def opened(self, path, mode="rb", *a, **k):
        if "r" in mode:
            seen["opened"].append(str(path))
        return open_(self, path, mode, *a, **k)

    real_locate = L.locate

    def located(*a, **k):
        seen["located"] = real_locate(*a, **k)
        return seen["located"]

    monkeypatch.setattr(DataFrame, "collect", counted)
    monkeypatch.setattr(local.LocalFileSystem, "_open", opened)
    monkeypatch.setattr(L, "locate", located)
    return seen


def test_a_takedown_rewrites_the_two_files_that_hold_the_rows_and_opens_no_other(spark, tmp_path, driver_log):
    run = make_run(tmp_path)
    release_before = read_folder(run / "export" / "laion")
    files = sorted((run / "export" / "laion").glob("*.parquet"))
    gone_ids = {int(pq.read_table(files[3])["SAMPLE_ID"][1].as_py()), int(pq.read_table(files[17])["SAMPLE_ID"][0]
                                                                            .as_py())}
    urls = release_before.set_index("SAMPLE_ID").loc[sorted(gone_ids), "URL"].tolist()
    (tmp_path / "request.txt").write_text("".join(u + "\n" for u in urls))
    held = holding(run, gone_ids)
    before = snapshot(run)
    driver_log["collects"].clear()
    driver_log["opened"].clear()

    cfg, module = cli.prepare("takedown", [], [f"run_dir={run}", f"list={tmp_path / 'request.txt'}"])
    summary = cli.run("takedown", cfg, module, spark)
    assert sorted(summary["sample_ids"]) == sorted(gone_ids) and summary["released_removed"] == 2

    # the release: exactly the two files holding the rows rewritten, the 46 others byte for byte with their mtimes
    after = snapshot(run)
    release_changed = {p for p in before if p.startswith("export/laion/") and after.get(p) != before[p]}
    assert release_changed == {str(files[3].relative_to(run)), str(files[17].relative_to(run))}
    assert {p for p in held if p.startswith("export/laion/")} == release_changed
    # the rows left are what pandas says: the release without the two URLs, in the files' order
    expected = release_before[~release_before["URL"].isin(urls)].reset_index(drop=True)
    pd.testing.assert_frame_equal(read_folder(run / "export" / "laion"), expected)
    # every table: the files that held a row changed (and their shard companions), no other data file did
    companions = set()
    for p in held:
        path = Path(p)
        if path.parent.name == "webdataset":
            companions |= {str(path.with_suffix(".tar")), str(path.with_name(path.stem + "_stats.json"))}
        elif path.parent.name == "metadata" and path.name.startswith("metadata_"):
            shard = path.stem.split("_")[-1]
            companions |= {str(path.parents[1] / n / f"{n}_{shard}.npy") for n in ("img_emb", "text_emb")}
    bookkeeping = ("takedowns/", "export_removed/", "manifest.json", "export/_summary.json",
                   "index/image/knn.index", "index/image/tombstones.npy", "index/image/index_infos.json")
    changed = {p for p in {*before, *after} if after.get(p) != before.get(p) and not p.startswith(bookkeeping)}
    assert changed == set(held) | companions, sorted(changed ^ (set(held) | companions))
    assert not any(p.startswith("dataset_rejected/") for p in changed)
    for name in ("export/subsets/en", "export/subsets/high_resolution", "images", "embeddings"):
        left = read_folder(run / name)
        column = "SAMPLE_ID" if "SAMPLE_ID" in left.columns else "sample_id"
        if name.startswith("export/"):
            assert not gone_ids & set(left[column])
        else:  # the rows stay; their image bytes or vectors go
            blank = "image" if name == "images" else "image_embedding"
            assert set(left.loc[left[blank].isna(), column]) == gone_ids

    # the driver: Spark located the files; the driver read those alone and received O(removed) rows
    located = driver_log["located"]
    pairs = {(str(Path(f).relative_to(run)), i) for files_ in located.values() for f, ids in files_.items()
             for i in ids}
    assert pairs == {(p, i) for p, ids in held.items() for i in ids}
    data_dirs = ("export/", "images/", "dataset/", "dataset_rejected/", "embeddings/", "index/image/metadata/")
    read = {str(Path(p).relative_to(run)) for p in driver_log["opened"] if p.startswith(str(run) + "/")}
    read_parquet = {p for p in read if p.endswith(".parquet") and p.startswith(data_dirs)}
    assert read_parquet == set(held), sorted(read_parquet ^ set(held))
    assert not {p for p in read if p.endswith(("_stats.json", ".tar", ".npy"))} - companions
    assert max(driver_log["collects"]) <= len(pairs) < N // 10

    # the counts the run publishes follow, counted by Spark
    published = json.loads((run / "export" / "_summary.json").read_text())
    assert published["released"] == N - 2 and published["webdataset"]["rows"] == N - 2
    assert published["emb"]["rows"] == N - 2 and published["reasons"] == {"takedown:request": 2}
    for sub in ("en", "high_resolution"):
        assert published["subsets"][sub]["rows"] == len(read_folder(run / "export" / "subsets" / sub))
    stats = [json.loads(p.read_text()) for p in (run / "export" / "webdataset").glob("*_stats.json")]
    assert published["webdataset"]["statuses"] == {"success": N - 2} == {"success": sum(s["count"] for s in stats)}
    index = faiss.read_index(str(run / "index" / "image" / "knn.index"))
    assert index.ntotal == N - 2

    # run again: a no-op; a resumed one (its entry set back to started) finds nothing left to rewrite
    again = cli.run("takedown", cfg, module, spark)
    assert again["already_applied"] and snapshot(run) == after
    entry = next((run / "takedowns").glob("*/entry.json"))
    doc = json.loads(entry.read_text())
    entry.write_text(json.dumps({**doc, "status": "started"}))
    resumed = cli.run("takedown", cfg, module, spark)
    assert resumed["resumed"] and resumed["released_removed"] == 0
    assert not [f for f in resumed["files"] if not f["file"].endswith(("_summary.json", "README.md"))]


def test_locate_finds_the_files_of_each_source_and_skips_what_is_missing(spark, tmp_path):
    from laion_spark.takedown import locate as L

    run = make_run(tmp_path)
    gone = {int(IDS[0]), int(IDS[100]), int(IDS[239]), 987654321}  # the last in no table
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"{i}\n" for i in sorted(gone)) + "\n")
    sources = [L.Source("release", str(run / "export" / "laion"), "SAMPLE_ID"),
               L.Source("webdataset", str(run / "export" / "webdataset")),
               L.npy_metadata("emb", str(run / "export" / "emb")),
               L.Source("nothing", str(run / "no_such_table"))]
    found = L.locate(spark, sources, L.ids_frame(spark, str(ids)))
    want = holding(run, gone)
    assert found["nothing"] == {}
    for name, prefix in (("release", "export/laion/"), ("webdataset", "export/webdataset/"),
                         ("emb", "export/emb/")):
        got = {str(Path(f).relative_to(run)): set(i) for f, i in found[name].items()}
        assert got == {p: i for p, i in want.items() if p.startswith(prefix)}, name
    assert L.count_rows(spark, sources[0]) == N and L.count_rows(spark, sources[3]) == 0
    assert L.webdataset_stats(spark, str(run / "export" / "webdataset"))["status_dict"] == {"success": N}


def test_files_spark_wrote_are_found_rewritten_and_read_by_spark_again(spark, tmp_path):
    # Spark's own part files (with Hadoop's .crc checksums beside them) and a folder holding none (only
    # _SUCCESS): found by locate, rewritten by rewrite.py, read by Spark afterwards
    from laion_spark.takedown import locate as L
    from laion_spark.takedown import rewrite as W

    table = tmp_path / "spark table"
    rows = [(int(i), f"http://scale.test/{int(i)}.png") for i in IDS]
    spark.createDataFrame(rows, "SAMPLE_ID long, URL string").repartition(8).write.parquet(str(table))
    empty = tmp_path / "empty"
    spark.createDataFrame([], "SAMPLE_ID long").write.parquet(str(empty))
    for p in empty.glob("*.parquet"):
        p.unlink()
    gone = {int(IDS[1]), int(IDS[2]), int(IDS[200])}
    wanted = spark.createDataFrame([(i,) for i in sorted(gone)], "sample_id long")
    found = L.locate(spark, [L.Source("t", str(table), "SAMPLE_ID"), L.Source("e", str(empty), "SAMPLE_ID")],
                     wanted)
    assert found["e"] == {}
    assert {str(Path(f).relative_to(table)): set(i) for f, i in found["t"].items()} == {
        p: i for p, i in holding(table, gone).items()}
    before = snapshot(table)
    done = W.parquet_folder(str(table), sorted(gone), "SAMPLE_ID", found["t"])
    assert sorted(d["file"] for d in done) == sorted(found["t"]) and sum(d["removed"] for d in done) == 3
    after = snapshot(table)
    changed = {p for p in before if after.get(p) != before[p]}
    assert changed == {str(Path(f).relative_to(table)) for f in found["t"]}
    assert not any((table / f".{Path(p).name}.crc").exists() for p in changed)  # a stale checksum would fail Spark
    left = sorted(r["SAMPLE_ID"] for r in spark.read.parquet(str(table)).collect())
    assert left == sorted(set(int(i) for i in IDS) - gone)
