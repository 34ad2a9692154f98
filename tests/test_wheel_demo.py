"""`laion-spark demo` from a plain install: the wheel built from this checkout, installed with the
extras the demo names (laion-spark[all]: it runs every stage) into a fresh venv that has no test-only package (pytest,
lxml, html5lib, webdataset), run from a folder outside the checkout so that the checkout is not what
gets imported.

Expectations come from tests/test_demo.py's own account of the crawl (expected_candidates: the
pairs the generated pages hold), not from the demo's code. Slow: installing torch into a fresh venv
copies gigabytes (pip's cache and the local torch wheels keep it offline; requirements.txt is
passed as constraints so the same pins are used).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from spark_servers import REPO

from tests.test_demo import expected_candidates

# webdataset is not among them: evaluate trains on shards with it (the evaluate and all extras)
TEST_ONLY = ("pytest", "lxml", "html5lib")


def _run(cmd: list[str], timeout: int, **kwargs) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert res.returncode == 0, f"{cmd}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """-> (venv folder, seconds for build + install); the venv is removed afterwards."""
    root = tmp_path_factory.mktemp("wheel")
    started = time.time()
    # the checkout's files as git sees them (committed or not), so the build writes nothing into it
    source = root / "src"
    files = _run(["git", "ls-files", "-z"], 60, cwd=REPO).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"),
          str(source)], 300)
    wheel = next((root / "dist").glob("laion_spark-*.whl"))
    # requirements.txt's pins as constraints (pip takes no extras there: pyspark[connect] -> pyspark)
    constraints = root / "constraints.txt"
    pins = (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
    constraints.write_text("\n".join(re.sub(r"\[[^\]]*\]", "", line) for line in pins) + "\n", encoding="utf-8")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], 120)
    # --no-compile: no .pyc for the thousands of modules torch & co. ship (a minute of CI's 2 cores); the
    # demo compiles what it imports, as any first run does
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", "-c", str(constraints),
          f"{wheel}[all]"], 900)
    yield venv, time.time() - started
    shutil.rmtree(venv, ignore_errors=True)


@pytest.mark.slow
def test_the_fresh_venv_is_a_plain_install_without_test_packages(installed, tmp_path):
    venv, _ = installed
    probe = ("import importlib.util, laion_spark; print(laion_spark.__file__); "
             f"print([m for m in {TEST_ONLY!r} if importlib.util.find_spec(m)])")
    out = _run([str(venv / "bin" / "python"), "-c", probe], 60, cwd=tmp_path,
               env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(tmp_path))}).stdout.splitlines()
    assert out[0].startswith(str(venv)) and "site-packages" in out[0]  # the wheel's copy, not the checkout
    assert out[1] == "[]"


@pytest.mark.slow
def test_demo_runs_from_the_wheel(installed, tmp_path):
    venv, install_seconds = installed
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "VIRTUAL_ENV")}
    env.update(SPARK_LOCAL_IP="127.0.0.1", PATH=f"{venv / 'bin'}:{os.environ['PATH']}")
    started = time.time()
    res = _run([str(venv / "bin" / "laion-spark"), "demo", "output=demo-output", "mode=overwrite"], 900,
               cwd=tmp_path, env=env)
    demo_seconds = time.time() - started
    print(f"wheel build + install {install_seconds:.0f}s, demo {demo_seconds:.0f}s")
    report = res.stdout
    expected = expected_candidates(seed=0)
    pairs = len({(url, text) for url, text, _ in expected})
    assert f"-> {sum(expected.values())} candidates" in report, report
    assert re.search(rf"dedupe +{sum(expected.values())} candidates -> {pairs} pairs", report), report
    kept = re.search(r"filter +\d+ images rows -> (\d+) kept", report)
    toy = re.search(r"toy shop: (\d+) of (\d+) true captions kept", report)
    assert kept and toy, report
    assert int(toy.group(2)) > 0 and int(toy.group(1)) >= 0.9 * int(toy.group(2))  # as tests/test_demo.py asks
    released = re.search(r"export +(\d+) dataset rows -> (\d+) released", report)
    assert released and int(released.group(1)) == int(kept.group(1)), report
    shards = sorted((tmp_path / "demo-output" / "export" / "webdataset").glob("*.tar"))
    assert shards, list((tmp_path / "demo-output").iterdir())
    samples = set()
    for shard in shards:
        with tarfile.open(shard) as tar:
            samples |= {Path(m.name).stem for m in tar.getmembers() if m.name.endswith(".txt")}  # one per sample
    assert len(samples) == int(released.group(2))  # every released pair is a sample in the shards
