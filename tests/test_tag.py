"""tag: dataset + embeddings -> tags through a real local Spark session. The expected scores are computed
here with torch from the weights the test wrote, and the zero-shot column from prompts encoded by the
Searcher (another path to the same CLIP) with LAION's rule restated; rows without an embedding must come
out with nulls, never a made-up score, and every dataset row exactly once. The physical plan of what tag
writes is read from Spark to see that the image bytes are never shuffled, and the watermark detector is
checked to be given the dataset's rows only."""

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


@pytest.fixture(scope="module")
def stored(tables, tmp_path_factory):
    """Download's images for ids 0..11 (all embedded in `tables`; 11 is a failed download: no bytes), and
    filter's dataset: 5 of them, 3's bytes cut short (the detector is given it and cannot decode it); a
    small timm detector with random weights."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    import timm
    from PIL import Image

    root = tmp_path_factory.mktemp("tag_images")
    rng = np.random.default_rng(6)
    png = {}
    for i in range(11):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)).save(buf, "PNG")
        png[i] = buf.getvalue()
    png[11] = None
    kept = [1, 3, 4, 8, 10]
    table = pa.table({"sample_id": pa.array(list(png), pa.int64()), "image": pa.array(list(png.values()), pa.binary())})
    (root / "images").mkdir()
    pq.write_table(table, root / "images" / "part-0.parquet")
    (root / "dataset").mkdir()
    dataset = {i: png[i][:60] if i == 3 else png[i] for i in kept}
    pq.write_table(pa.table({"sample_id": pa.array(kept, pa.int64()), "image": pa.array(list(dataset.values()),
                                                                                      pa.binary())}),
                   root / "dataset" / "part-0.parquet")
    # a union of two dataset tables: sample_id 1 twice, its second copy's bytes cut short
    (root / "twice").mkdir()
    twice = {"sample_id": pa.array([1, 4, 1], pa.int64()), "image": pa.array([png[1], png[4], png[1][:60]])}
    pq.write_table(pa.table(twice), root / "twice" / "part-0.parquet")
    torch.manual_seed(7)
    detector = timm.create_model("resnet10t", pretrained=False, num_classes=2).eval()
    torch.save(detector.state_dict(), root / "wm.pt")
    watermark = ["tag.nsfw_zero_shot.enabled=false", "tag.pwatermark.architecture=resnet10t",
                 f"tag.pwatermark.checkpoint={root / 'wm.pt'}", "tag.pwatermark.image_size=32",
                 "tag.pwatermark.batch_size=2", "tag.aesthetic_score.architecture=linear",
                 f"tag.aesthetic_score.checkpoint={tables['root'] / 'aesthetic.pth'}"]
    return {"root": root, "png": png, "kept": kept, "detector": detector, "watermark": watermark}


def detector_scores(detector, images: dict) -> dict:
    import io

    from PIL import Image
    from torchvision import transforms

    pre = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor(),
                              transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    with torch.no_grad():
        return {i: float(detector(pre(Image.open(io.BytesIO(b)).convert("RGB"))[None]).softmax(1)[0, 0])
                for i, b in images.items()}


def plan_nodes(df):
    """The physical plan Spark runs for df, node by node (inside adaptive execution's current plan)."""
    def walk(node):
        if node.nodeName().startswith("AdaptiveSparkPlan"):
            yield from walk(node.executedPlan())
            return
        yield node
        children = node.children()
        for i in range(children.size()):
            yield from walk(children.apply(i))

    return list(walk(df._jdf.queryExecution().executedPlan()))


def output_names(node) -> set[str]:
    out = node.output()
    return {out.apply(i).name() for i in range(out.size())}


def test_the_image_bytes_are_never_shuffled(spark, tables, stored, tmp_path):
    # as at scale: no table small enough to broadcast, and tasks of rows_per_task rows (3 here, not the
    # session's 4 shuffle partitions). tag used to exchange the bytes twice: in the join with the
    # embeddings and again in the repartition into tasks. Now the detector runs where the bytes are read
    # and only (sample_id, pwatermark) moves: no Exchange has the image column below it.
    from laion_spark.session import session_confs
    from laion_spark.tag import job

    root, emb = stored["root"], tables["root"] / "emb"
    cfg, _ = cli.prepare("tag", [], [f"input={root / 'images'}", f"embeddings={emb}", f"output={tmp_path / 't'}",
                                     "tag.rows_per_task=5", *stored["watermark"]])
    with session_confs(spark, {"spark.sql.autoBroadcastJoinThreshold": "-1"}):
        tagging = job.tag_table(spark, cfg, dataset=str(root / "dataset"))
        nodes = plan_nodes(tagging.tags)
    exchanges = [n for n in nodes if "Exchange" in n.nodeName()]
    over_bytes = [n for n in exchanges if S.IMAGE in output_names(n.children().apply(0))]
    reads_bytes = [n for n in nodes if "Scan" in n.nodeName() and S.IMAGE in output_names(n)]
    assert reads_bytes and over_bytes == [], [n.toString() for n in over_bytes]
    # one exchange per side (sample_ids, the detector's scores, the embeddings), each into rows_per_task's
    # 3 tasks, and none of the joins' own
    assert len(exchanges) == 3 and {n.outputPartitioning().numPartitions() for n in exchanges} == {3}


def test_the_detector_is_given_the_dataset_rows_only(spark, tables, stored, tmp_path):
    # the heads score every images row (the report reads punsafe of rejected rows); the CNN, the expensive
    # part, only the dataset's: a row outside it gets a null pwatermark and no pwatermark tagger, and the
    # detector is given exactly the dataset's rows with bytes (an observed count, not a count of scores:
    # the cut-short image is given and scores null)
    from laion_spark.tag import job

    root, emb, kept = stored["root"], tables["root"] / "emb", stored["kept"]
    cfg, _ = cli.prepare("tag", [], [f"input={root / 'images'}", f"embeddings={emb}", f"output={tmp_path / 't'}",
                                     *stored["watermark"]])
    tagging = job.tag_table(spark, cfg, dataset=str(root / "dataset"))
    got = {r["sample_id"]: r for r in tagging.tags.collect()}
    assert tagging.watermark_images() == len(kept)
    assert sorted(got) == list(range(12)) and tagging.rows_in == 12
    want = detector_scores(stored["detector"], {i: stored["png"][i] for i in kept if i != 3})
    _, aesthetic = expected(tables)
    for i, row in got.items():
        assert row["aesthetic_score"] == pytest.approx(float(aesthetic[i]), abs=1e-5)  # every row
        if i in want:
            assert row["pwatermark"] == pytest.approx(want[i], abs=1e-5)
            assert row["taggers"]["pwatermark"].startswith("resnet10t/")
        else:  # outside the dataset, or its bytes do not decode
            assert row["pwatermark"] is None and "pwatermark" not in row["taggers"], i


def test_without_tag_dataset_the_input_is_the_dataset(spark, tables, stored, tmp_path):
    # through the CLI: every input row with bytes is a dataset row, given to the detector once; the
    # summary says how many, and its accounting holds (rows in = tagged)
    root = stored["root"]
    summary = run_tag(spark, f"input={root / 'dataset'}", f"embeddings={tables['root'] / 'emb'}",
                      f"output={tmp_path / 't'}", *stored["watermark"])
    got = {r["sample_id"]: r["pwatermark"] for r in spark.read.parquet(str(tmp_path / "t")).collect()}
    want = detector_scores(stored["detector"], {i: stored["png"][i] for i in stored["kept"] if i != 3})
    assert sorted(got) == stored["kept"] and got[3] is None
    assert {i: got[i] for i in want} == pytest.approx(want, abs=1e-5)
    assert summary["rows_in"] == summary["tagged"] == 5 and summary["watermark_images"] == 5
    assert summary["scored"]["pwatermark"] == 4 and summary["scored"]["aesthetic_score"] == 5


def test_a_dataset_row_held_twice_is_scored_once_per_input_row(spark, tables, stored, tmp_path):
    # the union's two copies of 1 meet the one input row once: one tags row, the score of the copy that
    # decodes (a NaN would win Spark's max over the number, so an undecodable copy must be a null)
    from laion_spark.tag import job

    root = stored["root"]
    cfg, _ = cli.prepare("tag", [], [f"input={root / 'images'}", f"embeddings={tables['root'] / 'emb'}",
                                     f"output={tmp_path / 't'}", *stored["watermark"]])
    tagging = job.tag_table(spark, cfg, dataset=str(root / "twice"))
    got = {}
    for r in tagging.tags.collect():
        got.setdefault(r["sample_id"], []).append(r["pwatermark"])
    want = detector_scores(stored["detector"], {i: stored["png"][i] for i in (1, 4)})
    assert sorted(got) == list(range(12)) and all(len(v) == 1 for v in got.values())
    assert {i: got[i][0] for i in (1, 4)} == pytest.approx(want, abs=1e-5)
    assert tagging.watermark_images() == 3 and all(got[i] == [None] for i in got if i not in (1, 4))
