"""The embed stage through Spark (local[2]): the UDF's embeddings against open_clip called directly,
one row per success row, per-group models, and the job's summary.

Expectations are written from the input table (which rows are success, which are corrupt) and
from open_clip alone (tests/embed_fixtures.reference_embeddings), never from the code under test.
Models are tiny random-weight ViT CLIPs saved as local checkpoints; nothing touches the network.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from laion_spark import cli
from laion_spark import schemas as S
from laion_spark.config import load_config
from laion_spark.embed.job import format_report
from tests.embed_fixtures import CORRUPT_ID, TINY_A, TINY_B, images_frame, reference_embeddings, write_model

pytestmark = pytest.mark.slow

# small batches so that one partition holds several Arrow batches and several model batches
SMALL_BATCHES = ["embed.model_batch_size=4", "embed.arrow_batch_rows=5"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("embed-spark-models")
    return {
        "a1": write_model(folder, "tiny-a", TINY_A, seed=1),
        "a2": write_model(folder, "tiny-a", TINY_A, seed=7, checkpoint_name="tiny-a-other.pt"),
        "b": write_model(folder, "tiny-b", TINY_B, seed=2),
    }


@pytest.fixture(scope="module")
def images_table(spark, tmp_path_factory):
    frame = images_frame(24)
    path = tmp_path_factory.mktemp("embed-images") / "images"
    spark.createDataFrame(frame).repartition(3).write.parquet(str(path))
    return str(path), frame


def run_embed(spark, tmp_path, input_uri, *overrides):
    out = str(tmp_path / "embeddings")
    cfg, module = cli.prepare("embed", [], [f"input={input_uri}", f"output={out}", *overrides])
    summary = cli.run("embed", cfg, module, spark)
    return summary, spark.read.parquet(out).toPandas().set_index(S.SAMPLE_ID), out


def assert_matches_reference(got: pd.DataFrame, rows: pd.DataFrame, model) -> None:
    """Embeddings rows `got` (indexed by sample_id) of `rows` (images rows) == open_clip's, to 1e-5."""
    want_image, want_text = reference_embeddings(model, rows.image.tolist(), rows.text.tolist())
    mine = got.loc[rows.sample_id]
    assert (mine.clip_model == model.clip_model).all()
    assert mine.error_message.isna().all()
    np.testing.assert_allclose(np.stack(mine.image_embedding), want_image, atol=1e-5)
    np.testing.assert_allclose(np.stack(mine.text_embedding), want_text, atol=1e-5)
    np.testing.assert_allclose(mine.similarity.to_numpy(), (want_image * want_text).sum(axis=1), atol=1e-5)


def test_embed_job_matches_open_clip(spark, tmp_path, models, images_table):
    input_uri, frame = images_table
    summary, got, out = run_embed(spark, tmp_path, input_uri, *models["a1"].overrides(), *SMALL_BATCHES)

    success = frame[frame.status == "success"]
    # one row per success row; failure rows are never embedded
    assert len(got) == len(success) and sorted(got.index) == sorted(success.sample_id)
    def types(schema):
        return [(f.name, f.dataType.simpleString()) for f in schema.fields]

    assert types(spark.read.parquet(out).schema) == types(S.EMBEDDINGS)
    # SQL nulls, not NaN (a NaN similarity would pass any threshold in Spark's ordering)
    nulls = spark.read.parquet(out).filter(F.isnan(S.SIMILARITY) | F.col(S.SIMILARITY).isNull()).collect()
    assert [(r.sample_id, r.similarity, r.image_embedding) for r in nulls] == [(CORRUPT_ID, None, None)]

    good = success[success.sample_id != CORRUPT_ID]
    assert_matches_reference(got, good, models["a1"])

    corrupt = got.loc[CORRUPT_ID]
    assert corrupt.image_embedding is None and corrupt.text_embedding is None
    assert pd.isna(corrupt.similarity)
    assert corrupt.error_message.startswith("image_decode_error: ")
    assert corrupt.clip_model == models["a1"].clip_model

    assert summary["rows_in"] == len(frame)
    assert summary["success_rows"] == summary["rows_out"] == len(success)
    assert summary["embedded"] == len(good)
    assert summary["failed"] == 1 and summary["failure_reasons"] == {"image_decode_error": 1}
    assert summary["models"] == {models["a1"].clip_model: {"rows": len(success), "embedded": len(good)}}
    groups = success.language.map(S.language_group).value_counts().to_dict()
    assert {g: v["rows"] for g, v in summary["groups"].items()} == {g: groups.get(g, 0) for g in S.LANGUAGE_GROUPS}
    # the test session schedules no GPU: every task ran on the CPU and said why; each row counted once
    assert summary["devices"] == {"cpu: no GPU in the task's resources": {"tasks": summary["partitions"],
                                                                          "rows": len(success)}}
    with open(f"{out}/_summary.json") as fh:
        assert json.load(fh)["embedded"] == len(good)
    report = format_report(summary)
    assert "image_decode_error" in report and models["a1"].clip_model in report
    assert "device cpu: no GPU in the task's resources" in report


def test_each_group_goes_through_its_own_model(spark, tmp_path, models, images_table):
    input_uri, frame = images_table
    summary, got, _ = run_embed(spark, tmp_path, input_uri, *models["a2"].overrides(),
                                *models["a1"].overrides("embed.models.en"),
                                *models["b"].overrides("embed.models.multi"), *SMALL_BATCHES)
    good = frame[(frame.status == "success") & (frame.sample_id != CORRUPT_ID)]
    group = good.language.map(S.language_group)
    by_group = {"en": models["a1"], "multi": models["b"], "nolang": models["a2"]}
    for name, model in by_group.items():
        rows = good[group == name]
        assert len(rows) >= 3, name  # the fixture has rows of every group
        assert_matches_reference(got, rows, model)
    assert len(got.loc[good.sample_id].image_embedding.map(len).unique()) == 2  # two embedding sizes: 32, 24
    assert {g: v["model"] for g, v in summary["groups"].items()} == {g: m.clip_model for g, m in by_group.items()}
    assert sum(v["rows"] for v in summary["models"].values()) == summary["rows_out"] == len(good) + 1


def test_table_without_language_is_nolang(spark, models, images_table):
    from laion_spark.embed.transform import embed_images

    _, frame = images_table
    rows = frame[frame.status == "success"].head(6)[[S.SAMPLE_ID, S.TEXT, S.STATUS, S.IMAGE]]
    images = spark.createDataFrame(rows)
    cfg = load_config([], [*models["a1"].overrides(), *models["b"].overrides("embed.models.nolang")]).embed
    got = embed_images(images, cfg).toPandas().set_index(S.SAMPLE_ID)
    assert_matches_reference(got, rows, models["b"])
