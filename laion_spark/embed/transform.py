"""embed as a DataFrame transform: images -> embeddings (the success rows only, one row each).

INPUT  -> an images DataFrame (sample_id, status, image, text; language when present) and an
          EmbedConfig
OUTPUT -> the embeddings DataFrame (schemas.EMBEDDINGS), lazy: nothing runs until it is written

Rows whose status is not success are never embedded (the filter stage carries them to its
rejected table). Each row goes through its language group's model (schemas.language_group;
embed.models.<group> overrides embed.model); a table without a language column is all `nolang`,
which with the default single model makes no difference. The rows per Arrow batch handed to the
UDF are Spark's spark.sql.execution.arrow.maxRecordsPerBatch (the embed job sets it from
embed.arrow_batch_rows); the model sees full batches of embed.model_batch_size either way.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from laion_spark import schemas as S

REQUIRED_COLUMNS = (S.SAMPLE_ID, S.STATUS, S.IMAGE, S.TEXT)


def embed_images(images: DataFrame, cfg, num_partitions: int | None = None, devices=None) -> DataFrame:
    """images DataFrame + EmbedConfig (+ number of embed tasks, + a pyspark Observation) -> embeddings
    DataFrame (lazy; one row per success row). num_partitions spreads the success rows evenly over
    that many tasks (a small table is often one file, one partition: one task would leave the other
    cores idle). With `devices`, once the result has been written, devices.get["frames"] lists per
    output frame its task's device choice, its rows and whether it started its task (device_counts)."""
    from laion_spark.embed.model import model_specs
    from laion_spark.embed.udf import DEVICE, FRAME_ROWS, TASK_START, WITH_DEVICE, embed_partition

    missing = [c for c in REQUIRED_COLUMNS if c not in images.columns]
    if missing:
        raise ValueError(f"embed needs an images table with {', '.join(REQUIRED_COLUMNS)}; missing {missing}")
    language = F.col(S.LANGUAGE) if S.LANGUAGE in images.columns else F.lit(None).cast("string")
    todo = images.filter(F.col(S.STATUS) == S.SUCCESS).select(
        S.SAMPLE_ID, S.IMAGE, S.TEXT, language.alias(S.LANGUAGE))
    if num_partitions:
        todo = todo.repartition(num_partitions)
    if devices is None:
        return todo.mapInPandas(embed_partition(model_specs(cfg), cfg), S.EMBEDDINGS)
    report = todo.mapInPandas(embed_partition(model_specs(cfg), cfg, with_device=True), WITH_DEVICE)
    frames = F.collect_list(F.when(F.col(DEVICE).isNotNull(), F.struct(
        F.col(DEVICE).alias("device"), F.col(FRAME_ROWS).alias("rows"), F.col(TASK_START).alias("task_start"))))
    return report.observe(devices, frames.alias("frames")).drop(DEVICE, FRAME_ROWS, TASK_START)


def device_counts(devices) -> dict[str, dict[str, int]]:
    """The Observation given to embed_images, after the write -> {device choice: {"tasks", "rows"}}
    (tasks that had rows)."""
    out: dict[str, dict[str, int]] = {}
    for frame in devices.get.get("frames") or []:
        counts = out.setdefault(frame["device"], {"tasks": 0, "rows": 0})
        counts["tasks"] += int(bool(frame["task_start"]))
        counts["rows"] += frame["rows"]
    return dict(sorted(out.items()))
