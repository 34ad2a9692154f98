"""download.image_threads: of a task's fetching threads, at most that many check/resize images at once.

A real task function (download_partition, no Spark) over real HTTP: process_image is wrapped by a
counter that calls the real one, so the rows are the stage's own and the peak concurrency is seen.
"""

from __future__ import annotations

import threading

import pandas as pd
import pytest
from http_faults import FaultServer
from images import encode, textured
from pyspark.sql.types import StringType, StructField, StructType

from laion_spark import schemas as S
from laion_spark.config import DownloadConfig
from laion_spark.download import image as image_module
from laion_spark.download.task import download_partition


@pytest.fixture
def counted(monkeypatch):
    """process_image, counting the calls in progress -> the peak of that count (a list of one)."""
    real = image_module.process_image
    lock, state = threading.Lock(), {"now": 0, "peak": 0}

    def counting(body, cfg):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        try:
            return real(body, cfg)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(image_module, "process_image", counting)
    return state


@pytest.mark.parametrize("image_threads", [1, 3])
def test_image_work_never_exceeds_image_threads_while_all_threads_fetch(counted, image_threads):
    body = encode(textured((900, 700), seed=3), "PNG")  # tens of ms of decoding: calls overlap if allowed
    with FaultServer("127.0.0.1") as srv:
        urls = [srv.add_file(f"/p{i}.png", body, "image/png") for i in range(48)]
        cfg = DownloadConfig(allowed_networks=("127.0.0.1/32",), threads=16, per_host_connections=16,
                             image_threads=image_threads, retries=0, deadline_s=30.0, read_timeout_s=10.0)
        names = S.images_schema(StructType([StructField(S.URL, StringType())])).fieldNames()
        frames = list(download_partition(cfg, names)(iter([pd.DataFrame({S.URL: urls})])))
    out = pd.concat(frames)
    assert sorted(out[S.URL]) == sorted(urls)  # every row once
    assert (out[S.STATUS] == S.SUCCESS).all(), out[S.ERROR_MESSAGE].dropna().unique()[:3]
    assert counted["now"] == 0
    assert counted["peak"] == image_threads  # reached (16 threads had bodies waiting), never passed
