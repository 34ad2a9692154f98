"""The download stage through Spark: a partitioned mix of every outcome against loopback servers.

Every expectation below is written from what the test server is told to answer, not from the
code under test. No URL leaves 127.0.0.0/8 (the 127.0.0.2 server is the "forbidden" one).
"""

import io
import os
import threading
import time

import pandas as pd
import pytest
from PIL import Image

from laion_spark import cli
from laion_spark import schemas as S
from tests.corpora import require
from tests.http_faults import FaultServer
from tests.images import encode, make_image, png_claiming, textured

LOOPBACK = "download.allowed_networks=127.0.0.1/32"
FAST = ["download.connect_timeout_s=2", "download.read_timeout_s=2", "download.deadline_s=5",
        "download.retries=0", "download.threads=8"]


def write_input(spark, path, rows, partitions=3):
    """[(sample_id, url, text)] -> a parquet table with an extra column that must be carried."""
    frame = pd.DataFrame(rows, columns=[S.SAMPLE_ID, S.URL, S.TEXT])
    frame["extra"] = [f"x{i}" for i in range(len(frame))]
    spark.createDataFrame(frame).repartition(partitions).write.parquet(str(path))
    return str(path)


def run_download(spark, tmp_path, input_uri, name, *overrides):
    out = str(tmp_path / name)
    cfg, module = cli.prepare("download", [], [f"input={input_uri}", f"output={out}", LOOPBACK, *FAST, *overrides])
    summary = cli.run("download", cfg, module, spark)
    return summary, spark.read.parquet(out).toPandas()


@pytest.fixture(scope="module")
def servers():
    with FaultServer("127.0.0.1") as ok, FaultServer("127.0.0.2") as forbidden:
        yield ok, forbidden


