"""chunks.py at scale: the input split once (each chunk reads only its own files, never the whole input
again), chunks run side by side, and the committed chunks' files become the table (moved, not copied),
a run killed while moving them resuming the moves."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType

from laion_spark import chunks as C

SCHEMA = StructType([StructField("id", LongType(), False), StructField("url", StringType(), True)])


def _rows(spark, n: int):
    return spark.createDataFrame([(i, f"http://h{i % 7}.test/{i}") for i in range(n)], SCHEMA)


def _files(df) -> set[str]:
    return {f.split("://", 1)[-1] for f in df.inputFiles()}


def test_split_by_key_writes_once_and_each_chunk_reads_only_its_folder(spark, tmp_path):
    rows = _rows(spark, 200)
    folder = str(tmp_path / "out_chunks")
    parts = C.split_by_key(spark, rows, ["url"], 4, folder, "print-1")
    # the same assignment Spark's own hash gives, computed apart
    want = (rows.select("id", F.pmod(F.xxhash64("url"), F.lit(4)).alias("k")).toPandas()
            .groupby("k")["id"].apply(sorted).to_dict())
    assert [p.rows for p in parts] == [len(want.get(k, [])) for k in range(4)]
    for p in parts:
        df = p.read()
        assert [(f.name, f.dataType) for f in df.schema] == [(f.name, f.dataType) for f in SCHEMA]
        assert sorted(r["id"] for r in df.collect()) == want.get(p.k, [])
        files = _files(df)
        assert files and all(f"/split/{C._CHUNK}={p.k}/" in f for f in files), files  # not the other chunks'
    marker = Path(folder) / "split" / C.SPLIT_MARKER
    written = {f: os.stat(f).st_mtime_ns for f in (Path(folder) / "split").rglob("*.parquet")}
    again = C.split_by_key(spark, rows, ["url"], 4, folder, "print-1")  # a resumed run: not split again
    assert [p.rows for p in again] == [p.rows for p in parts]
    assert {f: os.stat(f).st_mtime_ns for f in (Path(folder) / "split").rglob("*.parquet")} == written
    assert json.loads(marker.read_text())["fingerprint"] == "print-1"


def test_split_by_files_groups_whole_files(spark, tmp_path):
    table = tmp_path / "images"
    table.mkdir()
    ok = []
    for n, size in enumerate((5, 2, 2, 7, 1)):
        frame = pd.DataFrame({"id": range(100 * n, 100 * n + size),
                              "status": ["success" if i % 3 else "failed" for i in range(size)]})
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), table / f"part-{n}.parquet")
        ok.append(int((frame.status == "success").sum()))
    parts = C.split_by_files(spark, str(table), F.col("status") == "success", 3)
    # success rows per file 3, 1, 1, 4, 0 (the last has none: no chunk) -> [part-0], [part-1, part-2], [part-3]
    assert ok == [3, 1, 1, 4, 0]
    got = [(sorted(Path(f).name for f in _files(p.read())), p.rows) for p in parts]
    assert got == [(["part-0.parquet"], 3), (["part-1.parquet", "part-2.parquet"], 2), (["part-3.parquet"], 4)]
    for p in parts:
        assert p.read().where(F.col("status") != "success").count() == 0 and p.read().count() == p.rows


def test_chunks_run_side_by_side_and_their_files_become_the_table(spark, tmp_path):
    rows = _rows(spark, 120)
    folder, output = str(tmp_path / "t_chunks"), str(tmp_path / "t")
    parts = C.split_by_key(spark, rows, ["url"], 3, folder, "p")
    started = tmp_path / "started"
    started.mkdir()

    def make(part):
        k = part.k

        def wait(batches):
            # each chunk's task says it started, then waits for another chunk's: only chunks run at once get on
            (started / str(k)).touch()
            deadline = time.time() + 60
            while len(list(started.iterdir())) < 2 and time.time() < deadline:
                time.sleep(0.05)
            if len(list(started.iterdir())) < 2:
                raise RuntimeError("no other chunk ran beside this one")
            yield from batches

        return part.read().coalesce(1).mapInPandas(wait, SCHEMA), lambda: {"chunk": k}

    reused, observed = C.run_chunks(spark, parts, folder, "p", SCHEMA, make, "t")
    assert reused == 0 and sorted(o["chunk"] for o in observed) == [p.k for p in parts if p.rows]
    inodes = {os.stat(f).st_ino for k in range(3) for f in Path(folder, f"{k:05d}").glob("*.parquet")}
    C.assemble(folder, parts, output)
    out = list(Path(output).glob("*.parquet"))
    assert {os.stat(f).st_ino for f in out} == inodes  # the same files, moved: no byte written again
    assert sorted(pq.read_table(output).column("id").to_pylist()) == list(range(120))
    assert (Path(output) / "_SUCCESS").exists()
    again, _ = C.run_chunks(spark, parts, folder, "p", SCHEMA, make, "t")  # committed: reused, not redone
    assert again == 3


def test_a_kill_while_moving_resumes_the_moves(spark, tmp_path):
    rows = _rows(spark, 60)
    folder, output = str(tmp_path / "t_chunks"), str(tmp_path / "t")
    Path(output).mkdir()
    (Path(output) / "part-old.parquet").write_bytes(b"an earlier run's table")
    parts = C.split_by_key(spark, rows, ["url"], 2, folder, "p")
    C.run_chunks(spark, parts, folder, "p", SCHEMA, lambda part: (part.read(), None), "t")
    # a run killed inside assemble: chunk 0's files named in its marker, one of them already moved
    chunk0 = Path(folder, "00000")
    names = [f"00000-{f.name}" for f in sorted(chunk0.glob("*.parquet"))]
    marker = json.loads((chunk0 / C.CHUNK_MARKER).read_text())
    (chunk0 / C.CHUNK_MARKER).write_text(json.dumps({**marker, "files": names}))
    os.replace(chunk0 / names[0].split("-", 1)[1], Path(output) / names[0])
    C.assemble(folder, parts, output)
    assert sorted(pq.read_table(output).column("id").to_pylist()) == list(range(60))
    assert not (Path(output) / "part-old.parquet").exists()  # not a chunk's file: the old table's
