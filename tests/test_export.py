"""export: images -> webdataset shards. The shards are read back with the `webdataset` package and
pyarrow and compared with the input rows built here (real JPEG / PNG / WebP bytes from Pillow);
expected keys, counts and statuses are computed in plain Python from those rows."""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import random
import tarfile
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image
from pyspark.sql import functions as F

from laion_spark import cli
from laion_spark import schemas as S
from laion_spark.config import ConfigError, ExportConfig
from laion_spark.export import webdataset as W
from laion_spark.export.transform import pack_webdataset, webdataset_layout
from laion_spark.export.write import write_webdataset
from laion_spark.io import OutputExistsError

T0 = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
FAILURES = ["timeout", "http_error", "decode_error", "too_small", "dns_error"]


def image_bytes(fmt: str, size: tuple[int, int], seed: int) -> bytes:
    rnd = random.Random(seed)
    img = Image.new("RGB", size, (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)))
    for _ in range(20):  # some structure, so that encodings differ
        x, y = rnd.randrange(size[0]), rnd.randrange(size[1])
        img.putpixel((x, y), (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)))
    buf = io.BytesIO()
    img.save(buf, FORMATS[fmt])
    return buf.getvalue()


def image_row(i: int) -> dict:
    """Row i of the test images table: every 4th a failure (no image), the others jpg / png / webp."""
    url = f"https://example.com/img/{i}.png"
    text = f"caption {i} – ünïcode ✓" if i % 5 else f"caption {i}"
    base = dict(
        sample_id=(i * 7919 + 13) * (-1 if i % 2 else 1), url=url, text=text,
        page_url=f"https://example.com/page/{i}" if i % 3 else None, language="en",
        language_prob=0.5 if i % 2 else None, license=None,
        crawl_time=T0 - dt.timedelta(days=i) if i % 3 else None,
        source_uri="s3://crawl/a.warc.gz", source_offset=i * 1000, source_length=900,
        fetched_at=T0 + dt.timedelta(seconds=i), final_url=url, content_type="image/png",
        original_format=None, original_width=None, original_height=None, original_bytes=None,
    )
    if i % 4 == 3:
        status = FAILURES[i % len(FAILURES)]
        return {**base, "status": status, "error_message": f"{status} for {i}", "retryable": status == "timeout",
                "http_status": 503 if status == "http_error" else None, "image": None, "image_format": None,
                "width": None, "height": None, "bytes": None, "sha256": None, "md5": None, "sha1": None}
    fmt = ("jpg", "png", "webp")[i % 3]
    w, h = 16 + i, 12 + (i % 7)
    body = image_bytes(fmt, (w, h), i)
    return {**base, "status": S.SUCCESS, "error_message": None, "retryable": False, "http_status": 200,
            "image": body, "image_format": fmt, "width": w, "height": h, "bytes": len(body),
            "original_width": w * 2, "original_height": h * 2, "original_format": "jpeg",
            "original_bytes": len(body) * 3, "sha256": f"{i:064x}", "md5": f"{i:032x}", "sha1": f"{i:040x}"}


ROWS = [image_row(i) for i in range(30)]
SUCCESS_ROWS = {r["sample_id"]: r for r in ROWS if r["status"] == S.SUCCESS}
NAMES = S.IMAGES.fieldNames()


def write_images(spark, rows: list[dict], path: Path, files: int = 2) -> str:
    df = spark.createDataFrame([tuple(r[n] for n in NAMES) for r in rows], S.IMAGES)
    df.repartition(files).write.mode("overwrite").parquet(str(path))
    return str(path)


@pytest.fixture(scope="module")
def images(spark, tmp_path_factory) -> str:
    return write_images(spark, ROWS, tmp_path_factory.mktemp("export_in") / "images")


def export(spark, input_uri: str, output: Path, *extra: str) -> dict:
    # format=webdataset: shards of any images table, straight into output (the release is test_export_release's)
    cfg, module = cli.prepare("export", [], [f"input={input_uri}", f"output={output}", "export.format=webdataset",
                                             *extra])
    return cli.run("export", cfg, module, spark)


def read_samples(folder: Path) -> list[dict]:
    urls = sorted(str(p) for p in folder.glob("*.tar"))
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def tar_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


def iso(t):
    return None if t is None else t.astimezone(dt.UTC).isoformat()


def test_widths_follow_img2dataset():
    for n in (1, 2, 7, 9, 10, 11, 99, 100, 101, 1000, 9999, 10000, 10001, 123456):
        assert W.digits_for(n) == math.ceil(math.log10(n)), n  # img2dataset's oom_sample_per_shard
    assert W.key_digits_for(10000) == 4
    assert W.key_digits_for(7, largest_shard=10) == 1  # indices 0..9
    assert W.key_digits_for(7, largest_shard=11) == 2  # index 10 would run into the next shard's keys
    assert W.shard_digits_for(5) == 5 and W.shard_digits_for(100_000) == 5 and W.shard_digits_for(100_001) == 6
    layout = webdataset_layout(S.IMAGES, ExportConfig(), "unused", 1)  # samples_per_shard 10000
    assert layout.key(12, 345) == "000120345" == f"{12:05d}{345:04d}"
    assert layout.key(0, 0) == "000000000"
    with pytest.raises(ValueError, match="more than 10000 rows"):
        layout.key(1, 10000)


