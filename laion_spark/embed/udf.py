"""The embed UDF: pandas batches of images success rows -> pandas batches of embeddings rows.

INPUT  -> an iterator of pandas DataFrames with sample_id, image (stored bytes), text, language
          (the mapInPandas input), a {language group: ModelSpec} map and the EmbedConfig
OUTPUT -> an iterator of pandas DataFrames in schemas.EMBEDDINGS: exactly one row per input row

At the task's start the device is chosen (device.select_device over TaskContext.resources()) and
torch's thread count set to the task's CPUs. Rows are buffered per model (the language groups
that share a model share a buffer) and go through the model in full batches of
embed.model_batch_size, whatever the Arrow batch size or the mix of groups; the rest at the end of
the partition. Models come from the worker's cache (cache.py) on first use, so a partition with no
rows loads nothing. With a `devices` accumulator (DeviceCounts), each task adds its device choice
and its rows to it, so the job's summary can say where the work ran (worker logs are seldom seen).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from pyspark.accumulators import AccumulatorParam

from laion_spark import schemas as S
from laion_spark.embed.model import ModelSpec

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = S.EMBEDDINGS.fieldNames()


class _Buffer:
    """Rows waiting for one model: parallel lists."""

    def __init__(self):
        self.ids: list = []
        self.images: list = []
        self.texts: list = []

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, n: int) -> tuple[list, list, list]:
        out = self.ids[:n], self.images[:n], self.texts[:n]
        del self.ids[:n], self.images[:n], self.texts[:n]
        return out


def _cuda_count(device: str) -> int:
    if device == "cpu":
        return 0  # never touch CUDA when told not to
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def embeddings_frame(name: str, ids: list, rows) -> pd.DataFrame:
    """clip_model name + sample_ids + EmbeddedRows -> a pandas frame in the EMBEDDINGS column order."""
    return pd.DataFrame({
        S.SAMPLE_ID: np.asarray(ids, dtype=np.int64),
        S.IMAGE_EMBEDDING: pd.Series(rows.image, dtype=object),
        S.TEXT_EMBEDDING: pd.Series(rows.text, dtype=object),
        S.SIMILARITY: np.array([np.nan if s is None else s for s in rows.similarity], dtype=np.float32),
        S.CLIP_MODEL: [name] * len(ids),
        S.ERROR_MESSAGE: pd.Series(rows.errors, dtype=object),
    }, columns=OUTPUT_COLUMNS)


class DeviceCounts(AccumulatorParam):
    """Accumulator of {"<device>: <why>": [task attempts, rows]} (a retried task counts again)."""

    def zero(self, value):
        return {}

    def addInPlace(self, total, more):
        for key, (tasks, rows) in more.items():
            before = total.get(key, (0, 0))
            total[key] = [before[0] + tasks, before[1] + rows]
        return total


def embed_partition(specs: dict[str, ModelSpec], cfg, devices=None):
    """{language group: ModelSpec} + EmbedConfig (+ a DeviceCounts accumulator) -> the mapInPandas
    function of one task."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import torch

        from laion_spark.embed import cache
        from laion_spark.embed.device import cpu_threads, select_device, task_cpus, task_resources
        from laion_spark.embed.encode import embed_rows

        choice = select_device(task_resources(), cfg.device, cfg.precision, _cuda_count(cfg.device))
        threads = cpu_threads(cfg.cpu_threads, task_cpus())
        torch.set_num_threads(threads)
        log.info("embed task: %s (%s), autocast %s, %d threads", choice.device, choice.reason, choice.autocast,
                 threads)
        if choice.is_cuda:
            torch.cuda.set_device(torch.device(choice.device))
        pool = ThreadPoolExecutor(threads, thread_name_prefix="embed-decode") if threads > 1 else None
        buffers: dict[ModelSpec, _Buffer] = {}
        rows = 0

        def flush(spec: ModelSpec, n: int) -> pd.DataFrame:
            nonlocal rows
            rows += n
            ids, images, texts = buffers[spec].take(n)
            loaded = cache.get_model(spec, choice.device)
            return embeddings_frame(loaded.name, ids, embed_rows(loaded, images, texts, choice.autocast, pool,
                                                                  cfg.trim_text, cfg.max_pixels))

        try:
            for batch in batches:
                if batch.empty:
                    continue
                languages = batch[S.LANGUAGE].tolist()
                for sample_id, image, text, language in zip(batch[S.SAMPLE_ID].tolist(), batch[S.IMAGE].tolist(),
                                                            batch[S.TEXT].tolist(), languages):
                    spec = specs[S.language_group(language)]
                    buf = buffers.get(spec)
                    if buf is None:
                        buf = buffers[spec] = _Buffer()
                    buf.ids.append(sample_id)
                    buf.images.append(image)
                    buf.texts.append(text)
                for spec, buf in buffers.items():
                    while len(buf) >= cfg.model_batch_size:
                        yield flush(spec, cfg.model_batch_size)
            for spec, buf in buffers.items():
                if len(buf):
                    yield flush(spec, len(buf))
            if devices is not None:
                devices.add({f"{choice.device}: {choice.reason}": [1, rows]})
        finally:
            if pool is not None:
                pool.shutdown(wait=True)

    return run
