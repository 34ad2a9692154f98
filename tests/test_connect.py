"""Spark Connect: the extract and dedupe transforms (and the embed, filter, download, export, index and search
stages) run unchanged through a Connect server on
127.0.0.1, and get_spark() returns the Connect session when SPARK_REMOTE is set.

The Connect client runs in a subprocess: `SparkSession.builder.remote(...).getOrCreate()` sets
SPARK_CONNECT_MODE_ENABLED=1 in os.environ for good, after which pyspark.sql.functions builds Connect
columns for every session of the process, so the classic session-scoped `spark` fixture of this
pytest process would break (test_connect_client_changes_the_process_mode shows it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import time

import pytest
from spark_servers import (
    EXPECTED_PAIRS,
    REPO,
    connect_server,
    dedupe_input_rows,
    expected_candidate_rows,
    spark_env,
    write_small_warc,
)

CLIENT = r"""
import json, os, sys, tempfile
import pandas as pd
from pyspark.sql import SparkSession, functions as F

from laion_spark import schemas as S
from laion_spark.config import DedupeConfig, ExtractConfig
from laion_spark.dedupe.transform import dedupe_pairs
from laion_spark.extract.transform import extract_candidates
from laion_spark.packaging import build_pyfiles_zip
from laion_spark.session import get_spark

args = json.loads(sys.argv[1])
spark = get_spark()  # SPARK_REMOTE is set: the Connect session
out = {"session_class": type(spark).__module__ + "." + type(spark).__name__}
# the server does not have laion_spark: ship it the Connect way (Databricks shared compute too)
spark.addArtifacts(str(build_pyfiles_zip(tempfile.mkdtemp())), pyfile=True)

paths = spark.createDataFrame([(args["warc_uri"],)], f"{S.SOURCE_URI} string")
result = extract_candidates(paths, ExtractConfig())
out["candidates"] = [
    list(r) for r in result.candidates.select(
        S.URL, S.TEXT, S.PAGE_URL, S.LANGUAGE, S.LICENSE,
        F.date_format(S.CRAWL_TIME, "yyyy-MM-dd HH:mm:ss"), S.SOURCE_URI, S.SOURCE_OFFSET, S.SOURCE_LENGTH,
    ).collect()
]
out["errors"] = result.errors.count()

rows = [tuple(r) for r in args["dedupe_rows"]]
candidates = spark.createDataFrame(rows, S.CANDIDATES)
pairs = dedupe_pairs(candidates, DedupeConfig()).pairs
out["pairs"] = [
    list(r) for r in pairs.select(
        S.URL, S.TEXT, S.SOURCE_URI, S.SOURCE_OFFSET, (F.col(S.SAMPLE_ID) == F.xxhash64(S.URL, S.TEXT))
    ).collect()
]
out["worker_pythonpath"] = spark.range(1).mapInPandas(
    lambda it: (pd.DataFrame({"v": [os.environ.get("PYTHONPATH", "")]}) for _ in it), "v string"
).collect()[0][0]
print("RESULT " + json.dumps(out))
spark.stop()
"""


@pytest.fixture(scope="module")
def connect_url(tmp_path_factory):
    started = time.monotonic()
    with connect_server(tmp_path_factory.mktemp("connect")) as url:
        print(f"Spark Connect server up in {time.monotonic() - started:.1f}s")
        yield url


def _run_client(script: str, url: str, tmp_path, *args: str, **env_extra: str) -> subprocess.CompletedProcess:
    env = spark_env(tmp_path, SPARK_REMOTE=url, PYTHONPATH=str(REPO), **env_extra)
    return subprocess.run([sys.executable, "-c", script, *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_transforms_through_spark_connect(connect_url, tmp_path):
    warc = tmp_path / "pages.warc.gz"
    offsets = write_small_warc(warc)
    warc_uri = warc.as_uri()
    rows = [[*r[:6], None, *r[7:]] for r in dedupe_input_rows()]  # crawl_time (JSON): not compared
    res = _run_client(CLIENT, connect_url, tmp_path, json.dumps({"warc_uri": warc_uri, "dedupe_rows": rows}))
    assert res.returncode == 0, res.stderr[-6000:]
    out = json.loads(next(line for line in res.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert out["session_class"] == "pyspark.sql.connect.session.SparkSession"
    assert sorted(map(tuple, out["candidates"])) == sorted(expected_candidate_rows(warc_uri, offsets))
    assert out["errors"] == 0
    assert sorted(map(tuple, out["pairs"])) == sorted((*p, True) for p in EXPECTED_PAIRS)
    assert str(REPO) not in out["worker_pythonpath"].split(":")  # laion_spark came as an artifact


@pytest.mark.slow
def test_connect_session_beside_a_classic_one(connect_url, tmp_path):
    """pyspark 4.1 refuses a Connect session in a process whose classic session is running
    (SESSION_ALREADY_EXIST), and one started first puts the whole process in Connect mode: why
    the Connect client above runs in a subprocess, away from the classic `spark` fixture."""
    script = r"""