def mixed_cases(ok, forbidden):
    """url -> expected status (and http_status), one URL per outcome."""
    jpeg = encode(textured((300, 200), seed=1), "JPEG", quality=90)
    png = encode(textured((120, 240), seed=2), "PNG")
    webp = encode(textured((400, 100), seed=3), "WEBP", quality=90)
    gif = encode(textured((200, 200), seed=4).convert("P"), "GIF")
    ok.add_file("/photo.jpg", jpeg)
    ok.add_file("/tall.png", png, "image/png")
    ok.add_file("/wide.webp", webp, "image/webp")
    ok.add_file("/anim.gif", gif, "image/gif")
    ok.add_file("/tiny.png", make_image("PNG", (8, 8)), "image/png")
    ok.add_file("/cut.jpg", jpeg[: len(jpeg) // 2])
    ok.add_file("/bomb.png", png_claiming(20000, 20000), "image/png")
    ok.add_file("/noai.jpg", jpeg, "image/jpeg", {"X-Robots-Tag": "noai"})
    forbidden.add_file("/photo.jpg", jpeg)
    return {
        ok.url("/photo.jpg"): ("success", None),
        ok.url("/tall.png"): ("success", None),
        ok.url("/wide.webp"): ("success", None),
        ok.url(f"/gzip/photo.jpg?x={len(jpeg)}"): ("success", None),
        ok.url("/redirect-chain/2"): ("not_image", None),  # the chain ends in a text body
        ok.url("/anim.gif"): ("unsupported_format", None),
        ok.url("/tiny.png"): ("too_small", None),
        ok.url("/cut.jpg"): ("decode_error", None),
        ok.url("/bomb.png"): ("too_many_pixels", None),
        ok.url("/html-as-jpeg"): ("not_image", None),
        ok.url("/empty"): ("not_image", None),
        ok.url("/status/404"): ("http_error", 404),
        ok.url("/status/500"): ("http_error", 500),
        ok.url("/redirect-loop"): ("too_many_redirects", None),
        ok.url("/huge?n=3000000"): ("too_large", None),
        ok.url("/lying-length?claim=50000&send=1000"): ("truncated", None),
        ok.url("/noai.jpg"): ("opted_out", None),
        ok.url("/slow-headers?s=4"): ("timeout", None),
        forbidden.url("/photo.jpg"): ("blocked_address", None),
        ok.url("/redirect?to=" + forbidden.url("/photo.jpg")): ("blocked_address", None),
        "ftp://127.0.0.1/a.jpg": ("invalid_url", None),
        "not a url": ("invalid_url", None),
    }


def test_every_row_comes_out_once_with_its_expected_status(spark, tmp_path, servers):
    ok, forbidden = servers
    cases = mixed_cases(ok, forbidden)
    # each URL three times under different sample_ids, spread over 3 input partitions
    rows = [(i * 100 + k, url, f"caption {i} {k}") for i, url in enumerate(cases) for k in range(3)]
    uri = write_input(spark, tmp_path / "pairs", rows)
    summary, out = run_download(spark, tmp_path, uri, "images", "download.max_body_bytes=1000000",
                                "download.partitions=4")

    assert len(out) == len(rows) and summary["rows_in"] == summary["rows_out"] == len(rows)
    assert sorted(out[S.SAMPLE_ID]) == sorted(r[0] for r in rows)
    assert list(out.columns) == [S.SAMPLE_ID, S.URL, S.TEXT, "extra", *S.DOWNLOAD_COLUMNS]
    by_id = {r[0]: r for r in rows}
    for row in out.itertuples(index=False):
        sid, url, text = by_id[row.sample_id]
        assert (row.url, row.text) == (url, text)
        assert row.extra == f"x{sorted(by_id).index(sid)}"
        want_status, want_http = cases[url]
        assert row.status == want_status, (url, row.status, row.error_message)
        if want_http:
            assert row.http_status == want_http
        if row.status == "success":
            assert row.error_message is None and not row.retryable
            img = Image.open(io.BytesIO(row.image))
            assert img.format == "JPEG" and img.size == (256, 256)
            assert (row.width, row.height, row.bytes) == (256, 256, len(row.image))
            assert row.sha256 and row.md5 and row.original_bytes > 0
        else:
            assert row.error_message and row.image is None
            assert row.retryable == (want_status in ("timeout", "truncated") or want_http == 500)
    assert summary["statuses"] == {
        s: 3 * sum(1 for st, _ in cases.values() if st == s) for s in {st for st, _ in cases.values()}
    }
    assert forbidden.total_requests == 0
    assert forbidden.connections == 0


def test_retry_from_requests_exactly_the_retryable_failures(spark, tmp_path):
    phase = {"n": 1}
    jpeg = encode(textured((300, 300), seed=5), "JPEG", quality=90)

    def sometimes(handler):
        # 503 in the first run, an image afterwards
        if phase["n"] == 1:
            handler.reply(503, b"busy", "text/plain")
        else:
            handler.reply(200, jpeg, "image/jpeg")

    with FaultServer("127.0.0.1") as srv:
        for i in range(3):
            srv.add_file(f"/ok{i}.jpg", jpeg)
            srv.add_handler(f"/busy{i}.jpg", sometimes)
        urls = ([srv.url(f"/ok{i}.jpg") for i in range(3)] + [srv.url(f"/busy{i}.jpg") for i in range(3)]
                + [srv.url("/status/404"), srv.url("/status/403")])
        rows = [(i + 1, u, f"t{i}") for i, u in enumerate(urls)]
        uri = write_input(spark, tmp_path / "pairs", rows, partitions=2)
        first, out1 = run_download(spark, tmp_path, uri, "images1")
        assert first["statuses"] == {"success": 3, "http_error": 5}
        assert sorted(out1.loc[out1.retryable, S.URL]) == sorted(urls[3:6])
        before = {u: srv.requests(u.split(str(srv.port))[1]) for u in urls}
        assert set(before.values()) == {1}

        phase["n"] = 2
        second, out2 = run_download(spark, tmp_path, uri, "images2",
                                    f"download.retry_from={tmp_path / 'images1'}")
        after = {u: srv.requests(u.split(str(srv.port))[1]) for u in urls}
    again = {u for u in urls if after[u] != before[u]}
    assert again == set(urls[3:6])  # only the 503s, each once more
    assert all(after[u] - before[u] == 1 for u in again)
    assert len(out2) == len(rows)
    assert second["reused"] == 5 and second["downloaded"] == 3
    assert second["statuses"] == {"success": 6, "http_error": 2}
    kept = out1.set_index(S.SAMPLE_ID).loc[[1, 2, 3], "sha256"]
    assert (out2.set_index(S.SAMPLE_ID).loc[[1, 2, 3], "sha256"] == kept).all()


def test_one_task_never_exceeds_the_per_host_cap(spark, tmp_path):
    jpeg = encode(textured((200, 200), seed=6), "JPEG", quality=90)

    def slow(handler):
        handler.wait(0.15)
        handler.reply(200, jpeg, "image/jpeg")

    with FaultServer("127.0.0.1") as srv:
        for i in range(40):
            srv.add_handler(f"/s{i}.jpg", slow)
        rows = [(i, srv.url(f"/s{i}.jpg"), "t") for i in range(40)]
        uri = write_input(spark, tmp_path / "pairs", rows, partitions=4)
        summary, out = run_download(spark, tmp_path, uri, "images", "download.threads=16",
                                    "download.per_host_connections=3", "download.partitions=4")
        peak = srv.peak_concurrency
    assert summary["statuses"] == {"success": 40}
    # 40 rows of one host are one task (host_rows_per_task is 2500), so the site sees at most 3
    assert peak == 3


def _descendants(root: int) -> set[int]:
    """pid -> the pids of every process below it (children, grandchildren, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                # the command name may hold spaces: the parent pid is the 2nd field after ")"
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    seen, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def _worker_rss(pids_seen: dict) -> None:
    """Record the RSS (bytes) of each pyspark Python worker under this test process: {pid: (first seen, peak)}."""
    for pid in _descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read()
            if b"pyspark.daemon" not in cmd and b"pyspark/daemon" not in cmd and b"pyspark.worker" not in cmd:
                continue
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1]) * 1024
                        first, peak = pids_seen.get(pid, (rss, rss))
                        pids_seen[pid] = (first, max(peak, rss))
        except OSError:
            continue


@pytest.mark.slow
def test_bodies_in_flight_bound_the_worker_memory(spark, tmp_path):
    # 64 URLs to a 20 MB JPEG in one task; 16 threads and 16 connections to the host, but at
    # most 2 bodies held. Measured: how much a worker's RSS grows from when the test first sees it
    # (a fresh worker forked from the daemon, ~58 MiB, or one reused from earlier tests with its
    # imports already loaded) to its peak. The growth holds the task's imports (pandas, pyarrow,
    # Pillow, requests: ~50 MiB), 2 bodies (each up to ~3 copies while read and decoded) and the
    # allocator's slack: 147 - 218 MiB here, alone or within the suite. With 16 bodies
    # allowed the same worker grew by 486 - 671 MiB: the limit tells the two apart.
    big = encode(textured((5000, 4000), seed=7), "JPEG", quality=100)
    assert len(big) > 20_000_000
    limit = 300 * 1024 * 1024
    with FaultServer("127.0.0.1") as srv:
        for i in range(64):  # 4 rounds of 16 threads: enough for 16 bodies at once were they allowed
            srv.add_file(f"/big{i}.jpg", big)
        rows = [(i, srv.url(f"/big{i}.jpg"), "t") for i in range(64)]
        uri = write_input(spark, tmp_path / "pairs", rows, partitions=2)
        per_pid: dict = {}
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                _worker_rss(per_pid)
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            summary, out = run_download(spark, tmp_path, uri, "images", "download.threads=16",
                                        "download.max_bodies_in_flight=2", "download.partitions=1",
                                        "download.per_host_connections=16",
                                        "download.max_body_bytes=30000000", "download.deadline_s=60",
                                        "download.read_timeout_s=20")
        finally:
            stop.set()
            watcher.join()
    assert summary["statuses"] == {"success": 64}
    assert per_pid, "no pyspark worker process was seen"
    growth = max(peak - first for first, peak in per_pid.values())
    print(f"largest RSS growth of a Python worker: {growth / 2**20:.0f} MiB (limit {limit / 2**20:.0f} MiB); "
          f"every worker (first seen -> peak): {sorted((f // 2**20, p // 2**20) for f, p in per_pid.values())} MiB")
    assert growth < limit


def test_corpus_images_through_http_and_spark_get_the_status_their_facts_imply(spark, tmp_path):
    # every real image of ../shared/corpora served by a loopback server and downloaded by the
    # stage with LAION's defaults: the status is what IMAGE_FACTS.tsv implies (the same rule
    # test_download_image.py applies to process_image alone), and the sha256 is MANIFEST.tsv's
    from laion_spark.config import DownloadConfig
    from tests.test_download_image import _facts, _manifest_sha256, expected_status

    facts = _facts()
    sha = _manifest_sha256()
    corpora = require()
    with FaultServer("127.0.0.1") as srv:
        rows, expected = [], {}
        for i, row in enumerate(facts):
            # a neutral content type: the stage must judge the bytes, not the label
            url = srv.add_file(f"/corpus/{i}", (corpora / row["path"]).read_bytes(), "application/octet-stream")
            rows.append((i, url, row["path"]))
            expected[i] = (expected_status(row, DownloadConfig()), sha[row["path"]])
        uri = write_input(spark, tmp_path / "pairs", rows, partitions=3)
        summary, out = run_download(spark, tmp_path, uri, "images", "download.read_timeout_s=10",
                                    "download.deadline_s=30")
    assert len(out) == len(facts) == summary["rows_out"]
    wrong = []
    for r in out.itertuples():
        status, digest = expected[r.sample_id]
        if r.status != status:
            wrong.append(f"{r.text}: {r.status} ({r.error_message}), expected {status}")
        elif r.original_bytes and r.sha256 != digest:
            wrong.append(f"{r.text}: sha256 {r.sha256} != MANIFEST.tsv's {digest}")
    assert not wrong, f"{len(wrong)} of {len(out)} rows differ:\n" + "\n".join(wrong)
    assert summary["statuses"].get("success", 0) > 100


def test_a_laion_release_downloads_with_its_columns(spark, tmp_path, servers):
    # LAION-5B's spelling (SAMPLE_ID, URL, TEXT, WIDTH, HEIGHT, similarity, hash, punsafe, pwatermark) and
    # Re-LAION's lower-case one (url, caption, no sample id): both download, LAION's columns carried through
    from pyspark.sql import functions as F

    ok, _ = servers
    jpeg = encode(textured((300, 200), seed=7), "JPEG", quality=90)
    ok.add_file("/laion.jpg", jpeg)
    urls = [ok.url("/laion.jpg"), ok.url("/status/404"), ok.url("/laion.jpg?b=2")]
    laion = pd.DataFrame({"SAMPLE_ID": [11, 12, 13], "URL": urls, "TEXT": ["a", "b", "c"], "WIDTH": [300, 1, 300],
                          "HEIGHT": [200, 1, 200], "similarity": [0.31, 0.29, 0.33], "hash": [1, 2, 3],
                          "punsafe": [0.1, 0.2, 0.3], "pwatermark": [0.4, 0.5, 0.6]})
    spark.createDataFrame(laion).write.parquet(str(tmp_path / "laion"))
    summary, images = run_download(spark, tmp_path, str(tmp_path / "laion"), "images_laion")
    by_id = images.set_index(S.SAMPLE_ID)
    assert sorted(by_id.index) == [11, 12, 13] and summary["rows_in"] == summary["rows_out"] == 3
    assert list(by_id.loc[[11, 12, 13], S.URL]) == urls and list(by_id.loc[[11, 12, 13], S.TEXT]) == ["a", "b", "c"]
    assert list(by_id.loc[[11, 12, 13], S.STATUS]) == ["success", "http_error", "success"]
    assert list(by_id.loc[[11, 12, 13], "laion_similarity"]) == [0.31, 0.29, 0.33]  # filter adds its own similarity
    assert list(by_id.loc[[11, 12, 13], "pwatermark"]) == [0.4, 0.5, 0.6]
    assert list(by_id.loc[[11, 12, 13], "laion_width"]) == [300, 1, 300]  # beside download's own width
    assert "URL" not in images.columns and "similarity" not in images.columns

    relaion = pd.DataFrame({"url": urls, "caption": ["x", "y", "z"], "punsafe": [0.0, 0.9, 0.5]})
    spark.createDataFrame(relaion).write.parquet(str(tmp_path / "relaion"))
    _, images = run_download(spark, tmp_path, str(tmp_path / "relaion"), "images_relaion")
    # no sample id in the table: computed as dedupe computes it, xxhash64(url, text) over all 64 bits
    want = {r["url"]: r["id"] for r in spark.createDataFrame(relaion.rename(columns={"caption": "text"}))
            .select("url", F.xxhash64("url", "text").alias("id")).collect()}
    assert dict(zip(images[S.URL], images[S.SAMPLE_ID], strict=True)) == want
    assert sorted(images[S.TEXT]) == ["x", "y", "z"] and "caption" not in images.columns
    with pytest.raises(Exception, match="download.url_col='link'"):
        run_download(spark, tmp_path, str(tmp_path / "relaion"), "images_bad", "download.url_col=link")
