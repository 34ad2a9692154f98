"""download and embed in committed chunks: the stage's CLI killed in the middle (its whole process group, as
a crashed driver dies), then the same command again: the chunks it had committed are not done again and
the table equals an uninterrupted run's. download: a loopback server that answers slowly (so the kill
lands between chunks), whose own request counts show what was fetched again. embed: a committed chunk's
file altered between the runs, so that the final table shows whether it was reused or embedded again."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from laion_spark import cli
from laion_spark import schemas as S
from tests.http_faults import FaultServer
from tests.images import encode, textured
from tests.spark_servers import kill_group, spark_env

pytestmark = pytest.mark.slow

N = 40
CHUNK_ROWS = 8  # 5 chunks
REPO = Path(__file__).resolve().parents[1]


def _command(pairs: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "laion_spark.cli", "download", f"input={pairs}", f"output={out}",
            f"download.chunk_rows={CHUNK_ROWS}", "download.allowed_networks=127.0.0.1/32", "download.retries=0",
            "download.threads=2", *extra]


def _table(uri) -> dict[int, tuple]:
    rows = pq.read_table(uri, columns=[S.SAMPLE_ID, S.STATUS, "sha256", S.IMAGE]).to_pylist()
    return {r[S.SAMPLE_ID]: (r[S.STATUS], r["sha256"], hashlib.sha256(r[S.IMAGE] or b"").hexdigest()) for r in rows}


def test_a_killed_download_resumes_from_its_committed_chunks(spark, tmp_path):
    bodies = {i: encode(textured((90 + i, 80), seed=i), "PNG") for i in range(N)}
    with FaultServer("127.0.0.1") as server:
        def slow(i):
            def answer(handler):
                handler.wait(0.25)
                handler.reply(200, bodies[i], "image/png")
            return answer

        for i in range(N):
            server.add_handler(f"/img{i}.png", slow(i))
        pairs = tmp_path / "pairs"
        frame = pd.DataFrame({S.SAMPLE_ID: [5000 + i for i in range(N)], S.URL: [server.url(f"/img{i}.png")
                                                                               for i in range(N)],
                              S.TEXT: [f"picture {i}" for i in range(N)]})
        spark.createDataFrame(frame).write.parquet(str(pairs))
        out = tmp_path / "images"
        chunks = Path(str(out) + "_chunks")
        env = spark_env(tmp_path, PYTHONPATH=str(REPO))
        log = (tmp_path / "first.log").open("w")
        first = subprocess.Popen(_command(pairs, out), env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        try:
            deadline = time.time() + 300
            while len(list(chunks.glob("*/_chunk.json"))) < 2:
                assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.time() < deadline, "no two chunks committed in 300 s"
                time.sleep(0.2)
        finally:
            kill_group(first.pid, proc=first)  # the driver, its JVM and Python workers: a crash mid-stage
        assert not (out / "_summary.json").exists()
        done = {int(json.loads(p.read_text())["chunk"]): p.parent for p in chunks.glob("*/_chunk.json")}
        committed = set()
        for folder in done.values():
            committed |= set(pq.read_table(folder, columns=[S.SAMPLE_ID]).column(S.SAMPLE_ID).to_pylist())
        assert 2 <= len(done) < 5 and committed
        server.reset_counts()

        again = subprocess.run(_command(pairs, out, "mode=overwrite"), env=env, cwd=tmp_path, capture_output=True,
                               text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-4000:]
        fetched = {i for i in range(N) if server.requests(f"/img{i}.png")}
        assert not {5000 + i for i in fetched} & committed  # a committed chunk is not fetched again
        assert {5000 + i for i in fetched} | committed == set(frame.sample_id)
        summary = json.loads((out / "_summary.json").read_text())
        assert summary["chunks"] == 5 and summary["chunks_reused"] >= len(done)
        assert not chunks.exists()  # served, then removed

        # the same table as an uninterrupted run's
        whole = tmp_path / "whole"
        cfg, module = cli.prepare("download", [], _command(pairs, whole)[4:])
        cli.run("download", cfg, module, spark)
    resumed, uninterrupted = _table(out), _table(whole)
    assert resumed == uninterrupted and len(resumed) == N
    assert all(status == S.SUCCESS for status, _, _ in resumed.values())


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
    frame = images_frame(30, with_corrupt=False)
    images = tmp_path / "images"
    images.mkdir()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), images / "part-0.parquet")
    out = tmp_path / "embeddings"
    args = [f"input={images}", f"output={out}", "embed.chunk_rows=2", "embed.device=cpu", *model.overrides()]
    cmd = [sys.executable, "-m", "laion_spark.cli", "embed", *args]
    env = spark_env(tmp_path, PYTHONPATH=str(REPO))
    chunks = Path(str(out) + "_chunks")
    done = _kill_after_chunks(cmd, env, tmp_path, chunks, tmp_path / "first.log", 2)
    assert 2 <= len(done) < 15
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
    assert summary["chunks"] == 15 and summary["chunks_reused"] >= len(done) and not chunks.exists()

    whole = tmp_path / "whole"
    cfg, module = cli.prepare("embed", [], [f"input={images}", f"output={whole}", "embed.chunk_rows=2",
                                            "embed.device=cpu", *model.overrides()])
    cli.run("embed", cfg, module, spark)
    got = {r[S.SAMPLE_ID]: r for r in pq.read_table(out).to_pylist()}
    want = {r[S.SAMPLE_ID]: r for r in pq.read_table(whole).to_pylist()}
    assert sorted(got) == sorted(want) == sorted(frame[frame.status == "success"].sample_id)
    assert got[marked][S.SIMILARITY] == -9.0  # the committed chunk was taken as it was, not embedded again
    for sid, row in want.items():
        if sid != marked:
            assert got[sid] == row, sid
