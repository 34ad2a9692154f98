"""HTML pages -> MB/s of three HTML5/HTML parsers doing extract's job (every <img> with src + alt).

INPUT  -> the HTML pages of ../shared/corpora/html (91 real pages, 8.8 MB) and the HTML payloads
          of ../shared/corpora/warc (read with laion_spark's reader)
OUTPUT -> printed MB/s (of HTML bytes) for selectolax/lexbor (laion_spark.extract.html.parse_page,
          decoding included), lxml.html (libxml2) and html5lib (pure Python, the reference parser)

Run: .venv/bin/python bench/parsers.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


def pages() -> list[tuple[bytes, str | None]]:
    from laion_spark.extract.http import parse_http_response
    from laion_spark.extract.records import ArchiveRecord, iter_archive

    out = [(p.read_bytes(), None) for p in sorted((CORPORA / "html").rglob("*.html"))]
    for path in sorted((CORPORA / "warc").rglob("*")):
        if not path.is_file() or path.name.endswith(".tsv"):
            continue
        with path.open("rb") as fh:
            for rec in iter_archive(fh, str(path), want_types={"response"}):
                if isinstance(rec, ArchiveRecord) and rec.block.startswith(b"HTTP/"):
                    resp = parse_http_response(rec.block)
                    ctype = resp.headers.get("content-type", "")
                    if "html" in ctype.lower():
                        out.append((resp.body, ctype))
    return out


def lexbor(body: bytes, ctype: str | None) -> int:
    from laion_spark.extract.html import parse_page

    return len(parse_page(body, ctype, "http://example.com/").images)


def lxml_html(body: bytes, ctype: str | None) -> int:
    import lxml.html

    try:
        doc = lxml.html.document_fromstring(body)
    except Exception:  # noqa: BLE001 - empty or undecodable documents count as no images
        return 0
    return sum(1 for img in doc.iter("img") if img.get("src") and (img.get("alt") or "").strip())


def html5lib_parse(body: bytes, ctype: str | None) -> int:
    import html5lib

    doc = html5lib.parse(body, treebuilder="etree", namespaceHTMLElements=False)
    return sum(1 for img in doc.iter("img") if img.get("src") and (img.get("alt") or "").strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not CORPORA.is_dir():
        print(f"skipped: {CORPORA} not found")
        return 0
    docs = pages()
    size = sum(len(b) for b, _ in docs) / 1e6
    print(f"{len(docs)} HTML pages, {size:.1f} MB")
    for name, fn, repeat in (("selectolax/lexbor (parse_page)", lexbor, args.repeat),
                             ("lxml.html (libxml2)", lxml_html, args.repeat),
                             ("html5lib (pure Python)", html5lib_parse, 1)):
        best, images = float("inf"), 0
        for _ in range(repeat):
            started = time.perf_counter()
            images = sum(fn(b, c) for b, c in docs)
            best = min(best, time.perf_counter() - started)
        print(f"{name:32s} {size / best:7.1f} MB/s  ({images} img with src+alt)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
