"""Shared fixtures: one session-scoped local[2] SparkSession bound to 127.0.0.1, the toy CLIP's index, and one
demo run, from the wheel's fresh venv as a user runs it, that several test modules read (test_demo,
test_evaluate, test_wheel_demo): none of them changes it."""

import json
import os
import shutil
import sys
import time

import pytest

# Spark must never listen on the external interface, and its workers must use this interpreter.
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end tests (still run by make test)")


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    from laion_spark.session import ensure_java

    ensure_java()
    session = (
        SparkSession.builder.master("local[2]")
        .appName("laion-spark-tests")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    yield session
    session.stop()


@pytest.fixture(scope="session")
def toy_index(spark, tmp_path_factory):
    """The toy CLIP's world indexed once for the session (tests/toy_index.py): search and serve read it."""
    from tests.toy_index import build_toy_index

    return build_toy_index(spark, tmp_path_factory.mktemp("toy_index"))


@pytest.fixture(scope="session")
def wheel_venv(tmp_path_factory):
    """-> (a fresh venv holding the checkout's wheel[all], seconds to build and install it): tests/wheel_venv.py.
    Removed afterwards."""
    from tests.wheel_venv import build

    root = tmp_path_factory.mktemp("wheel")
    started = time.time()
    venv = build(root)
    yield venv, time.time() - started
    shutil.rmtree(venv, ignore_errors=True)


@pytest.fixture(scope="session")
def wheel_demo(wheel_venv, tmp_path_factory):
    """The demo run once, as a user runs it: `laion-spark demo` from the wheel's venv, in a folder outside the
    checkout -> {"result": the finished process, "seconds", "cwd", "output": its run directory}."""
    from tests.wheel_venv import run_demo

    cwd = tmp_path_factory.mktemp("demo")
    result, seconds = run_demo(wheel_venv[0], cwd)
    return {"result": result, "seconds": seconds, "cwd": cwd, "output": cwd / "demo-output"}


@pytest.fixture(scope="session")
def demo_run(wheel_demo):
    """That one demo run -> (output folder, cfg, module, summary): the CLI's config and module for it here,
    and the summary the run wrote as its completion marker (<output>/_summary.json). Tests read it, none
    changes it."""
    from laion_spark import cli

    output = wheel_demo["output"]
    cfg, module = cli.prepare("demo", [], [f"output={output}", "mode=overwrite"])  # prepare only: nothing is run
    summary = json.loads((output / "_summary.json").read_text(encoding="utf-8"))
    return output, cfg, module, summary
