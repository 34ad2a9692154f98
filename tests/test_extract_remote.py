"""open_uri against a real loopback HTTP server that fails (503, reset mid-body), and expand_inputs."""

from __future__ import annotations

import gzip
import io
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from laion_spark.extract.records import ArchiveRecord, RecordError, iter_archive
from laion_spark.extract.remote import expand_inputs, open_uri

N_PAGES = 40


def _warc_bytes() -> bytes:
    out = io.BytesIO()
    writer = WARCWriter(out, gzip=True)
    for i in range(N_PAGES):
        # incompressible-ish bodies so the file is large enough to be cut mid-stream
        body = (f"<html>{i}</html>".encode() + bytes((i * 7919 + k * 31) % 251 for k in range(8000)))
        http = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
        rec = writer.create_warc_record(
            f"http://example.com/{i}", "response", payload=io.BytesIO(body), http_headers=http
        )
        writer.write_record(rec)
    return out.getvalue()


WARC = _warc_bytes()


class _FlakyHandler(BaseHTTPRequestHandler):
    """503 twice, then a connection cut mid-body once, then proper answers (honouring Range)."""

    plan: list[str]
    log: list[str]

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        step = self.plan.pop(0) if self.plan else "ok"
        rng = self.headers.get("Range")
        self.log.append(f"{step} {rng}")
        if step == "503":
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = WARC[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(WARC) - 1}/{len(WARC)}")
        self.end_headers()
        if step == "reset":
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the peer goes away mid-body
            self.close_connection = True
            return
        self.wfile.write(body)


@contextmanager
def _server(plan: list[str]) -> Iterator[tuple[str, list[str]]]:
    log: list[str] = []
    handler = type("Handler", (_FlakyHandler,), {"plan": list(plan), "log": log})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/crawl.warc.gz", log
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_retries_and_resumes_every_record_once() -> None:
    with _server(["503", "503", "reset"]) as (url, log), open_uri(url, retries=5, backoff_s=0.01) as stream:
        items = list(iter_archive(stream, url))
    assert not [i for i in items if isinstance(i, RecordError)], items
    uris = [i.target_uri for i in items if isinstance(i, ArchiveRecord)]
    assert uris == [f"http://example.com/{i}" for i in range(N_PAGES)]
    assert log[:3] == ["503 None", "503 None", "reset None"]
    assert log[3].startswith("ok bytes=") and log[3] != "ok bytes=0-"  # resumed where it broke


def test_gives_up_with_clear_error() -> None:
    with (
        _server(["503", "503", "reset"]) as (url, _log),
        pytest.raises(OSError, match=r"giving up after 1 retries at byte 0: .*HTTP 503"),
    ):
        open_uri(url, retries=1, backoff_s=0.01, timeout_s=10)
    # failing mid-file (after the open succeeded): iter_archive ends with a RecordError, no raise
    with _server(["reset", "503", "503"]) as (url, _log), open_uri(url, retries=1, backoff_s=0.01) as stream:
        items = list(iter_archive(stream, url))
    errors = [i.error for i in items if isinstance(i, RecordError)]
    assert any("giving up after 1 retries" in e for e in errors), errors
    assert any(isinstance(i, ArchiveRecord) for i in items)


def test_local_paths_and_missing_file(tmp_path) -> None:
    path = tmp_path / "a.warc.gz"
    path.write_bytes(WARC)
    for uri in (str(path), path.as_uri()):
        with open_uri(uri) as stream:
            assert stream.read() == WARC
    with pytest.raises(FileNotFoundError):
        open_uri(str(tmp_path / "missing.warc.gz"), retries=3, backoff_s=0)