import os, sys
from pyspark.sql import SparkSession, functions as F
classic = (SparkSession.builder.master("local[1]").config("spark.driver.bindAddress", "127.0.0.1")
           .config("spark.driver.host", "127.0.0.1").config("spark.ui.enabled", "false").getOrCreate())
try:
    SparkSession.builder.remote(sys.argv[1]).getOrCreate()
except Exception as exc:
    print("REFUSED", type(exc).__name__, getattr(exc, "getCondition", lambda: "")())
print("CLASSIC", classic.range(4).count(), type(F.col("x")).__module__)
classic.stop()
remote = SparkSession.builder.remote(sys.argv[1]).getOrCreate()
print("REMOTE", remote.range(3).count(), type(F.col("x")).__module__, os.environ.get("SPARK_CONNECT_MODE_ENABLED"))
remote.stop()
"""
    env = spark_env(tmp_path)
    res = subprocess.run([sys.executable, "-c", script, connect_url], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "REFUSED PySparkRuntimeError SESSION_ALREADY_EXIST" in res.stdout
    assert "CLASSIC 4 pyspark.sql.classic.column" in res.stdout
    assert "REMOTE 3 pyspark.sql.connect.column 1" in res.stdout


STAGES_CLIENT = r"""
import json, logging, sys, tempfile

from laion_spark import cli
from laion_spark.packaging import build_pyfiles_zip
from laion_spark.session import get_spark

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")  # as the CLI logs (progress lines)
args = json.loads(sys.argv[1])
spark = get_spark()  # SPARK_REMOTE is set: the Connect session
spark.addArtifacts(str(build_pyfiles_zip(tempfile.mkdtemp())), pyfile=True)
# {stage: overrides}, or [[stage, overrides], ...] where a stage runs twice; in order: each stage's
# output is a later one's input
steps = list(args.items()) if isinstance(args, dict) else args
summaries = []
for stage, overrides in steps:
    cfg, module = cli.prepare(stage, [], overrides)
    summaries.append(cli.run(stage, cfg, module, spark))
out = dict(zip(args, summaries)) if isinstance(args, dict) else summaries
print("RESULT " + json.dumps(out, default=str))
spark.stop()
"""


def tiny_images(tmp_path, n: int):
    """-> (the tiny-a CLIP written to tmp_path, an images frame of n rows, its table's folder, the rows
    embed can embed: success and decodable), for the stages run through Connect below."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from embed_fixtures import CORRUPT_ID, TINY_A, images_frame, write_model

    model = write_model(tmp_path / "model", "tiny-a", TINY_A, seed=1)
    frame = images_frame(n)
    images = tmp_path / "images"
    images.mkdir()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), images / "part-0.parquet")
    return model, frame, images, frame[(frame.status == "success") & (frame.sample_id != CORRUPT_ID)]


