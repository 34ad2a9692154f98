"""The download job: its start-up checks (the contact warning), the User-Agent a loopback server receives
from a real run, the report's host pauses."""

import logging
import threading

import pytest

from laion_spark import __version__, cli
from laion_spark.download.fetch import user_agent
from tests.http_faults import FaultServer
from tests.images import encode, textured


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


@pytest.mark.parametrize("overrides, expected", [
    ([], f"Mozilla/5.0 (compatible; laion-spark/{__version__})"),
    (["download.contact=ops@example.org"],
     f"Mozilla/5.0 (compatible; laion-spark/{__version__}; contact: ops@example.org)"),
], ids=["default", "with-contact"])
def test_a_server_receives_the_user_agent_naming_laion_spark_and_its_version(spark, tmp_path, overrides, expected):
    # what a site owner sees: the header of every request of a real download run (robots.txt included)
    jpeg = encode(textured((300, 200), seed=1), "JPEG", quality=90)
    seen, lock = [], threading.Lock()

    def answer(body, content_type):
        def handler(h):
            with lock:
                seen.append((h.path, h.headers.get_all("User-Agent")))
            h.reply(200, body, content_type)
        return handler

    out = tmp_path / "images"
    with FaultServer("127.0.0.1") as srv:
        srv.add_handler("/robots.txt", answer(b"User-agent: *\nAllow: /\n", "text/plain"))
        for i in range(3):
            srv.add_handler(f"/p{i}.jpg", answer(jpeg, "image/jpeg"))
        rows = [(i, srv.url(f"/p{i}.jpg"), f"photo {i}") for i in range(3)]
        spark.createDataFrame(rows, "sample_id long, url string, text string").write.parquet(str(tmp_path / "pairs"))
        cfg, module = _prepare(tmp_path, "download.allowed_networks=127.0.0.1/32", "download.robots_txt=true",
                               "download.retries=0", *overrides)
        cli.run("download", cfg, module, spark)
    statuses = {r.url: r.status for r in spark.read.parquet(str(out)).collect()}
    assert statuses == {url: "success" for _, url, _ in rows}
    assert {path for path, _ in seen} == {"/robots.txt", "/p0.jpg", "/p1.jpg", "/p2.jpg"}
    assert {tuple(agents) for _, agents in seen} == {(expected,)}  # one header, the same on every request


def test_the_report_names_the_host_pauses():
    from laion_spark.download.job import format_report

    summary = {"rows_in": 3, "rows_out": 3, "downloaded": 3, "reused": 0, "statuses": {"success": 3},
               "bytes_downloaded": 0, "bytes_stored": 0, "download_seconds": 1.0, "images_per_s": 3.0,
               "host_pauses": {"hosts": 2, "requests": 5, "paused_s": 7.5, "max_s": 4.0}}
    text = format_report(summary)
    assert "2 host(s) asked for a pause 5 time(s): 7.5 s paused, longest asked 4.0 s" in text
    quiet = format_report({**summary, "host_pauses": {"hosts": 0, "requests": 0, "paused_s": 0.0, "max_s": 0.0}})
    assert "pause" not in quiet