def test_expand_inputs(tmp_path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/1.warc.gz", "d/sub/2.warc.gz", "d/_SUCCESS", "g1.warc.gz", "g2.warc.gz", "other.txt"):
        (tmp_path / name).write_bytes(b"x")
    listing = tmp_path / "warc.paths.gz"
    listing.write_bytes(gzip.compress(b"crawl-data/CC-MAIN-2024-22/a.warc.gz\ncrawl-data/b.warc.gz\n\n"))
    (tmp_path / "more.paths").write_text("crawl-data/b.warc.gz\n")
    got = expand_inputs(
        [str(tmp_path / "d"), str(tmp_path / "g*.warc.gz"), str(listing), str(tmp_path / "more.paths"),
         str(tmp_path / "g1.warc.gz")],
        "s3://commoncrawl/",
    )
    assert got == sorted(
        [
            str(tmp_path / "d/1.warc.gz"),
            str(tmp_path / "d/sub/2.warc.gz"),
            str(tmp_path / "g1.warc.gz"),
            str(tmp_path / "g2.warc.gz"),
            "s3://commoncrawl/crawl-data/CC-MAIN-2024-22/a.warc.gz",
            "s3://commoncrawl/crawl-data/b.warc.gz",
        ]
    )
    # a URI keeps its protocol (file:// here; memory:// is any other fsspec filesystem)
    assert expand_inputs([f"file://{tmp_path}/g*.warc.gz"], "") == [
        (tmp_path / "g1.warc.gz").as_uri(), (tmp_path / "g2.warc.gz").as_uri()
    ]
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe({"/bucket/x/1.warc.gz": b"1", "/bucket/x/2.warc.gz": b"2"})
    found = expand_inputs(["memory://bucket/x/*.warc.gz"], "")
    assert [u.startswith("memory://") and u.endswith(f"/bucket/x/{i}.warc.gz") for i, u in enumerate(found, 1)] == [
        True, True
    ]
    assert [open_uri(u).read() for u in found] == [b"1", b"2"]
    assert expand_inputs(["https://data.commoncrawl.org/a.warc.gz"], "") == ["https://data.commoncrawl.org/a.warc.gz"]


# ---- Spark-style URIs (dbfs:/, /Volumes): the io.fsspec_uri mapping every later stage uses ----------


@pytest.fixture()
def dbfs(tmp_path, monkeypatch):
    """tmp_path/dbfs standing in for the /dbfs mount: the real io.fsspec_uri, then /dbfs/ relocated."""
    from laion_spark import io as lio
    from laion_spark.extract import job, remote

    root = tmp_path / "dbfs"
    calls: list[str] = []

    def stand_in(uri: str) -> str:
        calls.append(uri)
        mapped = lio.fsspec_uri(uri)
        return str(root) + mapped[len("/dbfs"):] if mapped.startswith("/dbfs/") else mapped

    for module in (remote, job):
        monkeypatch.setattr(module, "fsspec_uri", stand_in)
    (root / "crawl" / "sub").mkdir(parents=True)
    (root / "crawl" / "a.warc.gz").write_bytes(WARC)
    (root / "crawl" / "sub" / "b.warc.gz").write_bytes(b"b")
    (root / "crawl" / "_SUCCESS").write_bytes(b"")
    (root / "lists").mkdir()
    (root / "lists" / "warc.paths.gz").write_bytes(gzip.compress(b"crawl/a.warc.gz\n"))
    return root, calls


def test_dbfs_inputs_are_listed_and_opened_through_fsspec_uri(dbfs) -> None:
    root, calls = dbfs
    # a glob, a directory, a file and a paths listing, each given as dbfs:/ and listed as dbfs:/
    assert expand_inputs(["dbfs:/crawl/*.warc.gz"], "") == ["dbfs:/crawl/a.warc.gz"]
    assert expand_inputs(["dbfs:/crawl"], "") == ["dbfs:/crawl/a.warc.gz", "dbfs:/crawl/sub/b.warc.gz"]
    assert expand_inputs(["dbfs:///crawl/sub/b.warc.gz"], "") == ["dbfs:///crawl/sub/b.warc.gz"]
    assert expand_inputs(["dbfs:/lists/warc.paths.gz"], "dbfs:/") == ["dbfs:/crawl/a.warc.gz"]
    with open_uri("dbfs:/crawl/a.warc.gz") as stream:
        assert stream.read() == WARC
    assert {"dbfs:/crawl/*.warc.gz", "dbfs:/lists/warc.paths.gz", "dbfs:/crawl/a.warc.gz"} <= set(calls)


def test_dbfs_uri_is_the_source_uri_of_its_rows(dbfs) -> None:
    from laion_spark.config import ExtractConfig
    from laion_spark.extract.job import plan_tasks
    from laion_spark.extract.process import process_file

    rows = list(process_file("dbfs:/crawl/a.warc.gz", ExtractConfig()))
    assert {r.source_uri for r in rows} == {"dbfs:/crawl/a.warc.gz"}
    assert [r.kind for r in rows if r.kind == "error"] == []
    assert json.loads(rows[-1].counts)["records"] == N_PAGES
    # its size is known (a local file behind the mapping): 1 MB tasks group it with a small one
    assert plan_tasks(["dbfs:/crawl/a.warc.gz", "dbfs:/crawl/sub/b.warc.gz"], 1) == [
        (0, "dbfs:/crawl/a.warc.gz"), (0, "dbfs:/crawl/sub/b.warc.gz")]


def test_plain_path_file_uri_and_glob_open_the_same_bytes(tmp_path) -> None:
    path = tmp_path / "x" / "a.warc.gz"
    path.parent.mkdir()
    path.write_bytes(WARC)
    for given, listed in ((str(path), str(path)), (path.as_uri(), path.as_uri()),
                          (str(tmp_path / "x" / "*.gz"), str(path)), (f"file://{tmp_path}/x/*.gz", path.as_uri())):
        assert expand_inputs([given], "") == [listed]
        with open_uri(listed) as stream:
            assert stream.read() == WARC
