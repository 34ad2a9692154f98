"""Corpora WARC/ARC files -> MB/s (compressed input) of warcio, fastwarc and laion_spark's iter_archive.

Run: .venv/bin/python bench/readers.py [--repeat 3] [--corpora DIR]
     .venv/bin/python bench/readers.py --agree   (could fastwarc be extract's fast path? see agreement())
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


def _ours_records(data: bytes) -> tuple[list[tuple], int]:
    recs, errors = [], 0
    for item in iter_archive(io.BytesIO(data), "bench"):
        if isinstance(item, ArchiveRecord):
            recs.append((item.offset, item.record_type, item.target_uri, item.block))
        else:
            errors += 1
    return recs, errors


def _fastwarc_records(data: bytes) -> list[tuple]:
    from fastwarc.warc import ArchiveIterator

    from laion_spark.extract.records import _clean_uri

    out = []
    for rec in ArchiveIterator(io.BytesIO(data), parse_http=False):
        uri = rec.headers.get("WARC-Target-URI")
        out.append((rec.stream_pos, rec.headers.get("WARC-Type", "").lower() or "unknown",
                    _clean_uri(uri) if uri is not None else None, rec.reader.read()))
    return out


def agreement(corpora: Path) -> None:
    """Every gzip file of the corpora and of the suite's 300 seeded fuzz variants -> printed: how often
    fastwarc gives the records our reader gives (offset, type, URI, block), and how it differs.

    A fast path must hand a file to our reader wherever fastwarc's records would differ. It can do so
    when fastwarc raises; it cannot when fastwarc yields other records (or the same records without a
    word about damage our reader reports) without raising: those are the outcomes counted as silent.
    """
    import random
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import test_extract_fuzz as fuzz  # the suite's seeded variants, built the same way

    cases = [(str(p.relative_to(corpora)), p.read_bytes()) for p in sorted(corpora.rglob("*.gz"))]
    rng = random.Random(fuzz.SEED)
    originals = [(n, (corpora / n).read_bytes()) for n in fuzz.SOURCES]
    for i in range(fuzz.N_VARIANTS):
        name, data = originals[i % len(originals)]
        cases.append((f"fuzz v{i:03d} of {name}", fuzz._variant(rng, data)))
    outcomes: dict[tuple[str, str], list[str]] = {}
    for name, data in cases:
        if not data.startswith(b"\x1f\x8b"):
            continue
        recs, errors = _ours_records(data)
        try:
            theirs = _fastwarc_records(data)
            outcome = "same records" if theirs == recs else "OTHER RECORDS, silently"
            if errors and theirs == recs:
                outcome = "same records, damage unreported (silent)"
        except Exception:  # noqa: BLE001  (counted: a fast path would fall back here)
            outcome = "raised (a fast path could fall back)"
        outcomes.setdefault(("damaged" if errors else "clean", outcome), []).append(name)
    n = sum(len(v) for v in outcomes.values())
    print(f"{n} gzip files (corpora + fuzz variants); our reader's verdict, then fastwarc's outcome:")
    for (verdict, outcome), names in sorted(outcomes.items()):
        print(f"  {verdict:8s} {outcome:42s} {len(names):4d}   e.g. {', '.join(names[:3])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    parser.add_argument("--agree", action="store_true", help="fastwarc's records against ours, not speed")
    args = parser.parse_args()
    if args.agree:
        agreement(args.corpora)
        return
    files = sorted(p for p in args.corpora.rglob("*") if p.is_file() and p.suffix != ".tsv")
    bench(files, args.repeat)


if __name__ == "__main__":
    main()
