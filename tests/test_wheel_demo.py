"""`laion-spark demo` from a plain install: the wheel built from this checkout, installed with the
extras the demo names (laion-spark[all]: it runs every stage) into a fresh venv that has no test-only package (pytest,
lxml, html5lib, webdataset), run from a folder outside the checkout so that the checkout is not what
gets imported (tests/wheel_venv.py builds it; conftest.py's wheel_venv and wheel_demo fixtures hold it
and the one demo run that test_demo and test_evaluate read too).

Expectations come from tests/test_demo.py's own account of the crawl (expected_candidates: the
pairs the generated pages hold), not from the demo's code.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from pathlib import Path

import pytest

from tests.test_demo import expected_candidates
from tests.wheel_venv import _run

# webdataset is not among them: evaluate trains on shards with it (the evaluate and all extras)
TEST_ONLY = ("pytest", "lxml", "html5lib")


@pytest.mark.slow
def test_the_fresh_venv_is_a_plain_install_without_test_packages(wheel_venv, tmp_path):
    venv, _ = wheel_venv
    probe = ("import importlib.util, importlib.metadata as m, laion_spark; print(laion_spark.__file__); "
             f"print([n for n in {TEST_ONLY!r} if importlib.util.find_spec(n)]); "
             "import json, re; print(json.dumps(sorted(re.split('[<>=!~ ;]', r)[0] for r in m.requires('laion-spark') "
             "if 'extra == \"all\"' in r)))")
    out = _run([str(venv / "bin" / "python"), "-c", probe], 60, cwd=tmp_path,
               env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(tmp_path))}).stdout.splitlines()
    assert out[0].startswith(str(venv)) and "site-packages" in out[0]  # the wheel's copy, not the checkout
    assert out[1] == "[]"
    # torch was linked in, not installed by pip: the wheel itself must ask for it (and the rest of `all`)
    assert {"torch", "torchvision", "open_clip_torch", "faiss-cpu"} <= set(json.loads(out[2])), out[2]


@pytest.mark.slow
def test_demo_runs_from_the_wheel(wheel_venv, wheel_demo):
    _, install_seconds = wheel_venv
    res, demo_seconds, tmp_path = wheel_demo["result"], wheel_demo["seconds"], wheel_demo["cwd"]
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