def test_export_reads_back_with_webdataset(spark, images, tmp_path):
    out = tmp_path / "wds"
    summary = export(spark, images, out, "export.samples_per_shard=7")
    n_shards = math.ceil(len(ROWS) / 7)

    # the layout: img2dataset's names, nothing else but _summary.json
    names = sorted(p.name for p in out.iterdir())
    expected = sorted([f"{s:05d}{ext}" for s in range(n_shards) for ext in (".tar", ".parquet", "_stats.json")]
                      + ["_summary.json"])
    assert names == expected

    # tars: exactly the success rows, with their bytes, captions and meta
    samples = read_samples(out)
    assert len(samples) == len(SUCCESS_ROWS)
    seen = set()
    for sample in samples:
        meta = json.loads(sample["json"])
        row = SUCCESS_ROWS[meta["sample_id"]]
        seen.add(meta["sample_id"])
        fmt = row["image_format"]
        assert sorted(k for k in sample if not k.startswith("__")) == sorted([fmt, "json", "txt"])
        assert sample[fmt] == row["image"]
        assert sample["txt"].decode("utf-8") == row["text"]
        assert sample["__key__"] == meta["key"]
        assert Path(sample["__url__"]).name == f"{meta['key'][:5]}.tar"  # key prefix = shard
        assert meta["caption"] == row["text"] and "text" not in meta
        for col in ("url", "status", "error_message", "width", "height", "original_width", "original_height",
                    "sha256", "md5", "http_status", "retryable", "page_url", "bytes", "image_format"):
            assert meta[col] == row[col], col
            assert type(meta[col]) is type(row[col]), col  # ints stay ints, not floats
        assert meta["fetched_at"] == iso(row["fetched_at"])
        assert meta["crawl_time"] == iso(row["crawl_time"])
        assert "image" not in meta
    assert seen == set(SUCCESS_ROWS)

    # parquets: every row, keys unique, numbered in sample_id order within the shard
    tables = {p.name[:5]: pq.read_table(p).to_pandas() for p in sorted(out.glob("*.parquet"))}
    every = pd.concat(tables.values(), ignore_index=True)
    assert len(every) == len(ROWS)
    assert sorted(every["sample_id"]) == sorted(r["sample_id"] for r in ROWS)
    assert every["key"].is_unique
    by_id = {r["sample_id"]: r for r in ROWS}
    assert all(by_id[i]["status"] == s for i, s in zip(every["sample_id"], every["status"]))
    assert "image" not in every.columns and "caption" in every.columns
    for shard, table in tables.items():
        ordered = table.sort_values("sample_id")
        width = len(table["key"].iloc[0]) - 5
        assert list(ordered["key"]) == [f"{shard}{i:0{width}d}" for i in range(len(table))]

    # stats: per shard counts agree with the tar and the parquet
    tar_counts = Counter(s["__key__"][:5] for s in samples)
    for shard, table in tables.items():
        stats = json.loads((out / f"{shard}_stats.json").read_text())
        statuses = Counter(table["status"])
        assert stats["count"] == len(table)
        assert stats["successes"] == tar_counts[shard] == statuses[S.SUCCESS]
        assert stats["status_dict"] == dict(statuses)
        assert stats["failed_to_resize"] == sum(n for s, n in statuses.items() if s in ("decode_error", "too_small"))
        assert stats["failed_to_download"] + stats["failed_to_resize"] == len(table) - statuses[S.SUCCESS]
        assert stats["end_time"] >= stats["start_time"]

    # the summary, via the CLI
    written = json.loads((out / "_summary.json").read_text())
    for doc in (summary, written):
        assert doc["stage"] == "export"
        assert doc["shards"] == n_shards
        assert doc["rows_in"] == doc["rows"] == len(ROWS)
        assert doc["successes"] == len(SUCCESS_ROWS)
        assert doc["statuses"] == dict(Counter(r["status"] for r in ROWS))
        assert doc["largest_shard"] == max(len(t) for t in tables.values())
        # img2dataset's width for 7 samples a shard, wider only if a hash shard outgrew it
        assert doc["key_digits"] == len(every["key"].iloc[0]) - 5 == len(str(max(7, doc["largest_shard"]) - 1))


