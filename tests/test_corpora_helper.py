"""tests/corpora.py's require(): a skip where the corpora are absent, a failure when the project's
LAION_SPARK_REQUIRE_CORPORA=1 says they must be there (.ci/run), the folder when they are."""

from __future__ import annotations

import pytest
from _pytest.outcomes import Failed, Skipped

from tests import corpora


@pytest.fixture
def absent(monkeypatch, tmp_path):
    monkeypatch.setattr(corpora, "CORPORA", tmp_path / "no-corpora")
    monkeypatch.delenv(corpora.REQUIRE_VARIABLE, raising=False)
    monkeypatch.delenv("CI", raising=False)
    return tmp_path / "no-corpora"


def test_absent_corpora_skip_with_the_path(absent):
    with pytest.raises(Skipped, match=r"../shared/corpora absent: .*no-corpora/html not found"):
        corpora.require("html")


def test_absent_corpora_fail_when_required(absent, monkeypatch):
    monkeypatch.setenv(corpora.REQUIRE_VARIABLE, "1")
    with pytest.raises(Failed, match=r"../shared/corpora absent: .*no-corpora/html not found"):
        corpora.require("html")


def test_ci_alone_does_not_require_them(absent, monkeypatch):
    """Every fork's CI sets CI; only the project's own variable turns a skip into a failure."""
    monkeypatch.setenv("CI", "true")
    with pytest.raises(Skipped):
        corpora.require()
    monkeypatch.setenv(corpora.REQUIRE_VARIABLE, "0")
    with pytest.raises(Skipped):
        corpora.require()


def test_present_corpora_are_returned_whatever_the_variable(absent, monkeypatch):
    (absent / "html").mkdir(parents=True)
    for value in ("", "1"):
        monkeypatch.setenv(corpora.REQUIRE_VARIABLE, value)
        assert corpora.require("html") == absent / "html"
        assert corpora.require() == absent
