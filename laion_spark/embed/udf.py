"""The embed UDF: pandas batches of images success rows -> pandas batches of embeddings rows.

INPUT  -> an iterator of pandas DataFrames with sample_id, image (stored bytes), text, language
          (the mapInPandas input), a {language group: ModelSpec} map and the EmbedConfig
OUTPUT -> an iterator of pandas DataFrames in schemas.EMBEDDINGS: exactly one row per input row

At the task's start the device is chosen (device.select_device over TaskContext.resources()) and
torch's thread count set to the task's CPUs. Rows are buffered per model (the language groups
that share a model share a buffer) and go through the model in full batches of
embed.model_batch_size, whatever the Arrow batch size or the mix of groups; the rest at the end of
the partition. Models come from the worker's cache (cache.py) on first use, so a partition with no
rows loads nothing. With with_device, each output frame also carries DEVICE_COLUMNS, set on its first
row only: the task's device choice ("cuda:0: Spark gave the task GPU 0"), the frame's rows, and
whether it is the task's first frame; the job collects them with an Observation (Spark Connect has
no accumulators), so its summary can say where the work ran (worker logs are seldom seen).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from pyspark.sql.types import BooleanType, LongType, StringType, StructField, StructType

from laion_spark import schemas as S
from laion_spark.embed.model import ModelSpec

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = S.EMBEDDINGS.fieldNames()
# the device report's columns (with_device only): dropped before anything is written
DEVICE, FRAME_ROWS, TASK_START = "_embed_device", "_embed_frame_rows", "_embed_task_start"
WITH_DEVICE = StructType([*S.EMBEDDINGS.fields, StructField(DEVICE, StringType()),
                          StructField(FRAME_ROWS, LongType()), StructField(TASK_START, BooleanType())])


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


def embed_partition(specs: dict[str, ModelSpec], cfg, with_device: bool = False):
    """{language group: ModelSpec} + EmbedConfig -> the mapInPandas function of one task (output
    schemas.EMBEDDINGS, or WITH_DEVICE with with_device)."""

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
        task_start = True

        def flush(spec: ModelSpec, n: int) -> pd.DataFrame:
            nonlocal task_start
            ids, images, texts = buffers[spec].take(n)
            loaded = cache.get_model(spec, choice.device)
            frame = embeddings_frame(loaded.name, ids, embed_rows(loaded, images, texts, choice.autocast, pool,
                                                                   cfg.trim_text, cfg.max_pixels))
            if with_device:
                blank = [None] * (n - 1)
                frame[DEVICE] = [f"{choice.device}: {choice.reason}", *blank]
                frame[FRAME_ROWS] = pd.array([n, *blank], dtype="Int64")
                frame[TASK_START] = pd.array([task_start, *blank], dtype="boolean")
                task_start = False
            return frame

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
        finally:
            if pool is not None:
                pool.shutdown(wait=True)

    return run
