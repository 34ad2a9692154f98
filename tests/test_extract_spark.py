"""The extract job on the session-scoped local[2] SparkSession, against hand-written expectations."""

from __future__ import annotations

import gzip
import io
import json
import zlib
from datetime import UTC, datetime

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from laion_spark import cli
from laion_spark import schemas as S
from laion_spark.config import ExtractConfig
from laion_spark.extract import job
from laion_spark.extract.job import plan_tasks
from laion_spark.extract.transform import extract_candidates

CC_BY = "https://creativecommons.org/licenses/by/4.0/"
PAGE_A = """<html><head><title>a</title></head><body>
<img src="/img/cat.jpg" alt="Photograph of the cathedral and the old market square in the evening">
<img src="anim.gif" alt="An animated banner that is dropped">
<img src="tiny.jpg" alt="abc">
<!-- <img src="comment.jpg" alt="inside a comment, never seen"> -->
<img src="data:image/png;base64,AAAA" alt="an inline data URI image">
</body></html>"""
PAGE_B = f"""<html><body><a rel="license" href="{CC_BY}">CC BY</a>
<img src="https://cdn.example.org/photos/tree.jpg#top" alt="Ein alter Baum auf einer grünen Wiese im Sommer">
</body></html>"""


def _warc(path, pages, date="2024-05-18T01:02:03Z"):
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for url, html in pages:
            body = html.encode("utf-8")
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            rec = writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http,
                                            warc_headers_dict={"WARC-Date": date})
            writer.write_record(rec)


@pytest.fixture()
def crawl(tmp_path):
    good = tmp_path / "crawl" / "a.warc.gz"
    good.parent.mkdir()
    _warc(good, [("http://example.com/a/page.html", PAGE_A), ("http://example.org/b", PAGE_B)])
    # a second file cut in the middle of its second gzip member
    cut = tmp_path / "crawl" / "b.warc.gz"
    _warc(cut, [("http://example.com/c", PAGE_A), ("http://example.org/d", PAGE_B)])
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) - 200])
    # a Common Crawl style paths file: relative paths, one a line, plus one that does not exist
    paths = tmp_path / "warc.paths.gz"
    paths.write_bytes(gzip.compress(b"crawl/a.warc.gz\ncrawl/b.warc.gz\ncrawl/missing.warc.gz\n"))
    return tmp_path, good, cut, paths


def test_extract_job_tables_and_summary(spark, crawl):
    root, good, cut, paths = crawl
    out = root / "candidates"
    cfg, module = cli.prepare("extract", [], [f"input={paths}", f"output={out}", f"extract.paths_prefix={root}/"])
    summary = cli.run("extract", cfg, module, spark=spark)

    when = datetime(2024, 5, 18, 1, 2, 3, tzinfo=UTC)
    expected = [
        ("http://example.com/img/cat.jpg", "Photograph of the cathedral and the old market square in the evening", "http://example.com/a/page.html",
         None, str(good)),
        ("https://cdn.example.org/photos/tree.jpg", "Ein alter Baum auf einer grünen Wiese im Sommer",
         "http://example.org/b", CC_BY, str(good)),
        # the cut file still gives its first page
        ("http://example.com/img/cat.jpg", "Photograph of the cathedral and the old market square in the evening", "http://example.com/c",
         None, str(cut)),
    ]
    got = spark.read.parquet(str(out))
    assertDataFrameEqual(
        got.select("url", "text", "page_url", "license", "source_uri"),
        spark.createDataFrame(expected, "url string, text string, page_url string, license string, source_uri string"),
    )
    rows = got.collect()
    assert {r.language for r in rows if "Baum" in r.text} == {"de"}
    assert {r.language for r in rows if "cathedral" in r.text} == {"en"}
    assert all(r.crawl_time == when.replace(tzinfo=None) for r in rows)  # UTC session time zone

    # source_offset/length point at the gzip member holding the page: it re-reads on its own
    for r in rows:
        with open(r.source_uri, "rb") as fh:
            fh.seek(r.source_offset)
            member = zlib.decompress(fh.read(r.source_length), 31)
        assert member.startswith(b"WARC/1.0") and f"WARC-Target-URI: {r.page_url}".encode() in member

    errors = spark.read.parquet(job.errors_uri(cfg)).collect()
    missing = str(root / "crawl" / "missing.warc.gz")
    assert any(e.source_uri == missing and e.source_offset is None and "cannot open" in e.error for e in errors)
    assert any(e.source_uri == str(cut) and e.source_offset is not None for e in errors)
    assert not [e for e in errors if e.source_uri == str(good)]

    assert summary["files"] == 3 and summary["files_failed"] == 1
    assert summary["candidates"] == 3 and summary["error_rows"] == len(errors)
    # per rule: .gif, the 3-character alt and the data: URI, once per copy of page A
    assert summary["dropped"] == {"denied_extension": 2, "alt_too_short": 2, "bad_scheme": 2}
    assert summary["images_seen"] == summary["candidates"] + sum(summary["dropped"].values())
    written = json.loads((out / "_summary.json").read_text())
    assert written["candidates"] == 3 and written["stage"] == "extract"

    # an existing output is an error unless mode=overwrite
    with pytest.raises(Exception, match="already exists"):
        cli.prepare("extract", [], [f"input={good}", f"output={out}"])
    cfg, module = cli.prepare("extract", [], [f"input={good}", f"output={out}", "mode=overwrite"])
    assert cli.run("extract", cfg, module, spark=spark)["candidates"] == 2


def test_plan_tasks_groups_small_files(tmp_path):
    sizes = [600_000, 300_000, 300_000, 900_000, 100_000]
    files = []
    for i, size in enumerate(sizes):
        p = tmp_path / f"f{i}.warc.gz"
        p.write_bytes(b"\0" * size)
        files.append(str(p))
    # 1 MB tasks: [f0 f1] [f2] -> f2+f3 would pass 1 MB, so [f2] [f3 f4]
    assert [t for t, _ in plan_tasks(files, 1)] == [0, 0, 1, 2, 2]
    # sizes of remote files are not asked: each is a task of its own
    assert [t for t, _ in plan_tasks(["https://example.org/a", "https://example.org/b"], 1000)] == [0, 1]


def test_one_task_per_partition(spark, crawl):
    root, good, cut, _ = crawl
    tasks = [(0, str(good)), (0, str(cut)), (1, str(root / "nope.warc.gz"))]
    paths = spark.createDataFrame(tasks, f"task int, {S.SOURCE_URI} string")
    out = extract_candidates(paths, ExtractConfig(), num_partitions=2)
    placed = (
        out.stats.select(F.spark_partition_id().alias("p"), S.SOURCE_URI)
        .groupBy("p").agg(F.sort_array(F.collect_list(S.SOURCE_URI)).alias("uris")).collect()
    )
    assert sorted(sorted(r.uris) for r in placed) == [sorted([str(good), str(cut)]), [str(root / "nope.warc.gz")]]
