"""filter: images + embeddings -> dataset + rejected (+ .npy shards), through real local Spark.

The images and embeddings tables are built here: random unit vectors whose cosine is set per row
(no model). Every expectation (which rows pass, each rejected row's reason) is written in the case
table below or computed from it by the test's own plain-Python rule, never by the code under test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from laion_spark import cli
from laion_spark import schemas as S
from laion_spark.config import ConfigError, FilterConfig, FilterThresholds, load_config
from laion_spark.filter import job as filter_job
from laion_spark.filter import npy as N
from laion_spark.filter.transform import filter_images, language_group_column
from laion_spark.io import OutputExistsError

REPO = Path(__file__).resolve().parents[1]
DIM = 32
MODEL = "ViT-B-32/test"
MISSING, NULL, NULL_NO_MESSAGE, NAN = "missing", "null", "null-no-message", "nan"
EMBED_ERROR = "image does not decode: cannot identify image file"
NO_ROW = "no row for this sample_id in the embeddings table"

# (language, status, cosine or marker, reason at the default thresholds en 0.28 / multi 0.26 / nolang 0.26)
CASES = [
    ("en", "success", 0.35, None),
    ("en", "success", 0.30, None),
    ("en", "success", 0.29, None),
    ("en", "success", 0.28, None),  # exactly the threshold: kept
    ("en", "success", 0.279, "below_threshold"),
    ("en", "success", 0.20, "below_threshold"),
    ("en", "success", -0.10, "below_threshold"),
    ("de", "success", 0.27, None),
    ("de", "success", 0.26, None),  # exactly multi's threshold: kept
    ("de", "success", 0.255, "below_threshold"),
    ("de", "success", 0.31, None),
    ("fr", "success", 0.40, None),
    ("fr", "success", 0.10, "below_threshold"),
    ("ja", "success", 0.265, None),
    ("nolang", "success", 0.27, None),
    ("nolang", "success", 0.25, "below_threshold"),
    (None, "success", 0.29, None),
    (None, "success", 0.20, "below_threshold"),
    ("", "success", 0.261, None),
    ("", "success", 0.32, None),
    ("en", "timeout", None, "download_failed:timeout"),
    ("de", "http_error", None, "download_failed:http_error"),
    ("nolang", "decode_error", None, "download_failed:decode_error"),
    (None, "too_small", None, "download_failed:too_small"),
    ("en", "success", MISSING, "not_embedded"),
    ("de", "success", MISSING, "not_embedded"),
    ("fr", "success", NULL, "not_embedded"),
    ("nolang", "success", NULL_NO_MESSAGE, "not_embedded"),
    ("en", "success", NAN, "not_embedded"),
]
# the test's own language groups (schemas.language_group is what the code uses)
GROUP = {"en": "en", "de": "multi", "fr": "multi", "ja": "multi", "nolang": "nolang", None: "nolang", "": "nolang"}


def sample_id(i: int) -> int:
    return (i * 1_000_003 + 17) * (-1 if i % 3 == 1 else 1)


def unit_pair(rng: np.random.Generator, cosine: float) -> tuple[np.ndarray, np.ndarray]:
    """-> two float32 unit vectors whose dot product is `cosine`."""
    u = rng.standard_normal(DIM)
    u /= np.linalg.norm(u)
    v = rng.standard_normal(DIM)
    v -= v.dot(u) * u
    v /= np.linalg.norm(v)
    return u.astype(np.float32), (cosine * u + np.sqrt(1 - cosine**2) * v).astype(np.float32)


def images_row(i: int, language, status) -> dict:
    ok = status == S.SUCCESS
    return dict(
        sample_id=sample_id(i), url=f"https://example.com/{i}.jpg", text=f"caption {i} ✓", page_url=None,
        language=language, language_prob=0.9, license=None, crawl_time=None, source_uri="s3://c/a.warc.gz",
        source_offset=i * 100, source_length=90, status=status, error_message=None if ok else f"{status} for {i}",
        retryable=False, http_status=200 if ok else None, final_url=None, content_type="image/jpeg",
        fetched_at=None, image=f"jpeg-bytes-{i}".encode() if ok else None, image_format="jpg" if ok else None,
        width=64, height=48, bytes=10 + i, original_width=640, original_height=480, original_format="jpeg",
        original_bytes=1000 + i, sha256=None, md5=None, sha1=None,
    )


def embeddings_rows(model_of=lambda i, language: MODEL) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for i, (language, status, cosine, _) in enumerate(CASES):
        if status != S.SUCCESS or cosine == MISSING:
            continue
        row = dict(sample_id=sample_id(i), image_embedding=None, text_embedding=None, similarity=None,
                   clip_model=model_of(i, language), error_message=None)
        if cosine == NULL:
            row["error_message"] = EMBED_ERROR
        elif cosine == NAN:
            img, txt = unit_pair(rng, 0.5)
            row.update(image_embedding=img.tolist(), text_embedding=txt.tolist(), similarity=float("nan"))
        elif cosine != NULL_NO_MESSAGE:
            img, txt = unit_pair(rng, cosine)
            row.update(image_embedding=img.tolist(), text_embedding=txt.tolist(), similarity=float(np.float32(cosine)))
        rows.append(row)
    return rows


def write_table(spark, rows: list[dict], schema, path: Path, files: int = 3) -> str:
    # nullable: Parquet gives every column back nullable, and CLD3-less rows have no language
    spark.createDataFrame([tuple(r[n] for n in schema.fieldNames()) for r in rows], S.nullable(schema)) \
        .repartition(files).write.mode("overwrite").parquet(str(path))
    return str(path)


def expected_reasons(thresholds: dict[str, float]) -> dict[int, str | None]:
    """sample_id -> reason (None: kept), by the test's own rule over CASES."""
    out = {}
    for i, (language, status, cosine, _) in enumerate(CASES):
        if status != S.SUCCESS:
            reason = f"download_failed:{status}"
        elif isinstance(cosine, str):
            reason = "not_embedded"
        else:
            keep = np.float32(cosine) >= np.float32(thresholds[GROUP[language]])
            reason = None if keep else "below_threshold"
        out[sample_id(i)] = reason
    return out


