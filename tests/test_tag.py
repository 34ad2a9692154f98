"""tag: dataset + embeddings -> tags through a real local Spark session. The expected scores are computed
here with torch from the weights the test wrote, and the zero-shot column from prompts encoded by the
Searcher (another path to the same CLIP) with LAION's rule restated; rows without an embedding must come
out with nulls, never a made-up score, and every dataset row exactly once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from laion_spark import cli
from laion_spark import schemas as S
from laion_spark.config import ConfigError
from laion_spark.index.synthetic import clustered_vectors
from tests.test_tag_zero_shot import reference

MODEL = "ViT-T/test"
D = 16


def run_tag(spark, *args) -> dict:
    cfg, module = cli.prepare("tag", [], list(args))
    return cli.run("tag", cfg, module, spark)


@pytest.fixture(scope="module")
def tables(spark, tmp_path_factory):
    """60 dataset rows: 50 with an embedding, 5 whose embedding failed (null), 5 never embedded."""
    root = tmp_path_factory.mktemp("tag_in")
    vectors, _ = clustered_vectors(55, D, clusters=3, seed=2)
    rows = [(i, [float(x) for x in vectors[i]], [float(x) for x in vectors[i]], 0.3, MODEL, None) for i in range(50)]
    rows += [(i, None, None, None, MODEL, "image_decode_error: bad") for i in range(50, 55)]
    spark.createDataFrame(rows, S.EMBEDDINGS).write.parquet(str(root / "emb"))
    spark.createDataFrame([(i, f"http://x.test/{i}.jpg", f"caption {i}") for i in range(60)],
                          "SAMPLE_ID long, URL string, TEXT string").write.parquet(str(root / "release"))
    torch.manual_seed(0)
    mlp = [nn.Linear(D, 8), nn.Linear(8, 1)]
    torch.save({f"layers.{i}.{k}": v for i, layer in enumerate(mlp) for k, v in layer.state_dict().items()},
               root / "nsfw.pth")
    linear = nn.Linear(D, 1)
    torch.save(linear.state_dict(), root / "aesthetic.pth")
    return {"root": root, "vectors": vectors[:50], "mlp": mlp, "linear": linear}


def expected(tables):
    x = torch.from_numpy(tables["vectors"]).float()
    x = x / x.norm(dim=1, keepdim=True)
    with torch.no_grad():
        punsafe = torch.sigmoid(tables["mlp"][1](torch.relu(tables["mlp"][0](x))))[:, 0].numpy()
        aesthetic = tables["linear"](x)[:, 0].numpy()
    return punsafe, aesthetic


def test_heads_score_every_embedded_row_and_leave_the_others_null(spark, tables, tmp_path):
    root = tables["root"]
    summary = run_tag(spark, f"input={root / 'release'}", f"embeddings={root / 'emb'}", f"output={tmp_path / 'tags'}",
                      "tag.punsafe.architecture=mlp", f"tag.punsafe.checkpoint={root / 'nsfw.pth'}",
                      "tag.punsafe.sigmoid=true", "tag.aesthetic_score.architecture=linear",
                      f"tag.aesthetic_score.checkpoint={root / 'aesthetic.pth'}", "tag.nsfw_zero_shot.enabled=false")
    got = {r["sample_id"]: r for r in spark.read.parquet(str(tmp_path / "tags")).collect()}
    assert sorted(got) == list(range(60))  # one row per dataset row
    punsafe, aesthetic = expected(tables)
    for i in range(50):
        assert got[i]["punsafe"] == pytest.approx(float(punsafe[i]), abs=1e-5)
        assert got[i]["aesthetic_score"] == pytest.approx(float(aesthetic[i]), abs=1e-5)
        assert got[i]["pwatermark"] is None and got[i]["nsfw_zero_shot"] is None  # not configured: null
        assert set(got[i]["taggers"]) == {"punsafe", "aesthetic_score"}
        assert got[i]["taggers"]["punsafe"].startswith("mlp/")
    for i in range(50, 60):  # embedding failed, or none: nothing is made up
        assert (got[i]["punsafe"], got[i]["aesthetic_score"], got[i]["taggers"]) == (None, None, {})
    assert summary["rows_in"] == summary["tagged"] == 60 and summary["without_embedding"] == 10
    assert summary["scored"] == {"punsafe": 50, "pwatermark": 0, "aesthetic_score": 50, "nsfw_zero_shot": 0}
    assert summary["not_configured"] == ["pwatermark"]


def test_a_head_that_does_not_fit_the_embeddings_is_a_clear_error(spark, tables, tmp_path):
    root = tables["root"]
    common = [f"input={root / 'release'}", f"embeddings={root / 'emb'}", "tag.nsfw_zero_shot.enabled=false",
              "tag.punsafe.architecture=mlp", f"tag.punsafe.checkpoint={root / 'nsfw.pth'}"]
    big = nn.Linear(2 * D, 1)
    torch.save(big.state_dict(), tmp_path / "big.pth")
    with pytest.raises(ConfigError, match=f"takes {2 * D}-dimensional embeddings, but 50 dataset rows of {MODEL}"):
        run_tag(spark, *common, f"output={tmp_path / 'a'}", "tag.aesthetic_score.architecture=linear",
                f"tag.aesthetic_score.checkpoint={tmp_path / 'big.pth'}")
    with pytest.raises(ConfigError, match="expects embeddings of ViT-B-32/openai"):
        run_tag(spark, *common, f"output={tmp_path / 'b'}", "tag.punsafe.clip_model=ViT-B-32/openai")
    with pytest.raises(ConfigError, match="tag.punsafe: .*h14_nsfw has linear layers"):
        run_tag(spark, *common[:3], f"output={tmp_path / 'c'}", "tag.punsafe.architecture=h14_nsfw",
                f"tag.punsafe.checkpoint={root / 'nsfw.pth'}")
    with pytest.raises(ConfigError, match="needs the CLIP model of ViT-T/test"):  # zero-shot is on by default
        run_tag(spark, f"input={root / 'release'}", f"embeddings={root / 'emb'}", f"output={tmp_path / 'd'}")
    assert not any((tmp_path / x).exists() for x in "abcd")  # refused before anything was written


@pytest.mark.slow
def test_zero_shot_with_the_toy_clip_follows_laions_rule(spark, toy_index, tmp_path):
    from laion_spark.search.searcher import Searcher
    from laion_spark.tag.zero_shot import preset

    summary = run_tag(spark, f"input={toy_index['images']}", f"embeddings={toy_index['embeddings']}",
                      f"output={tmp_path / 'tags'}", "tag.nsfw_zero_shot.prompts=laion400m_fixed")
    got = {r["sample_id"]: r for r in spark.read.parquet(str(tmp_path / "tags")).collect()}
    emb = {r["sample_id"]: r for r in spark.read.parquet(toy_index["embeddings"]).collect()}
    prompts, boundary = preset("laion400m_fixed")
    searcher = Searcher(toy_index["index"], cache_dir=toy_index["cache"])
    text = np.stack([searcher.embed_text(p) for p in prompts])
    ids = sorted(i for i in emb if emb[i]["image_embedding"] is not None)
    want = reference(np.array([emb[i]["image_embedding"] for i in ids]), text, boundary)
    assert [got[i]["nsfw_zero_shot"] for i in ids] == want
    assert len(got) == summary["rows_in"] and summary["scored"]["nsfw_zero_shot"] == len(ids)
    assert got[ids[0]]["taggers"]["nsfw_zero_shot"] == f"clip_zero_shot_laion400m_fixed/{emb[ids[0]]['clip_model']}"
    assert got[ids[0]]["punsafe"] is None  # no head configured: null


def test_hostile_rows_get_nulls_and_duplicate_dataset_rows_stay_rows(spark, tables, tmp_path):
    root = tables["root"]
    good = [float(x) for x in tables["vectors"][0]]
    rows = [(1, good, good, 0.3, MODEL, None),
            (2, [float("nan")] + good[1:], good, 0.3, MODEL, None),  # not finite
            (3, [0.0] * D, good, 0.0, MODEL, None),  # a zero vector: no direction to score
            (4, [float("inf")] * D, good, 0.1, MODEL, None),
            (5, good, good, 0.3, None, None)]  # no clip_model: still scored by its size
    spark.createDataFrame(rows, S.EMBEDDINGS).write.parquet(str(tmp_path / "emb"))
    # the dataset holds sample_id 1 twice (a union of two tables): tag keeps one row per dataset row
    spark.createDataFrame([(i,) for i in (1, 1, 2, 3, 4, 5, 6)], "sample_id long").write.parquet(str(tmp_path / "ds"))
    summary = run_tag(spark, f"input={tmp_path / 'ds'}", f"embeddings={tmp_path / 'emb'}", f"output={tmp_path / 't'}",
                      "tag.aesthetic_score.architecture=linear", "tag.nsfw_zero_shot.enabled=false",
                      f"tag.aesthetic_score.checkpoint={root / 'aesthetic.pth'}")
    got = sorted((r["sample_id"], r["aesthetic_score"]) for r in spark.read.parquet(str(tmp_path / "t")).collect())
    with torch.no_grad():
        x = torch.tensor([good])
        want = float(tables["linear"](x / x.norm(dim=1, keepdim=True))[0, 0])
    assert [i for i, _ in got] == [1, 1, 2, 3, 4, 5, 6] and summary["tagged"] == 7
    scored = {i: s for i, s in got}
    assert scored[1] == pytest.approx(want, abs=1e-5) and scored[5] == pytest.approx(want, abs=1e-5)
    assert all(scored[i] is None for i in (2, 3, 4, 6))


@pytest.mark.slow
def test_pwatermark_classifies_the_stored_images(spark, toy_index, tables, tmp_path):
    import io

    import timm
    from PIL import Image
    from torchvision import transforms

    torch.manual_seed(5)
    detector = timm.create_model("resnet10t", pretrained=False, num_classes=2).eval()
    torch.save(detector.state_dict(), tmp_path / "wm.pt")
    common = ["tag.nsfw_zero_shot.enabled=false", "tag.pwatermark.architecture=resnet10t",
              f"tag.pwatermark.checkpoint={tmp_path / 'wm.pt'}", "tag.pwatermark.image_size=64"]
    summary = run_tag(spark, f"input={toy_index['images']}", f"embeddings={toy_index['embeddings']}",
                      f"output={tmp_path / 'tags'}", *common)
    got = {r["sample_id"]: r for r in spark.read.parquet(str(tmp_path / "tags")).collect()}
    ids = sorted(toy_index["png"])
    pre = transforms.Compose([transforms.Resize((64, 64)), transforms.ToTensor(),
                              transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    with torch.no_grad():
        batch = torch.stack([pre(Image.open(io.BytesIO(toy_index["png"][i])).convert("RGB")) for i in ids])
        want = detector(batch).softmax(1)[:, 0].numpy()  # LAION's rule: index 0 is "watermark"
    np.testing.assert_allclose([got[i]["pwatermark"] for i in ids], want, atol=1e-5)
    assert summary["scored"]["pwatermark"] == len(ids) and got[ids[0]]["taggers"]["pwatermark"].startswith("resnet10t/")
    # a table without the image bytes cannot be classified: a clear error, nothing written
    root = tables["root"]
    with pytest.raises(ConfigError, match="has no image column"):
        run_tag(spark, f"input={root / 'release'}", f"embeddings={root / 'emb'}", f"output={tmp_path / 'x'}", *common)
    assert not (tmp_path / "x").exists()
