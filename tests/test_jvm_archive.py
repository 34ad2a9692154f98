"""laion_spark.jvm_archive: the class archive is written by a real local driver and mapped by the next one.

-Xshare:on makes the JVM refuse to start when it cannot map the archive, so a driver that runs a job
under it proves the archive is usable; a garbage file under -Xshare:on is the control that must fail,
and the same garbage under the default (-Xshare:auto, what get_spark gives) must still start.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from laion_spark import jvm_archive

pytestmark = pytest.mark.slow

DRIVER = """
import sys
from pyspark.sql import SparkSession
from laion_spark.session import ensure_java
ensure_java()
spark = (SparkSession.builder.master("local[1]").config("spark.driver.bindAddress", "127.0.0.1")
         .config("spark.driver.host", "127.0.0.1").config("spark.ui.enabled", "false")
         .config("spark.driver.extraJavaOptions", sys.argv[1]).getOrCreate())
print("rows", spark.range(0, 1000, 1, 2).selectExpr("sum(id)").collect()[0][0], flush=True)
spark.stop()
"""


def _drive(java_options: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    env.pop("LAION_SPARK_DRIVER_JAVA_OPTIONS", None)
    return subprocess.run([sys.executable, "-c", DRIVER, java_options], env=env, capture_output=True, text=True,
                          timeout=300)


def test_build_writes_an_archive_that_a_driver_maps(tmp_path):
    if jvm_archive.archive_key() is None:
        pytest.skip("no java here")
    stale = tmp_path / "spark-classes-0000000000000000.jsa"  # an earlier java's or pyspark's
    stale.write_bytes(b"old")
    assert jvm_archive.driver_option(tmp_path) == ""  # the stale one is not this java's

    path = jvm_archive.build(tmp_path)

    assert path is not None and path.parent == tmp_path
    assert path.name == f"spark-classes-{jvm_archive.archive_key()}.jsa"
    assert path.stat().st_size > 10_000_000  # Spark's classes, not an empty dump
    assert not stale.exists() and not list(tmp_path.glob("*.partial"))
    assert jvm_archive.driver_option(tmp_path) == f"-XX:SharedArchiveFile={path}"
    assert jvm_archive.build(tmp_path) == path  # kept, not rebuilt

    mapped = _drive(f"-Xshare:on -XX:SharedArchiveFile={path}")
    assert mapped.returncode == 0, mapped.stderr[-2000:]
    assert "rows 499500" in mapped.stdout

    garbage = tmp_path / "garbage.jsa"
    garbage.write_bytes(os.urandom(4096))
    refused = _drive(f"-Xshare:on -XX:SharedArchiveFile={garbage}")
    assert refused.returncode != 0 and "rows" not in refused.stdout  # the control: -Xshare:on does check
    tolerated = _drive(f"-XX:SharedArchiveFile={garbage}")
    assert tolerated.returncode == 0, tolerated.stderr[-2000:]
    assert "rows 499500" in tolerated.stdout


def test_local_driver_options_name_the_archive_only_when_there_is_one(tmp_path, monkeypatch):
    from laion_spark import session

    monkeypatch.setattr(jvm_archive, "_directories", lambda: [tmp_path])
    assert session.local_driver_java_options() == session.LOCAL_DRIVER_JAVA_OPTIONS
    key = jvm_archive.archive_key()
    if key is None:
        pytest.skip("no java here")
    archive = tmp_path / f"spark-classes-{key}.jsa"
    archive.write_bytes(b"x")
    assert session.local_driver_java_options() == f"{session.LOCAL_DRIVER_JAVA_OPTIONS} -XX:SharedArchiveFile={archive}"


def test_a_new_archive_removes_older_ones_except_in_the_shared_cache(tmp_path, monkeypatch):
    """The environment's folder keeps one archive; the user's cache keeps every environment's."""
    own, cache = tmp_path / "venv" / "share" / "laion-spark", tmp_path / "cache" / "laion-spark"
    monkeypatch.setattr(jvm_archive, "_directories", lambda: [own, cache])
    for folder in (own, cache):
        folder.mkdir(parents=True)
        for key in ("new", "other-env", "old-java"):
            (folder / f"spark-classes-{key}.jsa").write_bytes(b"x")
        (folder / "notes.txt").write_text("not an archive")
    assert sorted(p.name for p in jvm_archive.remove_others(own / "spark-classes-new.jsa")) == [
        "spark-classes-old-java.jsa", "spark-classes-other-env.jsa"]
    assert sorted(p.name for p in own.iterdir()) == ["notes.txt", "spark-classes-new.jsa"]
    assert jvm_archive.remove_others(cache / "spark-classes-new.jsa") == []
    assert len(list(cache.glob("spark-classes-*.jsa"))) == 3
