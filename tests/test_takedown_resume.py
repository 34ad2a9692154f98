"""A takedown or a pipeline swap killed between two writes, and what the next run makes of it (no Spark):
each rewrite, run again on what the killed one left, finishes the job; nothing is left half done, doubled
or lost."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laion_spark import cli
from laion_spark.config import ConfigError
from laion_spark.takedown import index_files as I
from laion_spark.takedown import rewrite as W
from tests.test_takedown_index import GONE, N, found_ids, vectors, write_layout


def test_image_bytes_are_blanked_in_every_part_file_that_holds_them(tmp_path):
    for part, rows in enumerate(([1, 2, 3], [4, 5], [6])):
        pq.write_table(pa.table({"sample_id": pa.array(rows, pa.int64()), "url": [f"u{i}" for i in rows],
                                 "image": [f"bytes-{i}".encode() for i in rows]}), tmp_path / f"part-{part}.parquet")
    done = W.null_columns(str(tmp_path), [2, 5], "sample_id")
    assert sorted(Path(d["file"]).name for d in done) == ["part-0.parquet", "part-1.parquet"]
    rows = {r["sample_id"]: r for r in pq.read_table(tmp_path).to_pylist()}
    assert sorted(rows) == [1, 2, 3, 4, 5, 6]  # the rows stay
    assert rows[2]["image"] is None and rows[5]["image"] is None and rows[4]["image"] == b"bytes-4"
    assert rows[2]["url"] == "u2"
    assert W.null_columns(str(tmp_path), [2, 5], "sample_id") == []  # again: nothing to do


def test_npy_shards_cut_before_their_metadata_are_finished_not_refused(tmp_path):
    space = tmp_path / "emb" / "model"
    for sub in ("metadata", "img_emb", "text_emb"):
        (space / sub).mkdir(parents=True)
    ids = np.arange(10, dtype=np.int64)
    pq.write_table(pa.table({"sample_id": ids}), space / "metadata" / "metadata_0.parquet")
    matrix = np.arange(40, dtype=np.float16).reshape(10, 4)
    keep = ~np.isin(ids, [3, 7])
    np.save(space / "img_emb" / "img_emb_0.npy", matrix[keep])  # the killed takedown got this far
    np.save(space / "text_emb" / "text_emb_0.npy", matrix)
    done = W.npy_shards(str(tmp_path / "emb"), [3, 7])
    assert [d["removed"] for d in done] == [2]
    assert pq.read_table(space / "metadata").column("sample_id").to_pylist() == ids[keep].tolist()
    for name in ("img_emb", "text_emb"):
        assert np.array_equal(np.load(space / name / f"{name}_0.npy"), matrix[keep])


def test_an_on_disk_index_whose_header_was_not_written_is_finished_on_resume(tmp_path):
    folder = tmp_path / "run" / "index" / "image"
    write_layout(folder, "ondisk")
    index = faiss.read_index(str(folder / "knn.index"), faiss.IO_FLAG_ONDISK_SAME_DIR)
    assert I._remove_ondisk(index, np.array(GONE, np.int64)) == len(GONE)
    del index  # killed here: knn.ivfdata changed in place, knn.index (the list sizes) not written
    done = I.remove(str(folder), GONE)
    assert {Path(d["file"]).name for d in done} >= {"knn.index", "knn.ivfdata"}
    index = faiss.read_index(str(folder / "knn.index"), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
    assert index.ntotal == N - len(GONE)
    assert found_ids(folder) == set(range(N)) - set(GONE)
    _, labels = index.search(vectors()[:5], 20)
    assert -1 not in labels  # no blank slot left inside a list
    assert json.loads((folder / "index_infos.json").read_text())["nb_vectors"] == N - len(GONE)


def test_a_swap_killed_between_its_moves_gets_the_good_table_back(tmp_path):
    from laion_spark.pipeline.job import REPLACED, _restore_aside

    final = tmp_path / "export"
    aside = tmp_path / f"export{REPLACED}1"
    aside.mkdir()
    (aside / "_summary.json").write_text("{}")
    older = tmp_path / f"export{REPLACED}0"
    older.mkdir()
    _restore_aside(str(final))
    assert (final / "_summary.json").exists() and not aside.exists() and not older.exists()


def test_a_pipeline_does_not_run_over_an_unfinished_takedown(tmp_path):
    entry = tmp_path / "run" / "takedowns" / "0001-request"
    entry.mkdir(parents=True)
    (entry / "entry.json").write_text(json.dumps({"status": "started", "kind": "url", "list_sha256": "x"}))
    with pytest.raises(ConfigError, match="did not finish"):
        cli.prepare("pipeline", [], [f"input={tmp_path}/a.warc.gz", f"run_dir={tmp_path / 'run'}"])
    (entry / "entry.json").write_text(json.dumps({"status": "complete", "kind": "url", "list_sha256": "x"}))
    cli.prepare("pipeline", [], [f"input={tmp_path}/a.warc.gz", f"run_dir={tmp_path / 'run'}"])


def test_a_rerun_download_or_embed_gets_the_taken_down_rows_blanked_again(tmp_path):
    # the journal of a completed takedown of rows 2 and 5; then download and embed rewrote their tables
    # with the rows' bytes and vectors again (their URLs are still in pairs)
    from laion_spark.pipeline import plan as P
    from laion_spark.pipeline.job import _blank_taken_down

    run = tmp_path / "run"
    entry = run / "takedowns" / "0001-request"
    entry.mkdir(parents=True)
    (entry / "entry.json").write_text(json.dumps({"status": "complete", "kind": "url", "keys_kind": "url_sha256",
                                                  "list_sha256": "x"}))
    (entry / "takedown-0001-request-ids.txt").write_text("2\n5\n")
    rows = list(range(1, 7))
    (run / "images").mkdir()
    pq.write_table(pa.table({"sample_id": pa.array(rows, pa.int64()), "image": [b"img%d" % i for i in rows]}),
                   run / "images" / "part-0.parquet")
    (run / "embeddings").mkdir()
    pq.write_table(pa.table({"sample_id": pa.array(rows, pa.int64()),
                             "image_embedding": [[float(i)] * 4 for i in rows]}), run / "embeddings" / "part-0.parquet")
    for stage, table in (("download", "images"), ("embed", "embeddings")):
        _blank_taken_down(P.Step(stage, stage, type("Cfg", (), {"output": str(run / table)})()))
    images = {r["sample_id"]: r["image"] for r in pq.read_table(run / "images").to_pylist()}
    vectors = {r["sample_id"]: r["image_embedding"] for r in pq.read_table(run / "embeddings").to_pylist()}
    assert [i for i in rows if images[i] is None] == [2, 5] and images[1] == b"img1"
    assert [i for i in rows if vectors[i] is None] == [2, 5] and vectors[6] == [6.0] * 4
