"""laion_spark leaves its host process as it found it (DESIGN.md, "Rules that hold everywhere").

In a fresh interpreter: import every laion_spark module, process one download row, load a model
(the driver's fit check and a worker's load) and start a session with get_spark(), and compare
Pillow's MAX_IMAGE_PIXELS, the root logger's level and handlers, every logger's level, the warnings
filters and os.environ before and after each step. A watcher thread also samples the root logger's
level and Pillow's limit while the model loads, since a setting changed and put back is still a
change another thread sees.

The third-party packages are imported before the first snapshot: what importing them does (torch
and urllib3 add warnings filters, open_clip sets TOKENIZERS_PARALLELISM) is theirs, and happens to
any host that uses them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from spark_servers import REPO

SCRIPT = r"""
import importlib, json, logging, os, pkgutil, sys, threading, warnings

import numpy, pandas, pyarrow, PIL.Image, pyspark.sql, requests, torch, open_clip, urllib3  # noqa: F401

HOST_LIMIT = 123_456_789  # a host's own Pillow limit: it must stay as the host set it
PIL.Image.MAX_IMAGE_PIXELS = HOST_LIMIT


def snapshot():
    loggers = {name: lg.level for name, lg in logging.Logger.manager.loggerDict.items()
               if isinstance(lg, logging.Logger)}
    root = logging.getLogger()
    return {"max_image_pixels": PIL.Image.MAX_IMAGE_PIXELS, "root_level": root.level,
            "root_handlers": [repr(h) for h in root.handlers], "logger_levels": loggers,
            "warnings_filters": [repr(f) for f in warnings.filters], "environ": dict(os.environ)}


def changes(before, after):
    out = {}
    for key in before:
        if key == "logger_levels":  # loggers created meanwhile start at NOTSET: only changed levels count
            diff = {n: [before[key].get(n), lvl] for n, lvl in after[key].items()
                    if lvl != before[key].get(n, logging.NOTSET)}
        elif key == "environ":
            diff = {k: [before[key].get(k), after[key].get(k)] for k in set(before[key]) | set(after[key])
                    if before[key].get(k) != after[key].get(k)}
        else:
            diff = [before[key], after[key]] if before[key] != after[key] else None
        if diff:
            out[key] = diff
    return out


report = {}
before = snapshot()
import laion_spark
for module in pkgutil.walk_packages(laion_spark.__path__, "laion_spark."):
    importlib.import_module(module.name)
report["import"] = changes(before, snapshot())

from laion_spark.config import DownloadConfig
from laion_spark.download.image import process_image
from tests.images import make_image

before = snapshot()
row = process_image(make_image("PNG", (300, 200)), DownloadConfig(min_image_bytes=0))
report["download_status"] = row.status
report["download"] = changes(before, snapshot())

from laion_spark.embed.model import check_spec, load_model, model_specs
from laion_spark.config import load_config
from laion_spark.toy.train import ensure_checkpoint

toy = ensure_checkpoint()
cfg = load_config([], ["input=x", "output=y", f"embed.model={toy.model}", f"embed.pretrained={toy.checkpoint}",
                       f"embed.model_config={toy.model_config}"])
spec = model_specs(cfg.embed)["en"]
seen = set()
stop = threading.Event()


def watch():
    while not stop.is_set():
        seen.add((logging.getLogger().level, PIL.Image.MAX_IMAGE_PIXELS))


watcher = threading.Thread(target=watch)
before = snapshot()
watcher.start()
check_spec(spec)
loaded = load_model(spec)
stop.set()
watcher.join()
report["model_name"] = loaded.name
report["model"] = changes(before, snapshot())
report["seen_during_load"] = sorted(seen)

before = snapshot()
from laion_spark.session import get_spark
spark = get_spark()
report["spark_python"] = spark.sparkContext.pythonExec
report["spark"] = changes(before, snapshot())
spark.stop()
print("REPORT " + json.dumps(report, default=str))
"""

# pyspark's SparkContext writes these two into os.environ itself, for every session (ours or a
# user's own builder): pyspark/core/context.py, _do_init. They are pyspark's, not ours.
PYSPARK_OWN = {"SPARK_AUTH_SOCKET_TIMEOUT", "SPARK_BUFFER_SIZE"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "MASTER", "PYSPARK_SUBMIT_ARGS", "SPARK_REMOTE")}
    conf_dir = tmp_path_factory.mktemp("empty-conf")
    env.update(PYTHONPATH=str(REPO), SPARK_CONF_DIR=str(conf_dir), SPARK_LOCAL_IP="127.0.0.1")
    res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    line = next(x for x in res.stdout.splitlines() if x.startswith("REPORT "))
    return json.loads(line[len("REPORT "):])


@pytest.mark.slow
def test_importing_every_module_changes_nothing(report):
    assert report["import"] == {}


@pytest.mark.slow
def test_a_download_row_changes_nothing(report):
    assert report["download_status"] == "success"  # the row really went through decode and resize
    assert report["download"] == {}


@pytest.mark.slow
def test_a_model_load_changes_nothing_not_even_for_a_moment(report):
    assert report["model_name"].startswith("toy-clip/toy-clip-")  # the toy CLIP really loaded
    assert report["model"] == {}
    # the watcher saw only the host's settings while the fit check and the load ran
    assert report["seen_during_load"] == [[30, 123_456_789]]  # WARNING, the host's Pillow limit


@pytest.mark.slow
def test_get_spark_changes_nothing_of_its_own(report):
    changed = report["spark"]
    assert set(changed) <= {"environ"}, changed
    assert set(changed.get("environ", {})) <= PYSPARK_OWN, changed
    # ... and the local workers still run this interpreter (what PYSPARK_PYTHON was set for)
    assert report["spark_python"] == sys.executable
