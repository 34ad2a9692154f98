"""Seeded fuzz: damaged variants of real corpus archives never make extract raise, and a job over all of
them accounts for every file.

Variants of small real files from ../shared/corpora (WARC, ARC, WAT; plain and gzip): random
truncations, byte flips, and header values replaced by extreme ones (dates pandas cannot hold,
lengths that are no lengths, content-codings on bodies that have none, lone surrogates in WAT
JSON and in HTML alt text). The row logic (process_file, what Spark maps over a file) must yield,
for every variant, rows that Arrow can encode and one stats row whose counts match the rows; the
Spark job over the whole set must then complete and give, per file, exactly those rows.
"""

from __future__ import annotations

import json
import random
import re
import signal
import zlib
from collections import Counter
from pathlib import Path

import pytest
from corpora import require
from wat_fixtures import warc_to_wat

from laion_spark import cli
from laion_spark import schemas as S
from laion_spark.config import ExtractConfig
from laion_spark.extract import job
from laion_spark.extract.process import CRAWL_TIME_MAX, CRAWL_TIME_MIN, FILE_FAILED, FILE_INCOMPLETE, process_file
from laion_spark.extract.transform import _rows_to_batch

SEED = 20240518
N_VARIANTS = 300
PER_FILE_TIMEOUT_S = 20  # a variant that takes longer is a hang (e.g. a parser loop that never advances)

# small real files with HTML pages, odd framing, encodings and formats (sizes 0.5-60 KB)
SOURCES = (
    "commoncrawl-whirlwind/whirlwind.warc.gz", "commoncrawl-whirlwind/whirlwind.warc.wat.gz",
    "jwarc/cc.warc.gz", "resiliparse/clipped.warc.gz", "resiliparse/block-sized-records.warc.gz",
    "warcio/example.warc", "warcio/example.warc.gz", "warcio/example-iana.org-chunked.warc",
    "warcio/example.arc", "warcio/example.arc.gz", "warcio/example-wrong-chunks.warc.gz",
    "ukwa-webarchive-discovery/transfer_compression_gzip.warc.gz",
    "ukwa-webarchive-discovery/transfer_compression_brotli.warc.gz",
    "ukwa-webarchive-discovery/truncated_datetime.warc", "ipwb/salam-home.warc",
    "ipwb/baconIpsum_chunked_httpTrailors.warc", "ia-web-commons/link-extraction-test.warc",
    "pywb/example-extra.warc", "webarchive-commons/cz-pagesinczech.arc.gz",
    "warcat/bad_http_chunked_content.warc", "aut/issue-514.warc", "cc_net/sample.warc.txt",
)

DATES = [b"9999-12-31T23:59:59Z", b"0001-01-01T00:00:00Z", b"0001-01-01T00:30:00+01:00",
         b"9999-12-31T23:00:00-05:00", b"2262-04-12T00:00:00Z", b"1677-09-21T00:00:00Z",
         b"99991231235959", b"00000000000000", b"2024-13-45T25:61:61Z", b"", b"\xff\xfe"]
LENGTHS = [b"0", b"1", b"-1", b"+5", b"1_0", b"9" * 19, b"9" * 5000, b"18446744073709551616",
           b"2147483648", b"0x10", b""]
CODINGS = [b"gzip", b"deflate", b"br", b"gzip, br", b"x-gzip, deflate", b"identity", b"compress"]
ALT_POISON = [b"\xed\xa0\x80 lone surrogate bytes ", b"&#xD800;&#0;&#x110000; refs ", b"\x00\x00 nul ",
              b"\xff\xfe\xfd not utf-8 "]
JSON_POISON = [b"\\ud800", b"\\udfff\\ud800", b"\\u0000"]


def _gunzip_members(data: bytes) -> bytes | None:
    """Every gzip member of data, decompressed and joined; None if it is not gzip."""
    if not data.startswith(b"\x1f\x8b"):
        return None
    out = []
    while data:
        d = zlib.decompressobj(31)
        try:
            out.append(d.decompress(data))
        except zlib.error:
            break
        if not d.eof:
            break
        data = d.unused_data.lstrip(b"\x00")
    return b"".join(out)


_HTTP_STATUS_LINE = rb"(HTTP/1\.[01] \d{3}[^\r\n]*\r?\n)"
# kind -> (pattern whose group 1 is replaced, replacement values or a function of the match)
_MUTATIONS = {
    "date": (rb"WARC-Date: ?([^\r\n]*)", DATES),
    "length": (rb"(?i)Content-Length: ?(\d+)", LENGTHS),
    "coding": (_HTTP_STATUS_LINE, [b"Content-Encoding: " + c + b"\r\n" for c in CODINGS]),
    "chunked": (_HTTP_STATUS_LINE, [b"Transfer-Encoding: chunked\r\n"]),
    "alt": (rb"(?i)alt=[\"']()", ALT_POISON),
    "json": (rb"\"(?:alt|url|WARC-Target-URI)\"\s*:\s*\"()", JSON_POISON),
}


def _mutate_headers(rng: random.Random, plain: bytes) -> bytes:
    """One header-value mutation, among those that apply to this file (a WAT gets JSON ones)."""
    kinds = [k for k, (pattern, _) in _MUTATIONS.items() if re.search(pattern, plain)]
    if not kinds:
        return plain
    pattern, values = _MUTATIONS[rng.choice(kinds)]
    matches = list(re.finditer(pattern, plain))
    # one match, or (half the time) every match: a single odd record among many is the common
    # case, a whole file of them makes sure the odd value reaches a candidate
    chosen = matches if rng.random() < 0.5 else [rng.choice(matches)]
    for m in reversed(chosen):
        value = rng.choice(values)
        if pattern is _HTTP_STATUS_LINE:  # insert a header after the status line
            value = m.group(1) + value
        plain = plain[: m.start(1)] + value + plain[m.end(1):]
    return plain


