"""Test helper: where the shared third-party corpora live, and a skip when they are absent.

INPUT  -> nothing (the repository layout)
OUTPUT -> CORPORA (Path), require(sub) -> Path of a corpora sub-folder or a pytest skip
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

# The corpora sit beside the checkout (../shared/corpora), not inside it: they are not ours to commit.
CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


def require(sub: str = "") -> Path:
    """The corpora folder (or one of its sub-folders), or skip the test with a visible reason."""
    path = CORPORA / sub if sub else CORPORA
    if not path.exists():
        pytest.skip(f"../shared/corpora absent: {path} not found")
    return path


def html_facts() -> dict[str, dict[str, str]]:
    """html/HTML_FACTS.tsv as {path relative to the corpora folder: row}."""
    with (require("html") / "HTML_FACTS.tsv").open(newline="", encoding="utf-8") as handle:
        return {row["path"]: row for row in csv.DictReader(handle, delimiter="\t")}


def warc_facts() -> dict[str, dict[str, str]]:
    """warc/WARC_FACTS.tsv as {path relative to the corpora folder: row}."""
    with (require("warc") / "WARC_FACTS.tsv").open(newline="", encoding="utf-8") as handle:
        return {row["path"]: row for row in csv.DictReader(handle, delimiter="\t")}
