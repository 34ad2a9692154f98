"""Test helper: where the shared third-party corpora live, and a skip when they are absent.

INPUT  -> the repository layout; LAION_SPARK_REQUIRE_CORPORA from the environment
OUTPUT -> CORPORA (Path), require(sub) -> Path of a corpora sub-folder, or a pytest skip (a
          failure under LAION_SPARK_REQUIRE_CORPORA=1, which .ci/run sets: in CI a missing corpus
          is a broken set-up, and a suite that skips its corpus tests there would pass untested)
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

# The corpora sit beside the checkout (../shared/corpora), not inside it: they are not ours to commit.
CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
# the project's own switch (not CI, which every fork's CI sets whether or not it has the corpora)
REQUIRE_VARIABLE = "LAION_SPARK_REQUIRE_CORPORA"


def corpora_required() -> bool:
    """Whether a missing corpus fails the test instead of skipping it (LAION_SPARK_REQUIRE_CORPORA=1)."""
    return os.environ.get(REQUIRE_VARIABLE, "").strip().lower() in ("1", "true", "yes")


def require(sub: str = "") -> Path:
    """The corpora folder (or one of its sub-folders), or skip the test with a visible reason (fail
    with the same reason when LAION_SPARK_REQUIRE_CORPORA=1)."""
    path = CORPORA / sub if sub else CORPORA
    if not path.exists():
        reason = f"../shared/corpora absent: {path} not found"
        if corpora_required():
            pytest.fail(f"{reason} ({REQUIRE_VARIABLE}=1)", pytrace=False)
        pytest.skip(reason)
    return path


def html_facts() -> dict[str, dict[str, str]]:
    """html/HTML_FACTS.tsv as {path relative to the corpora folder: row}."""
    with (require("html") / "HTML_FACTS.tsv").open(newline="", encoding="utf-8") as handle:
        return {row["path"]: row for row in csv.DictReader(handle, delimiter="\t")}


def warc_facts() -> dict[str, dict[str, str]]:
    """warc/WARC_FACTS.tsv as {path relative to the corpora folder: row}."""
    with (require("warc") / "WARC_FACTS.tsv").open(newline="", encoding="utf-8") as handle:
        return {row["path"]: row for row in csv.DictReader(handle, delimiter="\t")}