def test_rerun_is_byte_identical_and_overwrite_removes_old_shards(spark, images, tmp_path):
    out = tmp_path / "wds"
    export(spark, images, out, "export.samples_per_shard=7")
    first = tar_bytes(out)
    assert len(first) == 5

    with pytest.raises(OutputExistsError):
        cli.prepare("export", [], [f"input={images}", f"output={out}", "export.format=webdataset"])

    # fewer, bigger shards: the old 00003 and 00004 must go; a killed attempt's temporary too
    (out / ".00001.tar.tmp-0123abcd").write_bytes(b"partial")
    export(spark, images, out, "export.samples_per_shard=13", "mode=overwrite")
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    assert sorted(p.name for p in out.glob("*_stats.json")) == ["00000_stats.json", "00001_stats.json",
                                                                 "00002_stats.json"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]

    # the same rows in another order and other files: the same bytes
    shuffled = ROWS[:]
    random.Random(5).shuffle(shuffled)
    again = write_images(spark, shuffled, tmp_path / "images_shuffled", files=3)
    summary = export(spark, again, out, "export.samples_per_shard=7", "mode=overwrite")
    assert summary["shards"] == 5
    assert tar_bytes(out) == first


def test_retried_shard_write_leaves_one_shard(tmp_path):
    out = tmp_path / "shards"
    layout = webdataset_layout(S.IMAGES, ExportConfig(samples_per_shard=10), str(out), 3)
    frame = pd.DataFrame(ROWS[:10], columns=NAMES)

    first = W.write_shard(frame, layout, 2)
    tar1 = (out / "00002.tar").read_bytes()
    # a failed attempt: it dies after the first batch; its temporaries go, the finished shard stays
    def dying():
        yield frame.iloc[:4]
        raise OSError("executor lost")

    with pytest.raises(OSError, match="executor lost"):
        W.write_shard(dying(), layout, 2)
    second = W.write_shard([frame.iloc[:4], frame.iloc[4:]], layout, 2)  # the retry, in two batches

    assert sorted(p.name for p in out.iterdir()) == ["00002.parquet", "00002.tar", "00002_stats.json"]
    assert (out / "00002.tar").read_bytes() == tar1
    assert first["count"] == second["count"] == 10
    assert first["successes"] == second["successes"] == sum(r["status"] == S.SUCCESS for r in ROWS[:10])
    with tarfile.open(out / "00002.tar") as tar:
        members = tar.getmembers()
    assert len({m.name for m in members}) == len(members) == 3 * second["successes"]
    assert {m.mtime for m in members} == {0}
    keys = pq.read_table(out / "00002.parquet").column("key").to_pylist()
    assert keys == [f"00002{i}" for i in range(10)]  # key_digits 1 for samples_per_shard 10


def test_empty_shards_are_written_and_readable(spark, images, tmp_path):
    out = tmp_path / "sparse"
    chosen = sorted(SUCCESS_ROWS)[:4] + [r["sample_id"] for r in ROWS if r["status"] != S.SUCCESS][:2]
    df = spark.read.parquet(images).filter(F.col("sample_id").isin(chosen))
    # timestamps must come out as the same UTC instants whatever the session time zone
    zone = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    try:
        # largest_shard 6 (all rows could share a shard): one key digit
        packed = pack_webdataset(df, ExportConfig(samples_per_shard=1), num_shards=16, largest_shard=6)
        rows = write_webdataset(packed, str(out))
    finally:
        spark.conf.set("spark.sql.session.timeZone", zone)
    assert [r["shard"] for r in rows] == list(range(16))
    assert sum(r["count"] for r in rows) == 6
    assert sum(r["count"] == 0 for r in rows) >= 10
    assert sorted(p.name for p in out.glob("*.tar")) == [f"{s:05d}.tar" for s in range(16)]
    samples = read_samples(out)
    # the four success rows chosen, each once, with their fetch time in UTC
    assert sorted(json.loads(s["json"])["sample_id"] for s in samples) == sorted(chosen[:4])
    for sample in samples:
        meta = json.loads(sample["json"])
        assert meta["fetched_at"] == iso(SUCCESS_ROWS[meta["sample_id"]]["fetched_at"])
    ids = sorted(i for p in out.glob("*.parquet") for i in pq.read_table(p).column("sample_id").to_pylist())
    assert ids == sorted(chosen)


def test_empty_input_writes_no_shards(spark, tmp_path):
    empty = write_images(spark, [], tmp_path / "none", files=1)
    summary = export(spark, empty, tmp_path / "wds")
    assert summary["shards"] == summary["rows"] == summary["successes"] == 0
    assert [p.name for p in (tmp_path / "wds").iterdir()] == ["_summary.json"]


def test_prepare_rejects_bad_input_and_output(images, tmp_path):
    with pytest.raises(ConfigError, match="input not found"):
        cli.prepare("export", [], [f"input={tmp_path / 'missing'}", f"output={tmp_path / 'out'}",
                                   "export.format=webdataset"])
    with pytest.raises(ConfigError, match="overlap"):
        cli.prepare("export", [], [f"input={images}", f"output={images}/wds", "export.format=webdataset"])
    with pytest.raises(ConfigError, match="export.format"):
        cli.prepare("export", [], [f"input={images}", f"output={tmp_path / 'o'}", "export.format=tfrecord"])
