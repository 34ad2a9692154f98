"""Corpora WARC/ARC files -> MB/s (compressed input) of warcio, fastwarc and laion_spark's iter_archive.

Run: .venv/bin/python bench/readers.py [--repeat 3] [--corpora DIR]
Every reader reads every record's full block (what extract needs). A reader that fails on a file
still counts the file's bytes and time (it stopped early), and its failures are listed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from pathlib import Path

from laion_spark.extract.records import ArchiveRecord, iter_archive

DEFAULT_CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora" / "warc"


def read_warcio(data: bytes) -> int:
    from warcio.archiveiterator import ArchiveIterator

    n = 0
    with contextlib.redirect_stderr(io.StringIO()):  # warcio prints a warning per odd record
        for rec in ArchiveIterator(io.BytesIO(data), arc2warc=True):
            rec.raw_stream.read()
            n += 1
    return n


def read_fastwarc(data: bytes) -> int:
    from fastwarc.warc import ArchiveIterator

    n = 0
    for rec in ArchiveIterator(io.BytesIO(data), parse_http=False):
        rec.reader.read()
        n += 1
    return n


def read_ours(data: bytes) -> int:
    n = 0
    for item in iter_archive(io.BytesIO(data), "bench"):
        n += isinstance(item, ArchiveRecord)
    return n


READERS = {"warcio": read_warcio, "fastwarc": read_fastwarc, "laion_spark": read_ours}


def bench(files: list[Path], repeat: int) -> None:
    blobs = [(p, p.read_bytes()) for p in files]
    total = sum(len(b) for _, b in blobs)
    per_record_gz = [(p, b) for p, b in blobs if p.name.endswith(".warc.gz")]
    print(f"{len(blobs)} files, {total / 1e6:.2f} MB compressed; x{repeat}")
    for name, fn in READERS.items():
        for label, subset in (("all files", blobs), ("*.warc.gz only", per_record_gz)):
            size = sum(len(b) for _, b in subset) * repeat
            failures: set[str] = set()
            records = 0
            t0 = time.perf_counter()
            for _ in range(repeat):
                for path, blob in subset:
                    try:
                        records += fn(blob)
                    except Exception as exc:  # noqa: BLE001  (a benchmark lists failures, it does not stop)
                        failures.add(f"{path.parent.name}/{path.name}: {type(exc).__name__}")
            dt = time.perf_counter() - t0
            print(
                f"{name:12s} {label:15s} {size / dt / 1e6:8.1f} MB/s  "
                f"{records // repeat:6d} records/pass  {len(failures)} files raised"
            )
            if failures and label == "all files":
                for f in sorted(failures):
                    print(f"    raised: {f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    args = parser.parse_args()
    files = sorted(p for p in args.corpora.rglob("*") if p.is_file() and p.suffix != ".tsv")
    bench(files, args.repeat)


if __name__ == "__main__":
    main()
