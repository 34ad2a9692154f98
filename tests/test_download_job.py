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


def test_the_report_names_the_host_pauses():
    from laion_spark.download.job import format_report

    summary = {"rows_in": 3, "rows_out": 3, "downloaded": 3, "reused": 0, "statuses": {"success": 3},
               "bytes_downloaded": 0, "bytes_stored": 0, "download_seconds": 1.0, "images_per_s": 3.0,
               "host_pauses": {"hosts": 2, "requests": 5, "paused_s": 7.5, "max_s": 4.0}}
    text = format_report(summary)
    assert "2 host(s) asked for a pause 5 time(s): 7.5 s paused, longest asked 4.0 s" in text
    quiet = format_report({**summary, "host_pauses": {"hosts": 0, "requests": 0, "paused_s": 0.0, "max_s": 0.0}})
    assert "pause" not in quiet
