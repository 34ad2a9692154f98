"""embed in committed chunks: the stage's CLI killed in the middle (its whole process group, as a crashed
driver dies), then the same command again: the chunks it had committed are not done again and the table
equals an uninterrupted run's. A committed chunk's file is altered between the runs, so that the final
table shows whether it was reused or embedded again. (download's chunks: the killed pipeline in
tests/test_pipeline_faults.py, whose loopback servers count what was fetched again.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from laion_spark import cli
from laion_spark import schemas as S
from tests.spark_servers import kill_group, spark_env

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _kill_after_chunks(cmd, env, cwd, chunks: Path, log: Path, at_least: int) -> dict[int, Path]:
    """Run cmd in its own process group; kill the group once `at_least` chunks are committed -> them."""
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + 300
            while len(list(chunks.glob("*/_chunk.json"))) < at_least:
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.time() < deadline, f"no {at_least} chunks committed in 300 s"
                time.sleep(0.1)
        finally:
            kill_group(proc.pid, proc=proc)
    return {int(json.loads(p.read_text())["chunk"]): p.parent for p in chunks.glob("*/_chunk.json")}


def test_a_killed_embed_resumes_from_its_committed_chunks(spark, tmp_path):
    import pyarrow as pa
    from embed_fixtures import TINY_A, images_frame, write_model

    model = write_model(tmp_path / "model", "tiny-a", TINY_A, seed=1)
    frame = images_frame(12, with_corrupt=False)
    images = tmp_path / "images"
    images.mkdir()
    # four files of three success rows each (the failures in the last): embed's chunks are the input's files
    for n, (lo, hi) in enumerate(((0, 3), (3, 6), (6, 9), (9, len(frame)))):
        pq.write_table(pa.Table.from_pandas(frame.iloc[lo:hi], preserve_index=False), images / f"part-{n}.parquet")
    out = tmp_path / "embeddings"
    args = [f"input={images}", f"output={out}", "embed.chunk_rows=3", "embed.device=cpu", *model.overrides()]
    cmd = [sys.executable, "-m", "laion_spark.cli", "embed", *args]
    env = spark_env(tmp_path, PYTHONPATH=str(REPO))
    chunks = Path(str(out) + "_chunks")
    done = _kill_after_chunks(cmd, env, tmp_path, chunks, tmp_path / "first.log", 2)
    assert 2 <= len(done) < 4
    # mark one committed row: if its chunk is reused, the final table carries the mark
    folder = next(iter(done.values()))
    part = sorted(folder.glob("*.parquet"))[0]
    table = pq.read_table(part)
    marked = table.column(S.SAMPLE_ID)[0].as_py()
    table = table.set_column(table.schema.get_field_index(S.SIMILARITY), S.SIMILARITY,
                             pa.array([-9.0] + table.column(S.SIMILARITY).to_pylist()[1:], pa.float32()))
    pq.write_table(table, part)
    for crc in folder.glob(".*.crc"):
        crc.unlink()  # Hadoop's checksum of the old bytes

    again = subprocess.run([*cmd, "mode=overwrite"], env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["chunks"] == 4 and summary["chunks_reused"] >= len(done) and not chunks.exists()

    whole = tmp_path / "whole"
    cfg, module = cli.prepare("embed", [], [f"input={images}", f"output={whole}", "embed.chunk_rows=3",
                                            "embed.device=cpu", *model.overrides()])
    cli.run("embed", cfg, module, spark)
    got = {r[S.SAMPLE_ID]: r for r in pq.read_table(out).to_pylist()}
    want = {r[S.SAMPLE_ID]: r for r in pq.read_table(whole).to_pylist()}
    assert sorted(got) == sorted(want) == sorted(frame[frame.status == "success"].sample_id)
    assert got[marked][S.SIMILARITY] == -9.0  # the committed chunk was taken as it was, not embedded again
    for sid, row in want.items():
        if sid != marked:
            assert got[sid] == row, sid