def _variant(rng: random.Random, data: bytes) -> bytes:
    ops = rng.choice([["truncate"], ["flip"], ["header"], ["header"], ["header", "flip"], ["header", "truncate"],
                      ["flip", "truncate"]])
    if "header" in ops:
        plain = _gunzip_members(data)
        was_gzip = plain is not None
        data = _mutate_headers(rng, plain if was_gzip else data)
        for _ in range(rng.randrange(3)):
            data = _mutate_headers(rng, data)
        if was_gzip and rng.random() < 0.5:
            data = zlib.compress(data, 6, wbits=31)  # one member for the whole file
    if "flip" in ops and data:
        buf = bytearray(data)
        for _ in range(rng.choice([1, 2, 8, 64])):
            buf[rng.randrange(len(buf))] ^= rng.randrange(1, 256)
        data = bytes(buf)
    if "truncate" in ops and data:
        data = data[: rng.randrange(len(data))]
    return data


@pytest.fixture(scope="module")
def fuzz_files(tmp_path_factory) -> list[Path]:
    root = require("warc")
    out = tmp_path_factory.mktemp("fuzz")
    # a WAT with HTML-Metadata and IMG links (the real whirlwind WAT has none): the JSON path too
    warc_to_wat(root / "commoncrawl-whirlwind/whirlwind.warc.gz", out / "links.warc.wat.gz")
    originals = [(name, (root / name).read_bytes()) for name in SOURCES]
    originals.append(("links.warc.wat.gz", (out / "links.warc.wat.gz").read_bytes()))
    (out / "links.warc.wat.gz").unlink()
    crawl = out / "crawl"
    crawl.mkdir()
    rng = random.Random(SEED)
    files = []
    for i in range(N_VARIANTS):
        name, data = originals[i % len(originals)]
        path = crawl / f"v{i:03d}-{name.replace('/', '-')}"
        path.write_bytes(_variant(rng, data))
        files.append(path)
    return files


def _alarm(signum, frame):
    raise TimeoutError(f"a variant took over {PER_FILE_TIMEOUT_S}s")


@pytest.fixture(scope="module")
def row_results(fuzz_files) -> dict[str, list]:
    """process_file over every variant: {path: rows} or {path: the exception it raised}."""
    results: dict[str, object] = {}
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for path in fuzz_files:
            signal.alarm(PER_FILE_TIMEOUT_S)
            try:
                results[str(path)] = list(process_file(str(path), ExtractConfig()))
            except BaseException as exc:  # noqa: BLE001  (reported by the test, with the file)
                results[str(path)] = exc
            finally:
                signal.alarm(0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    return results


@pytest.mark.slow
def test_row_logic_never_raises_and_counts_its_rows(row_results) -> None:
    raised = {p: repr(r) for p, r in row_results.items() if isinstance(r, BaseException)}
    assert not raised, raised
    kinds: Counter = Counter()
    for path, rows in row_results.items():
        assert [r.kind for r in rows].count("stats") == 1 and rows[-1].kind == "stats", path
        counts = json.loads(rows[-1].counts)
        by_kind = Counter(r.kind for r in rows)
        assert counts.get("candidates", 0) == by_kind["candidate"], path
        assert counts.get("record_errors", 0) == by_kind["error"], path
        assert {r.source_uri for r in rows} == {path}
        # a whole-file failure after the open is a reader or guard bug, never the input's doing
        whole = [r.error for r in rows if r.kind == "error" and r.error.startswith((FILE_FAILED, FILE_INCOMPLETE))]
        assert not whole, (path, whole)
        for r in rows:
            assert r.crawl_time is None or CRAWL_TIME_MIN <= r.crawl_time <= CRAWL_TIME_MAX, (path, r)
        # what the UDF does with a batch: rows -> Arrow (strings must be UTF-8-encodable, times in range)
        _rows_to_batch(rows)
        kinds.update(by_kind)
    # the fuzz reaches both outcomes: damaged files still give candidates, and errors are rows
    assert kinds["candidate"] > 100 and kinds["error"] > 100, kinds


@pytest.mark.slow
def test_job_over_every_variant_accounts_for_every_file(spark, fuzz_files, row_results, tmp_path) -> None:
    out = tmp_path / "candidates"
    crawl = fuzz_files[0].parent
    cfg, module = cli.prepare("extract", [], [f"input={crawl}", f"output={out}", "extract.task_mb=1"])
    summary = cli.run("extract", cfg, module, spark=spark)
    assert summary["files"] == N_VARIANTS

    def per_file(rows) -> Counter:
        return Counter((r[S.SOURCE_URI], r[S.URL], r[S.TEXT], r[S.PAGE_URL]) for r in rows)

    expected_candidates = per_file(vars(r) for rows in row_results.values() for r in rows if r.kind == "candidate")
    got = spark.read.parquet(str(out)).select(S.SOURCE_URI, S.URL, S.TEXT, S.PAGE_URL).collect()
    assert per_file(r.asDict() for r in got) == expected_candidates
    expected_errors = Counter(r.source_uri for rows in row_results.values() for r in rows if r.kind == "error")
    errors = spark.read.parquet(job.errors_uri(cfg)).select(S.SOURCE_URI).collect()
    assert Counter(r[S.SOURCE_URI] for r in errors) == expected_errors
    assert summary["candidates"] == len(got) and summary["error_rows"] == len(errors)
