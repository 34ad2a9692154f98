"""Progress lines: the running stages' tasks done out of their total and the time left, on a real local
session running a job whose tasks take a known time; the line's arithmetic checked by hand."""

from __future__ import annotations

import logging
import re
import threading
import time

import pytest

from laion_spark import progress

LINE = re.compile(r"^(?P<label>[\w: ]+): tasks (?P<done>\d+)/(?P<total>\d+) \(\d+%\) in (?P<stages>\d+) running"
                  r" stages?, (?P<running>\d+) running(?:, (?P<rate>[\d.]+) tasks/s, about (?P<left>\S+) left"
                  r" in the running stages|, time left: not known yet \(no task finished\))$")


def test_a_line_says_how_much_is_done_and_how_long_is_left():
    # 30 of 120 tasks done at 1.5 tasks/s: 90 left take 60 s
    text = progress.line("download", progress.Tasks(total=120, done=30, running=2, stages=1), 1.5)
    assert text == ("download: tasks 30/120 (25%) in 1 running stage, 2 running, 1.50 tasks/s, about 1m00s left"
                    " in the running stages")
    unknown = progress.line("embed", progress.Tasks(8, 0, 2, 2), None)
    assert unknown.endswith("in 2 running stages, 2 running, time left: not known yet (no task finished)")
    assert "about 2h05m left" in progress.line("x", progress.Tasks(7500 + 1, 1, 1, 1), 1.0)


def test_the_rate_counts_completions_over_the_last_minute():
    rate = progress._Rate()
    assert rate.add(0.0, 0) is None  # nothing finished yet
    assert rate.add(10.0, 5) == pytest.approx(0.5)
    assert rate.add(20.0, 2) == pytest.approx(0.25)  # a new stage (fewer done): no negative progress
    assert rate.add(30.0, 8) == pytest.approx(11 / 30)
    assert rate.add(100.0, 8) is None  # the window moved past every completion


def test_progress_lines_while_a_job_runs(spark, caplog, monkeypatch):
    from pyspark.sql import functions as F

    monkeypatch.setattr(progress, "_announced", set())  # as in a new process: the session's UI not yet shown

    @F.udf("long")
    def slow(x):
        time.sleep(0.4)
        return x

    caplog.set_level(logging.INFO, logger="laion_spark.progress")
    with progress.shown(spark, "outer", every=0.5), progress.shown(spark, "pipeline embed", every=0.5):
        rows = spark.range(0, 24, 1, 6).select(slow("id").alias("x")).collect()
    assert sorted(r.x for r in rows) == list(range(24))
    lines = [r.getMessage() for r in caplog.records if r.name == "laion_spark.progress"]
    assert lines[0].startswith("Spark UI: off")  # the test session runs without its UI
    seen = [LINE.match(m) for m in lines[1:]]
    assert seen and all(seen), lines
    assert {m["label"] for m in seen} == {"pipeline embed"}  # the innermost block names the lines
    assert all(m["total"] == "6" and m["stages"] == "1" for m in seen)  # the job's one stage, of 6 tasks
    done = [int(m["done"]) for m in seen]
    assert done == sorted(done) and done[-1] >= 1
    assert any(m["left"] for m in seen)


def _job_of_a_few_seconds(spark):
    """8 tasks of 0.3 s on local[2]: 1.2 s at least, some 6 polls of a 0.2 s progress interval."""
    from pyspark.sql import functions as F

    @F.udf("long")
    def slow(x):
        time.sleep(0.3)
        return x

    return sorted(r.x for r in spark.range(0, 8, 1, 8).select(slow("id").alias("x")).collect())


def _run_shown(spark, caplog, monkeypatch, value: str, label: str):
    """One run of the same job under progress.shown(spark, label) with LAION_SPARK_PROGRESS=value
    -> (the progress logger's (message, time) pairs, the names of the threads alive inside the block)."""
    monkeypatch.setattr(progress, "_announced", set())  # as in a new process: the UI line not yet shown
    monkeypatch.setenv(progress.ENV, value)
    caplog.clear()
    with progress.shown(spark, label):  # no `every`: the environment variable decides
        threads = {t.name for t in threading.enumerate()}
        assert _job_of_a_few_seconds(spark) == list(range(8))
    return [(r.getMessage(), r.created) for r in caplog.records if r.name == "laion_spark.progress"], threads


def test_the_environment_variable_turns_lines_on_and_off(spark, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="laion_spark.progress")
    # the twin run: the same job with a 0.2 s interval logs progress lines, so the job is long enough
    loud, threads = _run_shown(spark, caplog, monkeypatch, "0.2", "loud")
    assert "progress-loud" in threads
    assert loud[0][0].startswith("Spark UI: off"), loud
    seen = [LINE.match(m) for m, _ in loud[1:]]
    assert len(seen) >= 2 and all(seen) and {m["label"] for m in seen} == {"loud"}, loud
    # lines come at the variable's pace, not the default's (the job may outlast 15 s on a loaded machine)
    at = [t for _, t in loud[1:]]
    assert min(b - a for a, b in zip(at, at[1:], strict=False)) < progress.DEFAULT_SECONDS / 3
    # 0: the same job logs nothing at all (no UI line either) and starts no progress thread
    quiet, threads = _run_shown(spark, caplog, monkeypatch, "0", "quiet")
    assert quiet == []
    assert not any(name.startswith("progress-") for name in threads)