DEFAULTS = {"en": 0.28, "multi": 0.26, "nolang": 0.26}
WRITTEN = {sample_id(i): case[3] for i, case in enumerate(CASES)}
SUCCESS_COSINE = {sample_id(i): c for i, (_, s, c, _) in enumerate(CASES) if s == S.SUCCESS and not isinstance(c, str)}


@pytest.fixture(scope="module")
def tables(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("filter_in")
    images = write_table(spark, [images_row(i, lang, st) for i, (lang, st, _, _) in enumerate(CASES)],
                         S.IMAGES, root / "images")
    embeddings = write_table(spark, embeddings_rows(), S.EMBEDDINGS, root / "embeddings")
    return images, embeddings


def run_filter(spark, images: str, embeddings: str, out: Path, *overrides: str) -> dict:
    cfg, module = cli.prepare("filter", [], [f"input={images}", f"embeddings={embeddings}", f"output={out}",
                                             *overrides])
    return cli.run("filter", cfg, module, spark)


def read(spark, path) -> pd.DataFrame:
    return spark.read.parquet(str(path)).toPandas()


def reasons_of(spark, out: Path) -> dict[int, str | None]:
    kept = read(spark, out)
    rejected = read(spark, f"{out}_rejected")
    got = {int(s): None for s in kept[S.SAMPLE_ID]}
    for s, reason in zip(rejected[S.SAMPLE_ID], rejected[S.REASON]):
        assert int(s) not in got, f"sample_id {s} is in dataset and rejected, or twice in rejected"
        got[int(s)] = reason
    assert len(got) == len(kept) + len(rejected), "a sample_id appears twice"
    return got


def test_case_table_says_what_the_rule_says():
    assert expected_reasons(DEFAULTS) == WRITTEN


def test_language_group_column_is_language_group(spark):
    languages = ["en", "de", "nolang", "", None, "EN", "zh", "un"]
    df = spark.createDataFrame([(x,) for x in languages], "language string")
    got = [r[0] for r in df.select(language_group_column(df["language"])).collect()]
    assert got == [S.language_group(x) for x in languages]
    assert got == ["en", "multi", "nolang", "nolang", "nolang", "multi", "multi", "multi"]


def test_cli_counts_reasons_and_messages(spark, tables, tmp_path):
    images, embeddings = tables
    out = tmp_path / "dataset"
    summary = run_filter(spark, images, embeddings, out)

    assert reasons_of(spark, out) == WRITTEN
    want = pd.Series([c[3] for c in CASES]).value_counts().to_dict()  # NaN-free: kept rows are None
    assert summary["rows_in"] == len(CASES) == summary["dataset"] + summary["rejected"]
    assert summary["dataset"] == sum(1 for c in CASES if c[3] is None) == 13
    assert summary["reasons"] == dict(sorted(want.items())) == {
        "below_threshold": 7, "download_failed:decode_error": 1, "download_failed:http_error": 1,
        "download_failed:timeout": 1, "download_failed:too_small": 1, "not_embedded": 5}
    assert summary["groups"] == {"en": {"kept": 4, "below_threshold": 3, "not_embedded": 2},
                                 "multi": {"kept": 5, "below_threshold": 2, "not_embedded": 2},
                                 "nolang": {"kept": 4, "below_threshold": 2, "not_embedded": 1}}
    assert summary["thresholds"] == DEFAULTS and summary["npy"] is None
    assert json.loads((out / "_summary.json").read_text())["dataset"] == 13
    assert "13 kept" in filter_job.format_report(summary)

    kept, rejected = read(spark, out), read(spark, f"{out}_rejected")
    assert list(kept.columns) == [*S.IMAGES.fieldNames(), "similarity", "clip_model"]
    assert list(rejected.columns) == [*S.IMAGES.fieldNames(), "similarity", "clip_model", "reason"]
    # kept rows carry every images column unchanged, and their stored similarity
    source = {r["sample_id"]: r for r in (images_row(i, c[0], c[1]) for i, c in enumerate(CASES))}
    for row in kept.to_dict("records"):
        want_row = source[row["sample_id"]]
        assert (row["url"], row["text"], bytes(row["image"]), row["language"]) == \
               (want_row["url"], want_row["text"], want_row["image"], want_row["language"])
        assert row["similarity"] == pytest.approx(SUCCESS_COSINE[row["sample_id"]], abs=1e-6)
        assert row["clip_model"] == MODEL and row["error_message"] is None
    # rejected rows: why, in error_message
    by_id = {r["sample_id"]: r for r in rejected.to_dict("records")}
    for i, (_, status, cosine, reason) in enumerate(CASES):
        if reason is None:
            continue
        row = by_id[sample_id(i)]
        if cosine == MISSING:
            assert row["error_message"] == NO_ROW and row["clip_model"] is None
        elif cosine == NULL:
            assert row["error_message"] == EMBED_ERROR and row["clip_model"] == MODEL
        elif cosine in (NULL_NO_MESSAGE, NAN):
            assert "no embedding or no similarity" in row["error_message"]
        elif status != S.SUCCESS:
            assert row["error_message"] == f"{status} for {i}" and row["clip_model"] is None
        else:  # below_threshold
            assert row["error_message"] is None
            assert row["similarity"] == pytest.approx(cosine, abs=1e-6)
        if reason != "below_threshold":
            assert pd.isna(row["similarity"])


def test_threshold_override_moves_exactly_the_predicted_rows(spark, tables, tmp_path):
    images, embeddings = tables
    before = {p: p.stat().st_mtime_ns for p in Path(embeddings).rglob("*")}
    out = tmp_path / "dataset"
    run_filter(spark, images, embeddings, out, "filter.threshold.en=0.30")
    got = reasons_of(spark, out)
    assert got == expected_reasons({**DEFAULTS, "en": 0.30})
    moved = {s for s in got if got[s] != WRITTEN[s]}
    # the en rows at 0.29 and 0.28 (0.30 itself still passes); nolang's 0.29 row is not en
    assert moved == {sample_id(2), sample_id(3)}
    assert all(got[s] == "below_threshold" for s in moved)
    # only the filter ran: the stored embeddings are read, not rewritten
    assert {p: p.stat().st_mtime_ns for p in Path(embeddings).rglob("*")} == before


def test_per_group_thresholds_in_the_transform(spark, tables):
    images, embeddings = tables
    thresholds = {"en": 0.1, "multi": 0.3, "nolang": 0.262}
    cfg = FilterConfig(threshold=FilterThresholds(**thresholds))
    result = filter_images(spark.read.parquet(images), spark.read.parquet(embeddings), cfg)
    got = {r["sample_id"]: None for r in result.dataset.select("sample_id").collect()}
    got.update({r["sample_id"]: r["reason"] for r in result.rejected.select("sample_id", "reason").collect()})
    assert got == expected_reasons(thresholds)
    kept = {s for s, r in got.items() if r is None}
    # en: everything >= 0.1 (not -0.1); multi: 0.31 and 0.40 only; nolang: 0.27, 0.29, 0.32 (0.261 is out)
    assert kept == {sample_id(i) for i in (0, 1, 2, 3, 4, 5, 10, 11, 14, 16, 19)}


def test_laion400m_conf_keeps_at_030_everywhere(spark, tables):
    cfg = load_config([str(REPO / "conf" / "laion400m.yaml")])
    assert cfg.filter.threshold == FilterThresholds(0.30, 0.30, 0.30)
    images, embeddings = tables
    result = filter_images(spark.read.parquet(images), spark.read.parquet(embeddings), cfg.filter)
    kept = {r["sample_id"] for r in result.dataset.select("sample_id").collect()}
    assert kept == {s for s, r in expected_reasons(dict.fromkeys(DEFAULTS, 0.30)).items() if r is None}
    assert kept == {sample_id(i) for i in (0, 1, 10, 11, 19)}


def test_laion5b_conf_is_lains_split():
    cfg = load_config([str(REPO / "conf" / "laion5b.yaml")])
    assert cfg.filter.threshold == FilterThresholds(0.28, 0.26, 0.26)
    assert cfg.embed.models.en == ("ViT-B-32", "openai")
    assert cfg.embed.models.multi == cfg.embed.models.nolang == ("xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k")


def test_duplicate_embedding_rows_fail_before_writing(spark, tables, tmp_path):
    images, _ = tables
    rows = embeddings_rows()
    dup = dict(rows[0], similarity=0.01)  # a second, different row for the first sample_id
    embeddings = write_table(spark, [*rows, dup], S.EMBEDDINGS, tmp_path / "embeddings")
    out = tmp_path / "dataset"
    message = rf"1 sample_id\(s\) have more than one row, e.g. {rows[0]['sample_id']} \(2 rows\)"
    with pytest.raises(filter_job.FilterError, match=message):
        run_filter(spark, images, embeddings, out)
    assert not out.exists() and not Path(f"{out}_rejected").exists()


def test_row_accounting_failure_is_loud(spark, tables, tmp_path, monkeypatch):
    images, embeddings = tables
    real = filter_job.filter_images

    def drops_one(*args):
        result = real(*args)
        return result._replace(dataset=result.dataset.filter(result.dataset["sample_id"] != sample_id(0)))

    monkeypatch.setattr(filter_job, "filter_images", drops_one)
    with pytest.raises(filter_job.FilterError, match="row accounting failed: 29 images rows but 12 dataset"):
        run_filter(spark, images, embeddings, tmp_path / "dataset")


def read_npy_shards(folder: Path) -> tuple[list[str], dict[int, tuple[np.ndarray, np.ndarray, str, str]]]:
    """folder -> (shard ids, {sample_id: (image vector, text vector, url, text)}); asserts alignment."""
    ids = sorted(re.fullmatch(r"img_emb_(\d+)\.npy", p.name).group(1) for p in (folder / "img_emb").iterdir())
    assert ids == sorted(re.fullmatch(r"text_emb_(\d+)\.npy", p.name).group(1) for p in (folder / "text_emb").iterdir())
    assert ids == sorted(re.fullmatch(r"metadata_(\d+)\.parquet", p.name).group(1)
                         for p in (folder / "metadata").iterdir())
    rows = {}
    for i in ids:
        img = np.load(folder / "img_emb" / f"img_emb_{i}.npy")
        txt = np.load(folder / "text_emb" / f"text_emb_{i}.npy")
        meta = pq.read_table(folder / "metadata" / f"metadata_{i}.parquet")
        assert meta.column_names == ["sample_id", "url", "text"]
        assert img.shape == txt.shape == (meta.num_rows, DIM)
        for k, (s, url, text) in enumerate(zip(*(meta.column(c).to_pylist() for c in meta.column_names))):
            assert s not in rows, f"sample_id {s} in two shards or twice in one"
            rows[s] = (img[k], txt[k], url, text)
    return ids, rows


def all_files(folder: Path) -> dict[str, bytes]:
    """folder -> {relative path: bytes} of every file but the CLI's completion markers (`_summary.json`
    and the like: they hold times, and cli.py, not the writer, owns them)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith("_")}


def assert_npy_matches_embeddings(folder: Path, dtype: str) -> list[str]:
    """The shards in folder give back, per sample_id, the embeddings table's vectors (to dtype's
    precision), url and text, for every kept row exactly once, sorted by sample_id -> shard ids."""
    ids, rows = read_npy_shards(folder)
    assert set(rows) == {s for s, r in WRITTEN.items() if r is None}
    source = {r["sample_id"]: r for r in embeddings_rows()}
    by_index = {sample_id(i): i for i in range(len(CASES))}
    tol = 1e-3 if dtype == "float16" else 0  # float16 keeps ~3 decimal digits of a unit vector's entries
    for s, (img, txt, url, text) in rows.items():
        assert img.dtype == txt.dtype == np.dtype(dtype)
        np.testing.assert_allclose(img, np.float32(source[s]["image_embedding"]), atol=tol, rtol=0)
        np.testing.assert_allclose(txt, np.float32(source[s]["text_embedding"]), atol=tol, rtol=0)
        assert float(img.astype(np.float32) @ txt.astype(np.float32)) == pytest.approx(SUCCESS_COSINE[s], abs=5e-3)
        assert (url, text) == (f"https://example.com/{by_index[s]}.jpg", f"caption {by_index[s]} ✓")
    for i in ids:
        order = pq.read_table(folder / "metadata" / f"metadata_{i}.parquet").column("sample_id").to_pylist()
        assert order == sorted(order)
    return ids


def test_npy_shards_give_back_the_vectors(spark, tables, tmp_path):
    images, embeddings = tables
    out = tmp_path / "dataset"
    summary = run_filter(spark, images, embeddings, out, "filter.npy=true", "filter.npy_rows_per_shard=4")
    ids = assert_npy_matches_embeddings(Path(f"{out}_emb"), "float16")  # the default dtype
    kept = sum(1 for c in CASES if c[3] is None)
    assert summary["npy"]["rows"] == kept and summary["npy"]["shards"] == len(ids) >= 3
    assert summary["npy"]["dtype"] == "float16"


def test_npy_rerun_is_byte_identical_and_overwrite_cleans(spark, tables, tmp_path):
    images, embeddings = tables
    out = tmp_path / "dataset"
    folder = Path(f"{out}_emb")
    args = ("filter.npy=true", "filter.npy_rows_per_shard=3", "filter.npy_dtype=float32")
    run_filter(spark, images, embeddings, out, *args)
    assert_npy_matches_embeddings(folder, "float32")
    first = all_files(folder)
    with pytest.raises(OutputExistsError):
        run_filter(spark, images, embeddings, out, *args)
    # a killed attempt's temporary and an earlier run's extra shard, both to be removed
    (folder / "img_emb" / ".img_emb_99.npy.tmp-0123abcd").write_bytes(b"partial")
    (folder / "metadata" / "metadata_99.parquet").write_bytes(b"old")
    (folder / "notes.txt").write_text("not ours: left alone")
    run_filter(spark, images, embeddings, out, *args, "mode=overwrite")
    again = all_files(folder)
    assert again.pop("notes.txt") == b"not ours: left alone"
    assert again == first
    assert not [n for n in again if Path(n).name.startswith(".")]
    # fewer, bigger shards: none of the old ones stay
    run_filter(spark, images, embeddings, out, "filter.npy=true", "filter.npy_rows_per_shard=1000", "mode=overwrite")
    assert sorted(n for n in all_files(folder) if n != "notes.txt") == [
        "img_emb/img_emb_0.npy", "metadata/metadata_0.parquet", "text_emb/text_emb_0.npy"]
    assert assert_npy_matches_embeddings(folder, "float16") == ["0"]
    # overwrite without npy: the old shards no longer describe the dataset, so they go (notes.txt stays)
    summary = run_filter(spark, images, embeddings, out, "mode=overwrite")
    assert summary["stale_npy_removed"] == 3
    assert sorted(all_files(folder)) == ["notes.txt"]


def test_npy_of_several_models_go_to_one_folder_each(spark, tables, tmp_path):
    images, _ = tables
    en_model, multi_model = "ViT-B-32/openai", "xlm-roberta-base-ViT-B-32/laion5b_s13b_b90k"
    rows = embeddings_rows(lambda i, language: en_model if GROUP[language] == "en" else multi_model)
    embeddings = write_table(spark, rows, S.EMBEDDINGS, tmp_path / "embeddings")
    out = tmp_path / "dataset"
    summary = run_filter(spark, images, embeddings, out, "filter.npy=true")
    folder = Path(f"{out}_emb")
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith("_")) == ["ViT-B-32_openai",
                                                        "xlm-roberta-base-ViT-B-32_laion5b_s13b_b90k"]
    kept = {s for s, r in WRITTEN.items() if r is None}
    en = {sample_id(i) for i, c in enumerate(CASES) if GROUP[c[0]] == "en"}
    assert set(read_npy_shards(folder / "ViT-B-32_openai")[1]) == kept & en
    assert set(read_npy_shards(folder / "xlm-roberta-base-ViT-B-32_laion5b_s13b_b90k")[1]) == kept - en
    assert summary["npy"]["rows"] == len(kept)


def test_retried_shard_write_leaves_one_shard(tmp_path):
    import pyarrow as pa

    table = pa.table({"sample_id": [3, 5], "url": ["u3", "u5"], "text": ["t3", "t5"],
                      "image_embedding": [[1.0, 0.0], [0.0, 1.0]], "text_embedding": [[0.6, 0.8], [0.8, 0.6]]})
    N.write_shard(table, str(tmp_path), 7, "float32")
    first = all_files(tmp_path)
    assert N.write_shard(table, str(tmp_path), 7, "float32") == {"shard": 7, "rows": 2, "dim": 2}
    assert all_files(tmp_path) == first
    assert sorted(first) == ["img_emb/img_emb_7.npy", "metadata/metadata_7.parquet", "text_emb/text_emb_7.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "text_emb" / "text_emb_7.npy"),
                                  np.float32([[0.6, 0.8], [0.8, 0.6]]))
    bad = table.set_column(3, "image_embedding", pa.array([[1.0, 0.0], [1.0]]))
    with pytest.raises(ValueError, match="different lengths"):
        N.write_shard(bad, str(tmp_path), 8, "float32")
    assert all_files(tmp_path) == first  # nothing of shard 8, no temporaries


def test_prepare_rejects_bad_arguments(tables, tmp_path):
    images, embeddings = tables
    out = str(tmp_path / "dataset")

    def prepare(*overrides):
        return cli.prepare("filter", [], [f"input={images}", f"output={out}", *overrides])

    with pytest.raises(ConfigError, match="embeddings is required"):
        prepare()
    with pytest.raises(ConfigError, match="embeddings not found"):
        prepare(f"embeddings={tmp_path / 'nope'}")
    with pytest.raises(ConfigError, match="overlaps input"):
        cli.prepare("filter", [], [f"input={images}", f"embeddings={embeddings}", f"output={images}/sub"])
    with pytest.raises(ConfigError, match="overlap"):
        prepare(f"embeddings={embeddings}", f"filter.rejected_output={out}/rej")
    Path(f"{out}_rejected").mkdir()
    with pytest.raises(OutputExistsError, match="_rejected already exists"):
        prepare(f"embeddings={embeddings}")
    prepare(f"embeddings={embeddings}", "mode=overwrite")
    Path(f"{out}_emb").mkdir()
    prepare(f"embeddings={embeddings}", "mode=overwrite", "filter.npy=true")
    with pytest.raises(OutputExistsError, match="_emb already exists"):
        prepare(f"embeddings={embeddings}", f"filter.rejected_output={tmp_path / 'r2'}", "filter.npy=true")