@pytest.mark.slow
def test_embed_and_filter_through_spark_connect(connect_url, tmp_path):
    # the embed stage's pandas UDF, model cache and job (conf set and reset, no SparkContext) and the
    # filter through a Connect server, checked against open_clip called here directly
    import numpy as np
    import pyarrow.parquet as pq
    from embed_fixtures import CORRUPT_ID, reference_embeddings

    model, frame, images, good = tiny_images(tmp_path, 10)
    want_image, want_text = reference_embeddings(model, good.image.tolist(), good.text.tolist())
    similarity = dict(zip(good.sample_id, (want_image * want_text).sum(axis=1)))
    ordered = sorted(similarity.values())
    k = len(ordered) // 2
    threshold = float(ordered[k - 1] + ordered[k]) / 2  # half kept, half below, no row near the line
    embeddings, dataset = tmp_path / "embeddings", tmp_path / "dataset"
    args = {
        "embed": [f"input={images}", f"output={embeddings}", *model.overrides(), "embed.model_batch_size=3"],
        "filter": [f"input={images}", f"embeddings={embeddings}", f"output={dataset}",
                   *(f"filter.threshold.{g}={threshold}" for g in ("en", "multi", "nolang"))],
    }
    res = _run_client(STAGES_CLIENT, connect_url, tmp_path, json.dumps(args))
    assert res.returncode == 0, res.stderr[-6000:]
    out = json.loads(next(line for line in res.stdout.splitlines() if line.startswith("RESULT "))[7:])

    got = pq.read_table(embeddings).to_pandas().set_index("sample_id")
    assert sorted(got.index) == sorted(frame[frame.status == "success"].sample_id)
    np.testing.assert_allclose(np.stack(got.loc[good.sample_id].image_embedding), want_image, atol=1e-5)
    np.testing.assert_allclose(np.stack(got.loc[good.sample_id].text_embedding), want_text, atol=1e-5)
    assert got.loc[CORRUPT_ID].error_message.startswith("image_decode_error: ")
    assert out["embed"]["embedded"] == len(good)
    # the device report works on Connect too (an Observation, not an accumulator): every row on the CPU
    cpu = "cpu: no GPU in the task's resources"
    assert list(out["embed"]["devices"]) == [cpu]
    assert out["embed"]["devices"][cpu]["rows"] == len(frame[frame.status == "success"])

    kept = set(pq.read_table(dataset).column("sample_id").to_pylist())
    rejected = pq.read_table(f"{dataset}_rejected").to_pandas().set_index("sample_id").reason.to_dict()
    assert len(kept) + len(rejected) == len(frame) and not kept & set(rejected)
    assert kept == {sid for sid, sim in similarity.items() if sim >= threshold}
    for sid, status in zip(frame.sample_id, frame.status):
        if status != "success":
            assert rejected[sid] == f"download_failed:{status}"
    assert rejected[CORRUPT_ID] == "not_embedded"
    assert {sid for sid, why in rejected.items() if why == "below_threshold"} == set(similarity) - kept


@pytest.mark.slow
def test_download_and_export_through_spark_connect(connect_url, tmp_path):
    # the download stage's UDF (address guard, fetcher, image checks) and the webdataset export through a
    # Connect server, from the demo image server on 127.0.0.1; expectations from what the server answers

    import pyarrow as pa
    import pyarrow.parquet as pq

    from laion_spark.demo.images import DemoImageServer, answer_kind

    urls = [f"http://shop{i % 3}.example.com/img/{i}.jpg" for i in range(30)]
    kinds = {url: answer_kind(url.split("/")[2], "/" + url.split("/", 3)[3]) for url in urls}
    assert {"image", "404"} <= set(kinds.values())  # the list has successes and failures
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    pq.write_table(pa.table({"sample_id": pa.array(range(len(urls)), pa.int64()), "url": urls,
                             "text": [f"picture number {i}" for i in range(len(urls))]}), pairs / "part-0.parquet")
    images, shards = tmp_path / "images", tmp_path / "shards"
    with DemoImageServer() as server:
        args = {
            "download": [f"input={pairs}", f"output={images}", "download.allowed_networks=127.0.0.1/32",
                         f"download.connect_to=*:80=127.0.0.1:{server.port}", "download.retries=0"],
            "export": [f"input={images}", f"output={shards}", "export.format=webdataset"],
        }
        res = _run_client(STAGES_CLIENT, connect_url, tmp_path, json.dumps(args))
    assert res.returncode == 0, res.stderr[-6000:]
    out = json.loads(next(line for line in res.stdout.splitlines() if line.startswith("RESULT "))[7:])

    rows = pq.read_table(images, columns=["url", "status", "http_status"]).to_pylist()
    assert sorted(r["url"] for r in rows) == sorted(urls)  # one row per pair
    status = {"image": "success", "404": "http_error", "503": "http_error", "html": "not_image", "tiny": "too_small"}
    assert {r["url"]: r["status"] for r in rows} == {url: status[kind] for url, kind in kinds.items()}
    successes = sum(kind == "image" for kind in kinds.values())
    assert out["download"]["statuses"]["success"] == successes
    names = []
    for shard in sorted(shards.glob("*.tar")):
        with tarfile.open(shard) as tar:
            names += tar.getnames()
    assert sum(n.endswith(".jpg") for n in names) == successes and out["export"]["successes"] == successes


