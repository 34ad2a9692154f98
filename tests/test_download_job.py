"""The download job's start-up checks: the contact warning (no Spark needed)."""

import logging

from laion_spark import __version__, cli
from laion_spark.config import DownloadConfig
from laion_spark.download.fetch import user_agent


def _prepare(tmp_path, *overrides):
    (tmp_path / "pairs").mkdir(exist_ok=True)
    return cli.prepare("download", [], [f"input={tmp_path / 'pairs'}", f"output={tmp_path / 'images'}", *overrides])


def _contact_warnings(caplog):
    return [r for r in caplog.records if r.levelno == logging.WARNING and "download.contact" in r.getMessage()]


def test_an_empty_contact_warns_how_to_set_it(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="laion_spark.download.job"):
        _prepare(tmp_path)
    warned = _contact_warnings(caplog)
    assert len(warned) == 1
    assert "download.contact=you@example.org" in warned[0].getMessage()


def test_a_contact_silences_the_warning_and_goes_into_the_user_agent(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="laion_spark.download.job"):
        cfg, _ = _prepare(tmp_path, "download.contact=ops@example.org")
    assert _contact_warnings(caplog) == []
    assert user_agent(cfg.download) == f"Mozilla/5.0 (compatible; laion-spark/{__version__}; contact: ops@example.org)"


def test_the_default_user_agent_names_laion_spark_and_its_version():
    assert DownloadConfig().user_agent == f"Mozilla/5.0 (compatible; laion-spark/{__version__})"
