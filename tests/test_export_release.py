"""export, format=release: dataset + tags + embeddings -> laion/, subsets/, webdataset/, emb/, README.md and
<output>_removed, with blocklists. The images are real downloads from a loopback server (non-square, one
with an EXIF rotation, one above 1024 px on both sides); what each output must hold is worked out here
from the served bytes, the tags and embeddings the test wrote, the lists' own digests (hashlib) and
LAION's published column list, not by the code under test."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
from pathlib import Path

import mmh3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image, ImageOps

from laion_spark import cli
from laion_spark import schemas as S
from laion_spark.config import ConfigError
from tests.http_faults import FaultServer
from tests.images import encode, textured, with_orientation

REPO = Path(__file__).resolve().parents[1]
MODEL = "ViT-T/test"
D = 8
N = 16
LICENSE = "https://creativecommons.org/licenses/by/4.0/"
LANGUAGES = ("en", "de", "nolang", "en")

# LAION-5B's release columns and types, as the issue and LAION's derived cards give them
LAION5B = [("SAMPLE_ID", pa.int64()), ("URL", pa.string()), ("TEXT", pa.string()), ("WIDTH", pa.int32()),
           ("HEIGHT", pa.int32()), ("similarity", pa.float64()), ("LANGUAGE", pa.string()), ("punsafe", pa.float32()),
           ("pwatermark", pa.float32()), ("AESTHETIC_SCORE", pa.float32()), ("LICENSE", pa.string()),
           ("hash", pa.int64())]
# LAION-400M's (cah_stats_spark.py)
LAION400M = [("SAMPLE_ID", pa.int64()), ("URL", pa.string()), ("TEXT", pa.string()), ("HEIGHT", pa.int32()),
             ("WIDTH", pa.int32()), ("LICENSE", pa.string()), ("NSFW", pa.string()), ("similarity", pa.float64())]
# img2dataset's names that --save_additional_columns refuses (its main.py)
IMG2DATASET_RESERVED = {"key", "caption", "url", "width", "height", "original_width", "original_height", "status",
                        "error_message", "exif", "md5", "sha256", "sha512"}


def body(i: int) -> bytes:
    if i == 0:  # both sides >= 1024: the high_resolution subset
        return encode(textured((1100, 1040), seed=i), "JPEG", quality=80)
    if i == 1:  # stored 300 x 180, shown upright as 180 x 300
        return with_orientation(textured((300, 180), seed=i), 6)
    size = (120 + 17 * i, 100 + 29 * (i % 5))
    return encode(textured(size, seed=i), "PNG" if i % 3 == 0 else "JPEG", **({} if i % 3 == 0 else {"quality": 85}))


def upright(data: bytes) -> tuple[int, int]:
    return ImageOps.exif_transpose(Image.open(io.BytesIO(data))).size


def run_stage(spark, stage, *args, configs=()):
    cfg, module = cli.prepare(stage, list(configs), list(args))
    return cli.run(stage, cfg, module, spark)


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    """Served images -> download -> a dataset (+ similarity) with tags and embeddings, and four blocklists."""
    root = tmp_path_factory.mktemp("release")
    # the server stays up for the module: img2dataset downloads the release's URLs again
    with FaultServer("127.0.0.1") as server:
        yield _world(spark, root, server)


def _world(spark, root, server) -> dict:
    bodies, urls = {}, {}
    for i in range(N):
        bodies[i] = body(i)
        urls[i] = server.add_file(f"/img{i}.jpg", bodies[i], "image/png" if i % 3 == 0 and i else "image/jpeg")
    pairs = pd.DataFrame({
        S.SAMPLE_ID: [1000 + 7 * i for i in range(N)], S.URL: [urls[i] for i in range(N)],
        S.TEXT: [f"picture {i} – ünïcode" if i % 2 else f"picture {i}" for i in range(N)],
        S.LANGUAGE: [LANGUAGES[i % 4] for i in range(N)],
        S.LICENSE: [LICENSE if i % 4 == 1 else None for i in range(N)]})
    spark.createDataFrame(pairs).repartition(2).write.parquet(str(root / "pairs"))
    run_stage(spark, "download", f"input={root / 'pairs'}", f"output={root / 'images'}",
              "download.allowed_networks=127.0.0.1/32", "download.retries=0", "download.threads=8")
    images = spark.read.parquet(str(root / "images")).toPandas()
    assert (images.status == S.SUCCESS).all(), images[["url", "status", "error_message"]]
    rng = np.random.default_rng(7)
    by_url = {urls[i]: i for i in range(N)}
    images["i"] = images.url.map(by_url)
    images = images.sort_values("i").reset_index(drop=True)
    images[S.SIMILARITY] = rng.uniform(0.2, 0.4, N).astype(np.float32)
    images[S.CLIP_MODEL] = MODEL
    dataset_schema = pa.Schema.from_pandas(images.drop(columns=["i"]), preserve_index=False)
    pq.write_table(pa.Table.from_pandas(images.drop(columns=["i"]), schema=dataset_schema, preserve_index=False),
                   root / "dataset.parquet", coerce_timestamps="us")

    ids = images.sample_id.tolist()
    tags = pd.DataFrame({
        S.SAMPLE_ID: ids, "punsafe": rng.uniform(0, 1, N).astype(np.float32),
        "pwatermark": rng.uniform(0, 1, N).astype(np.float32),
        "aesthetic_score": rng.uniform(4, 8, N).astype(np.float32),
        "nsfw_zero_shot": [("UNLIKELY", "UNSURE", "NSFW")[i % 3] for i in range(N)]})
    tags.loc[6, "punsafe"] = np.nan  # a head that could not score this row
    tags["aesthetic_score"] = tags["aesthetic_score"].where(tags.index != 7, 6.5)  # one surely in aesthetic ...
    tags.loc[7, ["punsafe", "pwatermark"]] = [0.1, 0.2]
    tags = tags[tags.index != 15]  # ... and one row the tag stage never saw
    taggers = {"punsafe": "mlp/abc123", "aesthetic_score": "linear/f00"}
    tags_rows = [(int(r.sample_id), None if np.isnan(r.punsafe) else float(r.punsafe), float(r.pwatermark),
                  float(r.aesthetic_score), r.nsfw_zero_shot, taggers) for r in tags.itertuples()]
    spark.createDataFrame(tags_rows, S.TAGS).write.parquet(str(root / "tags"))

    vectors = rng.normal(size=(N, 2, D)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=2, keepdims=True)
    emb_rows = [(int(ids[i]), vectors[i, 0].tolist(), vectors[i, 1].tolist(), 0.3, MODEL, None)
                for i in range(N) if i != 14]  # row 14 has no embedding
    spark.createDataFrame(emb_rows, S.EMBEDDINGS).write.parquet(str(root / "embeddings"))

    lists = root / "lists"
    lists.mkdir()
    written_as = urls[1].replace("http://", "HTTP://") + "#section"  # matches once normalised
    (lists / "takedown.txt").write_text(f"# takedown requests\n\n{written_as}\n{urls[5]}\n")
    (lists / "iwf.txt").write_text(f"# image MD5s\n{hashlib.md5(bodies[2]).hexdigest().upper()} # reported\n"
                                   f"{hashlib.md5(bodies[5]).hexdigest()}\n{'0' * 32}\n")
    (lists / "c3p.txt").write_text(hashlib.sha1(bodies[3]).hexdigest() + "\n")
    (lists / "hashed_urls.txt").write_text(hashlib.sha256(urls[4].encode()).hexdigest() + "\n")
    blocked = {1: "blocklisted:takedown", 2: "blocklisted:iwf", 3: "blocklisted:c3p", 4: "blocklisted:hashed_urls",
               5: "blocklisted:takedown"}  # 5 is on two lists: the first in config order (url lists first) names it
    return dict(root=root, images=images, tags=tags, vectors=vectors, bodies=bodies, urls=urls, ids=ids,
                lists=lists, blocked=blocked)


def list_args(world) -> list[str]:
    lists = world["lists"]
    return [f"export.blocklist.url={lists / 'takedown.txt'}", f"export.blocklist.image_md5={lists / 'iwf.txt'}",
            f"export.blocklist.image_sha1={lists / 'c3p.txt'}",
            f"export.blocklist.url_sha256={lists / 'hashed_urls.txt'}"]


@pytest.fixture(scope="module")
def exported(spark, world):
    root = world["root"]
    out = root / "export"
    summary = run_stage(spark, "export", f"input={root / 'dataset.parquet'}", f"tags={root / 'tags'}",
                        f"embeddings={root / 'embeddings'}", f"output={out}",
                        # 11 released rows in 4 shards: as many as the session's shuffle partitions, where
                        # Spark once dropped the shard repartition and put every row in shard 0
                        "export.samples_per_shard=3",
                        "export.npy_dtype=float32", *list_args(world))
    return out, summary


def release_of(out: Path) -> pa.Table:
    return pq.read_table(out / "laion")


def test_release_has_laions_columns_types_and_values(world, exported):
    out, summary = exported
    table = release_of(out)
    assert [(f.name, f.type) for f in table.schema] == LAION5B
    rows = {r["SAMPLE_ID"]: r for r in table.to_pylist()}
    kept = [i for i in range(N) if i not in world["blocked"]]
    assert sorted(rows) == sorted(world["ids"][i] for i in kept)
    tags = world["tags"].set_index(S.SAMPLE_ID)
    images = world["images"].set_index(S.SAMPLE_ID)
    for i in kept:
        sid = world["ids"][i]
        r, img = rows[sid], images.loc[sid]
        assert r["URL"] == world["urls"][i] and r["TEXT"] == img.text
        # the original image's size, upright, as a decoder shows it; never LAION's swapped pair
        assert (r["WIDTH"], r["HEIGHT"]) == upright(world["bodies"][i])
        assert r["hash"] == mmh3.hash64((r["URL"] + r["TEXT"]).encode("utf-8"))[0]
        assert r["LANGUAGE"] == LANGUAGES[i % 4]
        assert r["LICENSE"] == (LICENSE if i % 4 == 1 else None)
        assert r["similarity"] == pytest.approx(float(img.similarity), abs=1e-7)
        if sid in tags.index:
            t = tags.loc[sid]
            assert r["punsafe"] == (None if np.isnan(t.punsafe) else pytest.approx(float(t.punsafe), abs=1e-7))
            assert r["pwatermark"] == pytest.approx(float(t.pwatermark), abs=1e-7)
            assert r["AESTHETIC_SCORE"] == pytest.approx(float(t.aesthetic_score), abs=1e-7)
        else:  # untagged: null scores, never made up
            assert r["punsafe"] is None and r["pwatermark"] is None and r["AESTHETIC_SCORE"] is None
    assert rows[world["ids"][0]]["WIDTH"] == 1100 and (rows[world["ids"][0]]["HEIGHT"]) == 1040
    assert summary["untagged"] == 1


def test_blocklisted_rows_are_in_no_output_and_every_row_is_accounted_for(world, exported):
    out, summary = exported
    removed = pq.read_table(str(out) + "_removed").to_pandas()
    assert dict(zip(removed.sample_id, removed.reason)) == {world["ids"][i]: r for i, r in world["blocked"].items()}
    assert S.IMAGE not in removed.columns  # a blocklisted image is kept nowhere
    released = release_of(out).num_rows
    assert released + len(removed) == N == summary["rows_in"]
    assert summary["reasons"] == {"blocklisted:takedown": 2, "blocklisted:iwf": 1, "blocklisted:c3p": 1,
                                  "blocklisted:hashed_urls": 1}
    banned_ids = {world["ids"][i] for i in world["blocked"]}
    banned_urls = {world["urls"][i] for i in world["blocked"]}
    for name in summary["subsets"]:
        assert not banned_ids & set(pq.read_table(out / "subsets" / name).column("SAMPLE_ID").to_pylist())
    for sample in wds.WebDataset(sorted(str(p) for p in (out / "webdataset").glob("*.tar")), shardshuffle=False,
                                 empty_check=False):
        assert json.loads(sample["json"])["url"] not in banned_urls
    for meta in (out / "emb").glob("*/metadata/*.parquet"):
        assert not banned_ids & set(pq.read_table(meta).column("sample_id").to_pylist())
    assert (out / "_summary.json").is_file()


def test_subsets_are_the_release_rows_their_conditions_hold_for(exported):
    out, summary = exported
    rows = release_of(out).to_pylist()

    def num(x):
        return float("nan") if x is None else x

    # the conditions restated in Python (None compares false, as SQL's null does)
    want = {
        "en": [r for r in rows if r["LANGUAGE"] == "en"],
        "multi": [r for r in rows if r["LANGUAGE"] not in (None, "en", "nolang", "")],
        "nolang": [r for r in rows if r["LANGUAGE"] in (None, "nolang", "")],
        "high_resolution": [r for r in rows if (r["WIDTH"] or 0) >= 1024 and (r["HEIGHT"] or 0) >= 1024],
        "aesthetic": [r for r in rows if num(r["AESTHETIC_SCORE"]) >= 6 and num(r["punsafe"]) < 0.5
                      and num(r["pwatermark"]) < 0.8],
        "research_safe": [r for r in rows if r["punsafe"] is not None and r["punsafe"] <= 0.45],
    }
    assert sorted(summary["subsets"]) == sorted(want)
    for name, expected in want.items():
        got = pq.read_table(out / "subsets" / name)
        assert [(f.name, f.type) for f in got.schema] == LAION5B
        assert sorted(r["SAMPLE_ID"] for r in got.to_pylist()) == sorted(r["SAMPLE_ID"] for r in expected), name
        assert summary["subsets"][name]["rows"] == len(expected)
    assert want["high_resolution"] and want["aesthetic"] and want["research_safe"] and want["multi"]


def test_webdataset_shards_read_back_as_the_release(world, exported):
    out, summary = exported
    release = {r["SAMPLE_ID"]: r for r in release_of(out).to_pylist()}
    images = world["images"].set_index(S.SAMPLE_ID)
    samples = list(wds.WebDataset(sorted(str(p) for p in (out / "webdataset").glob("*.tar")), shardshuffle=False,
                                  empty_check=False))
    assert len(samples) == len(release) == summary["webdataset"]["successes"]
    per_shard = [len(pq.read_table(p)) for p in sorted((out / "webdataset").glob("*.parquet"))]
    assert len(per_shard) == summary["webdataset"]["shards"] == 4 and max(per_shard) < len(release)
    parquet_keys = {}
    for p in (out / "webdataset").glob("*.parquet"):
        for r in pq.read_table(p).to_pylist():
            parquet_keys[r["key"]] = r
    seen = set()
    for s in samples:
        meta = json.loads(s["json"])
        sid = meta["sample_id"]
        r = release[sid]
        assert s["__key__"] == meta["key"] and parquet_keys[meta["key"]]["sample_id"] == sid
        assert s["txt"].decode() == r["TEXT"] == meta["caption"] and meta["url"] == r["URL"]
        image_key = next(k for k in ("jpg", "png", "webp") if k in s)
        assert s[image_key] == images.loc[sid].image
        assert meta["hash"] == r["hash"]
        assert meta["punsafe"] == (None if r["punsafe"] is None else pytest.approx(r["punsafe"], abs=1e-6))
        seen.add(sid)
    assert seen == set(release)


def test_npy_shards_hold_the_released_embedded_rows(world, exported):
    out, summary = exported
    release = set(release_of(out).column("SAMPLE_ID").to_pylist())
    folder = out / "emb" / "ViT-T_test"
    metas = sorted(folder.glob("metadata/metadata_*.parquet"))
    assert metas
    index = {sid: i for i, sid in enumerate(world["ids"])}
    got = set()
    for meta in metas:
        shard = meta.stem.split("_")[-1]
        ids = pq.read_table(meta).column("sample_id").to_pylist()
        img = np.load(folder / "img_emb" / f"img_emb_{shard}.npy")
        txt = np.load(folder / "text_emb" / f"text_emb_{shard}.npy")
        for row, sid in enumerate(ids):
            np.testing.assert_allclose(img[row], world["vectors"][index[sid], 0], atol=1e-6)
            np.testing.assert_allclose(txt[row], world["vectors"][index[sid], 1], atol=1e-6)
        got |= set(ids)
    assert got == release - {world["ids"][14]}  # row 14 was never embedded
    assert summary["emb"]["released_without_embedding"] == 1


def test_the_dataset_card_gives_the_counts(exported):
    out, summary = exported
    card = (out / "README.md").read_text()
    assert f"| release (`laion/`) | {summary['released']} |" in card
    assert "| `blocklisted:takedown` | 2 |" in card
    for name, s in summary["subsets"].items():
        assert f"| subset `{name}` (`subsets/{name}/`) | {s['rows']} |" in card
    assert "mlp/abc123" in card and "- Spark 4." in card and f"- CLIP: `{MODEL}`" in card


# img2dataset itself, in a venv of its own (make test builds it: `make img2dataset`), or IMG2DATASET=<its binary>
IMG2DATASET = os.environ.get("IMG2DATASET") or str(REPO / "build" / "img2dataset-venv" / "bin" / "img2dataset")
ADDITIONAL = ["SAMPLE_ID", "similarity", "hash", "punsafe", "pwatermark", "LICENSE"]


def test_img2dataset_downloads_the_release(world, exported, tmp_path):
    # LAION's recipe for its own parquet, run on ours: every released URL downloaded again from the
    # server, its caption TEXT, the additional columns copied into each sample's json unchanged
    if not os.access(IMG2DATASET, os.X_OK):
        pytest.skip(f"img2dataset not found at {IMG2DATASET}: `make img2dataset` (part of `make test`) installs it")
    out, _ = exported
    assert not set(ADDITIONAL) & IMG2DATASET_RESERVED
    target = tmp_path / "i2d"
    done = subprocess.run(
        [IMG2DATASET, "--url_list", str(out / "laion"), "--input_format", "parquet", "--url_col", "URL",
         "--caption_col", "TEXT", "--save_additional_columns", json.dumps(ADDITIONAL), "--output_format",
         "webdataset", "--output_folder", str(target), "--processes_count", "1", "--thread_count", "4",
         "--resize_mode", "no", "--skip_reencode", "True", "--enable_wandb", "False",
         "--disallowed_header_directives", "[]"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    release = {r["SAMPLE_ID"]: r for r in release_of(out).to_pylist()}
    by_url = {u: i for i, u in world["urls"].items()}
    samples = list(wds.WebDataset(sorted(str(p) for p in target.glob("*.tar")), shardshuffle=False,
                                  empty_check=False))
    assert len(samples) == len(release)
    seen = set()
    for s in samples:
        meta = json.loads(s["json"])
        r = release[meta["SAMPLE_ID"]]
        assert meta["status"] == "success" and meta["url"] == r["URL"]
        assert meta["caption"] == r["TEXT"] == s["txt"].decode()
        assert meta["hash"] == r["hash"] and meta["LICENSE"] == r["LICENSE"]
        assert meta["similarity"] == pytest.approx(r["similarity"], abs=1e-9)
        for column in ("punsafe", "pwatermark"):
            assert meta[column] == (None if r[column] is None else pytest.approx(r[column], abs=1e-6)), column
        # the bytes it fetched are the served image (img2dataset's sha256 of what it downloaded)
        assert meta["sha256"] == hashlib.sha256(world["bodies"][by_url[r["URL"]]]).hexdigest()
        seen.add(meta["SAMPLE_ID"])
    assert seen == set(release)


def test_laion400m_columns_and_where(spark, world, tmp_path):
    root = world["root"]
    out = tmp_path / "export400m"
    summary = run_stage(spark, "export", f"input={root / 'dataset.parquet'}", f"tags={root / 'tags'}",
                        f"output={out}", "export.outputs=laion", "export.where=language = 'en'",
                        configs=[str(REPO / "conf" / "laion400m.yaml")])
    table = pq.read_table(out / "laion")
    assert [(f.name, f.type) for f in table.schema] == LAION400M
    tags = world["tags"].set_index(S.SAMPLE_ID)
    english = {world["ids"][i] for i in range(N) if LANGUAGES[i % 4] == "en"}
    rows = {r["SAMPLE_ID"]: r for r in table.to_pylist()}
    assert set(rows) == english
    for sid, r in rows.items():
        assert r["NSFW"] == (tags.loc[sid].nsfw_zero_shot if sid in tags.index else None)
    assert summary["reasons"] == {"excluded:language = 'en'": N - len(english)}
    assert not (out / "webdataset").exists() and not (out / "emb").exists()
    assert sorted(p.name for p in (out / "subsets").iterdir()) == ["high_resolution"]


def test_a_bad_list_line_or_expression_is_a_clear_error_and_nothing_is_written(spark, world, tmp_path):
    root = world["root"]
    bad = tmp_path / "bad_md5.txt"
    bad.write_text("# ok\n" + "a" * 32 + "\nnot-a-digest\n")
    out = tmp_path / "x"
    base = [f"input={root / 'dataset.parquet'}", f"tags={root / 'tags'}", f"output={out}"]
    with pytest.raises(ConfigError, match=r"bad_md5.txt:3: not a hex md5"):
        run_stage(spark, "export", *base, f"export.blocklist.image_md5={bad}")
    assert not (out / "laion").exists() and not Path(str(out) + "_removed").exists()
    urls = tmp_path / "urls.txt"
    urls.write_text("https://ok.example/a.jpg\nftp://not.http/x\n")
    with pytest.raises(ConfigError, match=r"urls.txt:2: not an http\(s\) URL"):
        run_stage(spark, "export", *base, "mode=overwrite", f"export.blocklist.url={urls}")
    with pytest.raises(ConfigError, match="export.subsets.aesthetic"):
        run_stage(spark, "export", *base, "mode=overwrite", "export.subsets.aesthetic=AESTHETIC >= 6")
    with pytest.raises(ConfigError, match="export.where"):
        run_stage(spark, "export", *base, "mode=overwrite", "export.where=no_such_column > 1")
    with pytest.raises(ConfigError, match="emb"):
        cli.prepare("export", [], [*base, "export.outputs=laion,emb"])
    assert not (out / "laion").exists()


def test_hostile_lists_and_tags(spark, world, tmp_path):
    # CRLF line ends, a byte-order mark, tabs and spaces around entries, a gzipped list, an empty list;
    # and a tags table with one sample_id twice: the same rows go, and no dataset row is released twice
    import gzip

    root, lists = world["root"], tmp_path / "lists"
    lists.mkdir()
    md5 = hashlib.md5(world["bodies"][2]).hexdigest().upper()
    (lists / "crlf.txt").write_bytes(("\ufeff# list\r\n \t\r\n\t" + md5 + "  \t# note\r\n").encode("utf-8"))
    with gzip.open(lists / "zipped_urls.txt.gz", "wt") as fh:
        fh.write(f"  {world['urls'][9]}  \n")
    (lists / "empty.txt").write_text("")
    tags = spark.read.parquet(str(root / "tags"))
    tags.unionByName(tags.limit(1)).write.parquet(str(tmp_path / "tags_twice"))
    out = tmp_path / "hostile"
    summary = run_stage(spark, "export", f"input={root / 'dataset.parquet'}", f"tags={tmp_path / 'tags_twice'}",
                        f"output={out}", "export.outputs=laion",
                        f"export.blocklist.image_md5={lists / 'crlf.txt'},{lists / 'empty.txt'}",
                        f"export.blocklist.url={lists / 'zipped_urls.txt.gz'}")
    assert summary["reasons"] == {"blocklisted:crlf": 1, "blocklisted:zipped_urls": 1}
    ids = pq.read_table(out / "laion").column("SAMPLE_ID").to_pylist()
    assert len(ids) == len(set(ids)) == N - 2
    assert world["ids"][2] not in ids and world["ids"][9] not in ids


def test_hostile_dataset_rows(spark, world, tmp_path):
    # a dataset row listed twice, one without a URL, one without a sample_id and one without a caption:
    # each pair is released once, the rows that are no pair are removed with their reason, a null caption
    # is released as it is, with LAION's hash of URL + ''
    images = world["images"].drop(columns=["i"])
    twice = images.iloc[[8]]
    no_url = images.iloc[[9]].assign(url=None)
    no_id = images.iloc[[10]].assign(sample_id=None)
    no_text = images.iloc[[11]].assign(text=None)
    hostile = pd.concat([images.iloc[[6, 7, 8]], twice, no_url, no_id, no_text], ignore_index=True)
    hostile["sample_id"] = hostile["sample_id"].astype("Int64")
    pq.write_table(pa.Table.from_pandas(hostile, preserve_index=False), tmp_path / "hostile.parquet",
                   coerce_timestamps="us")
    out = tmp_path / "out"
    summary = run_stage(spark, "export", f"input={tmp_path / 'hostile.parquet'}", f"tags={world['root'] / 'tags'}",
                        f"output={out}", "export.outputs=laion,webdataset")
    ids = world["ids"]
    assert summary["reasons"] == {"duplicate_sample_id": 1, "no_url": 1, "no_sample_id": 1}
    rows = {r["SAMPLE_ID"]: r for r in release_of(out).to_pylist()}
    assert sorted(rows) == sorted([ids[6], ids[7], ids[8], ids[11]]) and release_of(out).num_rows == 4
    assert rows[ids[11]]["TEXT"] is None
    assert rows[ids[11]]["hash"] == mmh3.hash64(world["urls"][11].encode("utf-8"))[0]
    assert summary["webdataset"]["successes"] == 4
    removed = pq.read_table(str(out) + "_removed").to_pandas()
    assert sorted(removed.reason) == ["duplicate_sample_id", "no_sample_id", "no_url"]
    assert dict(zip(removed.reason, removed.sample_id))["no_url"] == ids[9]


def test_the_shards_take_their_bytes_back_in_one_exchange(spark, world):
    # as at scale (nothing broadcast): the decisions are made without the image bytes, and the shards'
    # rows take them back by their place in the dataset's files, both sides partitioned by the shards'
    # key: one exchange carries the bytes (the old export carried them through the tags join and again
    # into the shards), and each row gets its own bytes, in the shard shard_sizes counts it in
    from pyspark.sql import functions as F

    from laion_spark.config import load_config
    from laion_spark.export import release as R
    from laion_spark.export import release_job as RJ
    from laion_spark.export.transform import SHARD, pack_webdataset, shard_sizes
    from laion_spark.session import session_confs
    from tests.test_tag import output_names, plan_nodes

    root = world["root"]
    dataset = spark.read.parquet(str(root / "dataset.parquet")).select(
        "*", F.col("_metadata.file_path").alias(RJ.ROW_FILE), F.col("_metadata.row_index").alias(RJ.ROW_INDEX))
    decided = R.decide(R.scored(dataset.drop(S.IMAGE), spark.read.parquet(str(root / "tags"))), None)
    kept = decided.where(F.col(S.REASON).isNull())
    shards = 4
    with session_confs(spark, {"spark.sql.autoBroadcastJoinThreshold": "-1"}):
        packed = pack_webdataset(RJ._webdataset_rows(kept, dataset, shards), load_config([], []).export, shards,
                                 partitioned=True)
        nodes = plan_nodes(packed)
        rows = packed.select(S.SAMPLE_ID, S.IMAGE, SHARD).collect()
    over_bytes = [n for n in nodes if "Exchange" in n.nodeName() and S.IMAGE in output_names(n.children().apply(0))]
    assert len(over_bytes) == 1, [n.toString() for n in over_bytes]
    images = world["images"]
    want = dict(zip(images.sample_id, images.image, strict=True))
    assert sorted(r[S.SAMPLE_ID] for r in rows) == sorted(want)
    assert all(bytes(r[S.IMAGE]) == want[r[S.SAMPLE_ID]] for r in rows)
    per_shard = {r["shard"]: r["rows"] for r in shard_sizes(dataset, shards).collect()}
    assert {s: sum(r[SHARD] == s for r in rows) for s in per_shard} == per_shard
