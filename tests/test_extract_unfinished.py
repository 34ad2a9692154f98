"""Files extract could not finish are counted as such, and extract.retry_from reruns just them.

One real job (the session's local Spark) over four files: a per-record gzip WARC on disk, a WARC
served by a loopback HTTP server that cuts every answer at the same byte (so the stream's retries
run out mid-file), a path that does not exist, and a WARC gzipped as one whole file. Then the
server serves the whole file, the missing one appears, the good file is overwritten with junk, and a
second job with extract.retry_from=<first output> must keep the good file's rows (not read it
again: it is junk now), and extract the other three afresh.

Whole-file gzip: no byte range holds one of its records past the first, so those candidates get a
null source_offset / source_length (counted and warned about), never an offset that fetches another
record.
"""

from __future__ import annotations

import gzip
import io
import json
import socket
import zlib

import pytest
from http_faults import FaultServer
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from laion_spark import cli
from laion_spark.config import ExtractConfig
from laion_spark.extract import job
from laion_spark.extract.process import FILE_FAILED, FILE_INCOMPLETE, process_file


def _page(i: int) -> bytes:
    # incompressible-ish filler so that the file is long enough to be cut in the middle
    filler = bytes((i * 7919 + k * 31) % 251 for k in range(6000)).hex()
    return (f'<html><body><img src="/img/{i}.jpg" alt="The picture number {i} of this page">'
            f"<!-- {filler} --></body></html>").encode()


def warc_bytes(host: str, n: int, gz: bool = True) -> bytes:
    out = io.BytesIO()
    writer = WARCWriter(out, gzip=gz)
    for i in range(n):
        http = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
        writer.write_record(writer.create_warc_record(f"http://{host}/p{i}", "response",
                                                      payload=io.BytesIO(_page(i)), http_headers=http))
    return out.getvalue()


def _serve(data: bytes, state: dict):
    """A handler: the file from the Range start, cut at state['cut'] (absolute) while it is set."""
    def handle(h) -> None:
        rng = h.headers.get("Range")
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        h.send_response(206 if rng else 200)
        h.send_header("Content-Length", str(len(data) - start))
        if rng:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        cut = state.get("cut")
        h.write_body(data[start:cut] if cut is not None and cut > start else data[start:] if cut is None else b"")
        if cut is not None:  # the server goes away with the body unfinished, on every attempt
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_WR)
    return handle


