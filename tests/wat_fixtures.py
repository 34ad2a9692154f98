"""Test helper: the WAT twin of a WARC file, built by an HTML parser independent of extract's.

INPUT  -> a WARC path (or URI) and the WAT path to write
OUTPUT -> `warc_to_wat`: a WAT file with one Common Crawl-style metadata record (JSON envelope,
          HTML-Metadata with Head.Base and IMG@/src links with their alt) per response record

The writer is `laion_spark.demo.wat` (the demo ships a WAT file too, and the product never imports
tests/); it parses with the standard library's html.parser, while extract's WARC path parses with lexbor (selectolax),
so comparing extract's output on a WARC and on its WAT compares two independent parsers.
"""

from __future__ import annotations

from pathlib import Path

from laion_spark.demo.wat import warc_to_wat as _warc_to_wat

__all__ = ["warc_to_wat"]


def warc_to_wat(warc_path: str | Path, wat_path: str | Path) -> int:
    """Write the WAT of warc_path at wat_path -> the number of metadata records written."""
    return _warc_to_wat(str(warc_path), str(wat_path))
