"""extract's memory is bounded by its settings, never by the input: a WARC of a few MB whose records
inflate to hundreds of MiB each is read by the real job with every process of it sampled.

The file is written here: gzip members of zeros and repeats (deflate shrinks them ~1000:1), built
from one compressed MiB repeated after a full flush, so writing it costs no compression of the
whole. Records: a 256 MiB resource, a 128 MiB video/mp4 response, a 64 MiB text/html page whose
only <img> comes after extract.max_html_bytes, then a small page with one candidate (the issue's
file had 1.5 GiB, 600 MiB and 300 MiB: the same shape, scaled down for CI's time). A reader that
holds each block whole (in its buffer, then copied into the record) grew one Python worker by about
three times the largest block: +1,600 MiB with a 512 MiB resource, measured on the old reader. One
that drains what it does not parse stays near its settings (the HTML cap, 8 MiB by default, plus
fixed buffers of a few MiB): +101 MiB for a fresh worker, its imports included.

The peak RSS of every process under the test's own (the JVM and the Python daemon and workers it
forks; /usr/bin/time would see the first process only) is sampled from /proc while the job runs.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest

from laion_spark import cli
from laion_spark.config import ExtractConfig
from laion_spark.extract.records import ArchiveRecord, RecordError, iter_archive
from tests.processes import RssSampler

MIB = 1 << 20
RESOURCE_MIB, VIDEO_MIB, HTML_MIB = 256, 128, 64
# what one Python worker may grow by while it reads the file: the HTML cap (8 MiB, copied a few
# times on its way to the parser) and the reader's fixed buffers, with room for the imports a new
# worker makes; reading a block whole needs about 3 x 256 MiB
WORKER_GROWTH_BOUND = 256 * MIB

END_IMG = b'<img src="/past-the-cap.jpg" alt="an image after max_html_bytes, never read">'
SMALL_PAGE = b'<html><body><img src="/small.jpg" alt="the one small page after the big records"></body></html>'


def _warc_head(rtype: str, uri: str, length: int, content_type: str) -> bytes:
    return (f"WARC/1.0\r\nWARC-Type: {rtype}\r\nWARC-Target-URI: {uri}\r\nWARC-Date: 2024-05-18T01:02:03Z\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n").encode()


def _member(prefix: bytes, fill: bytes, mib: int, suffix: bytes) -> bytes:
    """One gzip member of prefix + mib MiB of `fill` repeated + suffix, without deflating the MiBs."""
    chunk = (fill * (MIB // len(fill) + 1))[:MIB]
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = comp.compress(prefix) + comp.flush(zlib.Z_FULL_FLUSH)
    # after a full flush the compressor starts afresh: the same MiB compresses to the same bytes
    piece = comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = comp.compress(suffix) + comp.flush()
    crc = zlib.crc32(prefix)
    for _ in range(mib):
        crc = zlib.crc32(chunk, crc)
    crc = zlib.crc32(suffix, crc)
    size = len(prefix) + mib * MIB + len(suffix)
    gz_header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    return gz_header + head + piece * mib + tail + struct.pack("<II", crc, size & 0xFFFFFFFF)


def _record(rtype: str, uri: str, content_type: str, block_prefix: bytes, fill: bytes, mib: int,
            block_suffix: bytes = b"") -> bytes:
    length = len(block_prefix) + mib * MIB + len(block_suffix)
    return _member(_warc_head(rtype, uri, length, content_type) + block_prefix, fill, mib,
                   block_suffix + b"\r\n\r\n")


def _http(content_type: str, length: int) -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n".encode()


def write_big_warc(path: Path) -> Path:
    """The file of the module docstring (about 1 MB per 1,000 MiB of blocks)."""
    html_open = b"<html><body>"
    html_close = END_IMG + b"</body></html>"
    small = _http("text/html", len(SMALL_PAGE)) + SMALL_PAGE
    members = [
        _record("resource", "http://big.example/archive.bin", "application/octet-stream", b"", b"\0", RESOURCE_MIB),
        _record("response", "http://big.example/film.mp4", "application/http; msgtype=response",
                _http("video/mp4", VIDEO_MIB * MIB), b"\0", VIDEO_MIB),
        _record("response", "http://big.example/page.html", "application/http; msgtype=response",
                _http("text/html", len(html_open) + HTML_MIB * MIB + len(html_close)) + html_open,
                b"<p>all work and no play</p>\n", HTML_MIB, html_close),
        _member(_warc_head("response", "http://big.example/small.html", len(small),
                           "application/http; msgtype=response") + small, b"\0", 0, b"\r\n\r\n"),
    ]
    path.write_bytes(b"".join(members))
    return path


@pytest.fixture(scope="module")
def big_warc(tmp_path_factory) -> Path:
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to sample the RSS of Spark's processes")
    return write_big_warc(tmp_path_factory.mktemp("big") / "huge-blocks.warc.gz")


def test_the_file_is_small_and_its_blocks_are_huge(big_warc) -> None:
    assert big_warc.stat().st_size < 4 * MIB
    records = [r for r in iter_archive(big_warc.open("rb"), "big", block_limit=lambda *_: 0)
               if isinstance(r, ArchiveRecord)]
    assert [r.block_length for r in records][:2] == [
        RESOURCE_MIB * MIB, len(_http("video/mp4", VIDEO_MIB * MIB)) + VIDEO_MIB * MIB]
    assert records[2].block_length > HTML_MIB * MIB
    assert all(r.block == b"" for r in records)


def test_extract_job_memory_is_bounded_by_its_settings(spark, big_warc, tmp_path) -> None:
    output = tmp_path / "candidates"
    cfg, module = cli.prepare("extract", [], [f"input={big_warc}", f"output={output}"])
    with RssSampler(os.getpid()) as sampler:
        summary = cli.run("extract", cfg, module, spark)
    growth = {pid: (peak - first, peak, cmd) for pid, (first, peak, cmd) in sampler.seen.items() if pid != os.getpid()}
    report = "\n".join(f"  pid {pid}: +{g / MIB:.0f} MiB (peak {p / MIB:.0f} MiB) {cmd}"
                       for pid, (g, p, cmd) in sorted(growth.items()))
    python = {pid: v for pid, v in growth.items() if "java" not in v[2].split(" ", 1)[0]}
    assert python, f"no Python worker was seen:\n{report}"
    worst = max(g for g, _, _ in python.values())
    assert worst < WORKER_GROWTH_BOUND, f"a Python worker grew by {worst / MIB:.0f} MiB:\n{report}"
    # the job itself is right: the small page after the big records gives its one candidate, the
    # page larger than max_html_bytes none (its only <img> lies past the cap)
    assert summary["files"] == 1 and summary["records"] == 4 and summary["html_pages"] == 2
    assert summary["candidates"] == 1 and summary["error_rows"] == 0, summary
    rows = spark.read.parquet(str(output)).collect()
    assert [(r.url, r.page_url) for r in rows] == [("http://big.example/small.jpg", "http://big.example/small.html")]
    assert ExtractConfig().max_html_bytes < HTML_MIB * MIB


def test_reader_drains_what_it_does_not_keep(big_warc) -> None:
    """iter_archive with a block_limit: each block is cut to what the limit keeps, the records after
    a drained one are read with their offsets, and Python's own allocations stay bounded."""
    import tracemalloc

    keep = {"resource": 0, "response": 100}
    tracemalloc.start()
    try:
        items = list(iter_archive(big_warc.open("rb"), "big", block_limit=lambda rtype, ctype, head: keep[rtype]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not [i for i in items if isinstance(i, RecordError)]
    assert [len(r.block) for r in items] == [0, 100, 100, 100]
    assert items[3].block == (_http("text/html", len(SMALL_PAGE)) + SMALL_PAGE)[:100]
    assert peak < 32 * MIB, f"{peak / MIB:.0f} MiB traced"
    data = big_warc.read_bytes()
    for rec in items:  # each record's byte range is exactly its own gzip member
        assert zlib.decompressobj(31).decompress(data[rec.offset : rec.offset + rec.length], 64).startswith(b"WARC/1.0")
    assert items[-1].offset + items[-1].length == len(data)