@pytest.mark.slow
def test_index_and_search_through_spark_connect(connect_url, tmp_path):
    # embed, then the index stage's tasks (trained index read by each task, parts renamed into place, the
    # eval queries' exact top-k from the same pass), merged and as shards, then search in the same client;
    # expectations: open_clip called here and an exact ranking by numpy over its embeddings
    import numpy as np
    import pyarrow.parquet as pq
    from embed_fixtures import CORRUPT_ID, reference_embeddings

    model, frame, images, good = tiny_images(tmp_path, 24)
    query = "a red circle"
    want_image, want_text = reference_embeddings(model, good.image.tolist(), [*good.text.tolist(), query])
    q = want_text[-1]
    embeddings, run_index = tmp_path / "embeddings", tmp_path / "run" / "index"
    search = ["query=" + query, "k=5", "search.deduplicate=false", "search.unique_urls=false",
              f"search.cache_dir={tmp_path / 'cache'}"]
    steps = [
        ["embed", [f"input={images}", f"output={embeddings}", *model.overrides()]],
        ["index", [f"input={embeddings}", f"dataset={images}", f"output={run_index / 'image'}",
                   "index.eval_queries=10"]],
        ["index", [f"input={embeddings}", f"dataset={images}", f"output={run_index / 'text'}", "index.field=text",
                   "index.shards=2",
                   "index.eval_queries=10"]],
        ["search", [f"input={run_index}", *search]],  # both indices, named by folder
    ]
    res = _run_client(STAGES_CLIENT, connect_url, tmp_path, json.dumps(steps))
    assert res.returncode == 0, res.stderr[-6000:]
    _, image_out, text_out, search_out = json.loads(
        next(line for line in res.stdout.splitlines() if line.startswith("RESULT "))[7:])

    ids = good.sample_id.to_numpy()
    infos = json.loads((run_index / "image" / "index_infos.json").read_text())
    assert infos["nb_vectors"] == len(good) and infos["field"] == "image"
    assert image_out["indexed"] == len(good) and text_out["indexed"] == len(good)
    rejected = pq.read_table(f"{run_index / 'image'}_rejected").to_pylist()
    assert [r["sample_id"] for r in rejected] == [CORRUPT_ID] and rejected[0]["reason"]
    assert len(list((run_index / "text" / "shards").glob("knn_*.index"))) == 2
    # the image index: small, so exact; the ranking is numpy's over open_clip's own embeddings
    scores = want_image @ q
    order = np.argsort(-scores, kind="stable")[:5]
    got = search_out["results"]["image"]
    assert [r["sample_id"] for r in got] == ids[order].tolist()
    np.testing.assert_allclose([r["similarity"] for r in got], scores[order], atol=1e-4)
    # the text index (2 shards): captions repeat, so compare the scores (tied ids may come in any order)
    text_scores = np.sort(want_text[:-1] @ q)[::-1][:5]
    got = search_out["results"]["text"]
    np.testing.assert_allclose([r["similarity"] for r in got], text_scores, atol=1e-4)
    assert all(r["text"] == query for r in got[:3])