@pytest.fixture()
def crawl(tmp_path):
    served = warc_bytes("served.example", 30)
    state = {"cut": len(served) // 2}
    with FaultServer("127.0.0.1") as srv:
        srv.add_handler("/served.warc.gz", _serve(served, state))
        good = tmp_path / "good.warc.gz"
        good.write_bytes(warc_bytes("good.example", 3))
        whole = tmp_path / "whole.warc.gz"
        whole.write_bytes(gzip.compress(warc_bytes("whole.example", 3, gz=False)))
        missing = tmp_path / "later.warc.gz"
        yield {"good": str(good), "whole": str(whole), "missing": str(missing),
               "served": srv.url("/served.warc.gz"), "state": state, "tmp": tmp_path}


def _run(spark, inputs: list[str], output, *extra: str) -> dict:
    cfg, module = cli.prepare("extract", [], [f"input={','.join(inputs)}", f"output={output}",
                                              "extract.retries=1", "extract.retry_backoff_s=0", *extra])
    return cli.run("extract", cfg, module, spark=spark)


def test_unfinished_files_are_counted_and_retry_from_reruns_only_them(spark, crawl) -> None:
    c = crawl
    inputs = [c["good"], c["whole"], c["missing"], c["served"]]
    first = c["tmp"] / "first"
    summary = _run(spark, inputs, first)

    assert summary["files"] == 4 and summary["files_failed"] == 1 and summary["files_incomplete"] == 1
    listed = {f["source_uri"]: f for f in summary["unfinished_files"]}
    assert set(listed) == {c["missing"], c["served"]}
    assert listed[c["missing"]]["status"] == "failed" and listed[c["missing"]]["reason"].startswith(
        FILE_FAILED + "cannot open: FileNotFoundError")
    assert listed[c["served"]]["status"] == "incomplete"
    assert listed[c["served"]]["reason"].startswith(FILE_INCOMPLETE + "I/O error while reading")
    assert "giving up after 1 retries" in listed[c["served"]]["reason"]
    assert any("extract.retry_from" in w for w in summary["warnings"])
    marker = json.loads((first / "_summary.json").read_text())
    assert marker["files_incomplete"] == 1 and marker["unfinished_files"] == summary["unfinished_files"]
    errors = spark.read.parquet(str(first) + "_errors").collect()
    assert [e.error for e in errors if e.source_uri == c["served"] and e.error.startswith(FILE_INCOMPLETE)] == [
        listed[c["served"]]["reason"]]
    rows = spark.read.parquet(str(first)).collect()
    by_file = {u: sorted(r.url for r in rows if r.source_uri == u) for u in inputs}
    assert len(by_file[c["good"]]) == 3 and len(by_file[c["whole"]]) == 3 and by_file[c["missing"]] == []
    assert 0 < len(by_file[c["served"]]) < 30  # the pages before the cut are kept

    # whole-file gzip: the first record's range is usable, the others have no range of their own
    whole = sorted((r for r in rows if r.source_uri == c["whole"]), key=lambda r: r.page_url)
    assert [(r.source_offset, r.source_length is None) for r in whole] == [(0, False), (None, True), (None, True)]
    with open(c["whole"], "rb") as fh:
        data = fh.read()
    head = zlib.decompressobj(31).decompress(data[: whole[0].source_length])
    assert head.startswith(b"WARC/1.0") and b"WARC-Target-URI: http://whole.example/p0" in head
    assert summary["candidates_without_offset"] == 2 and any("recompress" in w for w in summary["warnings"])

    # the check the job made before its marker: counts that disagree with the rows written fail it
    cfg, _ = cli.prepare("extract", [], [f"input={c['good']}", f"output={first}", "mode=overwrite"])
    job.check_written(spark, cfg, summary, inputs)
    for key, value in (("candidates", summary["candidates"] + 1), ("error_rows", 0), ("files", 5)):
        with pytest.raises(job.ExtractAccountingError, match="row accounting failed"):
            job.check_written(spark, cfg, {**summary, key: value}, inputs)
    with pytest.raises(job.ExtractAccountingError, match="1 missing"):
        job.check_written(spark, cfg, summary, [*inputs, "/an/input/without/its/row.warc.gz"])
    # one row of counts per input file, beside the table (what retry_from reads)
    counts = dict(job.read_file_counts(job.files_uri(str(first))))
    assert sorted(counts) == sorted(inputs) and counts[c["served"]]["files_incomplete"] == 1
    assert counts[c["missing"]]["files_failed"] == 1 and job.unfinished(counts[c["good"]]) is None

    # the server is whole again, the missing file appears, the good file is junk now: retry_from
    # re-reads the first two, and keeps what the first run read from the good one
    c["state"]["cut"] = None
    with open(c["missing"], "wb") as fh:
        fh.write(warc_bytes("later.example", 2))
    good_rows = sorted((r.url, r.text, r.source_offset, r.source_length) for r in rows if r.source_uri == c["good"])
    whole_rows = sorted((r.url, r.source_offset) for r in rows if r.source_uri == c["whole"])
    with open(c["good"], "wb") as fh:
        fh.write(b"not a web archive any more\n" * 100)
    second = c["tmp"] / "second"
    again = _run(spark, inputs, second, f"extract.retry_from={first}")
    assert again["files"] == 4 and again["files_reused"] == 2 and again["files_extracted"] == 2
    assert again["files_failed"] == 0 and again["files_incomplete"] == 0 and again["unfinished_files"] == []
    assert again["error_rows"] == 0 and again["candidates"] == 3 + 3 + 2 + 30
    rows = spark.read.parquet(str(second)).collect()
    assert sorted((r.url, r.text, r.source_offset, r.source_length) for r in rows
                  if r.source_uri == c["good"]) == good_rows
    assert sorted((r.url, r.source_offset) for r in rows if r.source_uri == c["whole"]) == whole_rows
    assert sorted(r.url for r in rows if r.source_uri == c["served"]) == sorted(
        f"http://served.example/img/{i}.jpg" for i in range(30))
    assert spark.read.parquet(str(second) + "_errors").count() == 0
    # the reused files keep their counts: the summary is the sum over all four files
    assert again["counts"]["candidates_without_offset"] == 2 and again["html_pages"] == 38


def test_whole_file_gzip_candidates_have_no_offset_but_their_first_record(tmp_path) -> None:
    plain = warc_bytes("whole.example", 3, gz=False)
    files = {"whole": gzip.compress(plain), "per_record": warc_bytes("whole.example", 3), "plain": plain}
    got = {}
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        rows = list(process_file(str(path), ExtractConfig()))
        got[name] = [r.source_offset for r in rows if r.kind == "candidate"]
        assert json.loads(rows[-1].counts).get("candidates_without_offset", 0) == (2 if name == "whole" else 0)
    assert got["whole"] == [0, None, None]
    assert None not in got["per_record"] and len(set(got["per_record"])) == 3
    assert None not in got["plain"] and len(set(got["plain"])) == 3
