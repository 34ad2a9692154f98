"""Shared fixtures: one session-scoped local[2] SparkSession bound to 127.0.0.1, the toy CLIP's index, and one
demo run that several test modules read (test_demo, test_evaluate): none of them changes it."""

import os
import sys

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
def demo_run(spark, tmp_path_factory):
    """The demo, run once through the CLI's prepare + run -> (output folder, cfg, module, summary)."""
    from laion_spark import cli

    output = tmp_path_factory.mktemp("demo") / "demo-output"
    cfg, module = cli.prepare("demo", [], [f"output={output}"])
    summary = cli.run("demo", cfg, module, spark)
    return output, cfg, module, summary