@pytest.mark.slow
def test_embed_and_tag_through_spark_connect(connect_url, tmp_path):
    # embed, then tag (a head loaded on the driver and in the tasks, the zero-shot prompts encoded with the
    # embeddings' own CLIP) through a Connect server; expectations: open_clip and torch called here
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from embed_fixtures import TINY_A, reference_embeddings

    from laion_spark.tag.zero_shot import preset
    from tests.test_tag_zero_shot import reference

    model, frame, images, good = tiny_images(tmp_path, 12)
    prompts, boundary = preset("laion400m")
    want_image, want_prompts = reference_embeddings(model, good.image.tolist(), prompts)
    torch.manual_seed(3)
    head = torch.nn.Linear(TINY_A["embed_dim"], 1)
    torch.save(head.state_dict(), tmp_path / "aesthetic.pth")
    embeddings, tags, release = tmp_path / "embeddings", tmp_path / "tags", tmp_path / "release"
    banned = good.url.iloc[0]
    (tmp_path / "takedown.txt").write_text(banned + "\n")
    dataset = tmp_path / "dataset"  # the images rows with download's image_format, as filter's dataset has it
    dataset.mkdir()
    pq.write_table(pa.Table.from_pandas(frame.assign(image_format=frame.image.map(lambda b: None if b is None
                                                                                 else "jpg")),
                                        preserve_index=False), dataset / "part-0.parquet")
    args = {
        "embed": [f"input={images}", f"output={embeddings}", *model.overrides()],
        "tag": [f"input={images}", f"embeddings={embeddings}", f"output={tags}",
                "tag.aesthetic_score.architecture=linear",
                f"tag.aesthetic_score.checkpoint={tmp_path / 'aesthetic.pth'}"],
        # and the release: the tags joined, a list matched by a join, shards and .npy files, all through Connect
        "export": [f"input={dataset}", f"tags={tags}", f"embeddings={embeddings}", f"output={release}",
                   f"export.blocklist.url={tmp_path / 'takedown.txt'}", "export.npy_dtype=float32"],
    }
    res = _run_client(STAGES_CLIENT, connect_url, tmp_path, json.dumps(args))
    assert res.returncode == 0, res.stderr[-6000:]
    out = json.loads(next(line for line in res.stdout.splitlines() if line.startswith("RESULT "))[7:])
    got = pq.read_table(tags).to_pandas().set_index("sample_id")
    assert sorted(got.index) == sorted(frame.sample_id) and out["tag"]["tagged"] == len(frame)  # every row once
    with torch.no_grad():
        want_aesthetic = head(torch.from_numpy(want_image))[:, 0].numpy()
    np.testing.assert_allclose(got.loc[good.sample_id].aesthetic_score.to_numpy(dtype=float), want_aesthetic,
                               atol=1e-4)
    assert list(got.loc[good.sample_id].nsfw_zero_shot) == reference(want_image, want_prompts, boundary)
    others = got.drop(index=good.sample_id)  # failed downloads and the corrupt image: no embedding, no tags
    assert others.aesthetic_score.isna().all() and others.nsfw_zero_shot.isna().all()

    laion = pq.read_table(release / "laion").to_pandas().set_index("SAMPLE_ID")
    banned_id = int(good.sample_id.iloc[0])
    assert sorted(laion.index) == sorted(set(frame.sample_id) - {banned_id})
    assert out["export"]["reasons"] == {"blocklisted:takedown": 1}
    np.testing.assert_allclose(laion.AESTHETIC_SCORE.to_numpy(dtype=float),
                               got.loc[laion.index].aesthetic_score.to_numpy(dtype=float), atol=1e-6, equal_nan=True)
    names = []
    for shard in sorted((release / "webdataset").glob("*.tar")):
        with tarfile.open(shard) as tar:
            names += tar.getnames()
    successes = int((frame.status == "success").sum()) - 1
    assert len([n for n in names if n.endswith(".json")]) == successes == out["export"]["webdataset"]["successes"]
    ids = [i for m in sorted((release / "emb").glob("*/metadata/*.parquet"))
           for i in pq.read_table(m).column("sample_id").to_pylist()]
    assert sorted(ids) == sorted(set(good.sample_id) - {banned_id})
