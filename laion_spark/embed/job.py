"""The embed job: config -> check the models -> read images -> embed -> write embeddings -> count.

INPUT  -> JobConfig with input (an images table), output and embed.*
OUTPUT -> the embeddings table at `output` (one row per success row of images) and a summary
          dict: rows_in, success_rows, rows_out, embedded, failed with failure_reasons (by the
          error_message prefix), groups (rows and model per language group), models (rows and
          embedded per clip_model), devices (tasks and rows per device and why it was chosen),
          embed_seconds and images_per_s
"""

from __future__ import annotations

import logging
import math
import time

from pyspark.sql import functions as F

from laion_spark import schemas as S
from laion_spark.config import ConfigError
from laion_spark.io import exists, write_table

log = logging.getLogger(__name__)

ARROW_BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"


class EmbedError(RuntimeError):
    """The written embeddings table does not hold one row per success row of images."""


def prepare(cfg) -> None:
    """Checks that need no Spark: input exists and is not the output; every model named in config
    can be loaded here (architecture, tag or checkpoint file, its fit) as far as can be told
    without allocating weights."""
    from laion_spark.embed.model import ModelLoadError, check_spec, model_specs

    if not exists(cfg.input):
        raise ConfigError(f"input not found: {cfg.input}")
    if cfg.output.rstrip("/") == cfg.input.rstrip("/"):
        raise ConfigError(f"output {cfg.output} is also the input; write elsewhere")
    for spec in dict.fromkeys(model_specs(cfg.embed).values()):
        try:
            check_spec(spec)
        except ModelLoadError as exc:
            raise ConfigError(str(exc)) from None


def _success_groups(images) -> tuple[int, dict[str, int]]:
    """images DataFrame -> (rows, {language group: success rows})."""
    if S.LANGUAGE in images.columns:
        per_language = images.groupBy(S.LANGUAGE).agg(
            F.count(F.lit(1)).alias("rows"), F.sum((F.col(S.STATUS) == S.SUCCESS).cast("long")).alias("ok"))
    else:
        per_language = images.agg(F.lit(None).cast("string").alias(S.LANGUAGE), F.count(F.lit(1)).alias("rows"),
                                  F.sum((F.col(S.STATUS) == S.SUCCESS).cast("long")).alias("ok"))
    rows, groups = 0, {}
    for r in per_language.collect():
        rows += r["rows"]
        group = S.language_group(r[S.LANGUAGE])
        groups[group] = groups.get(group, 0) + (r["ok"] or 0)
    return rows, groups


def task_count(spark, embed_cfg, success_rows: int) -> int:
    """session + EmbedConfig + success rows -> embed tasks: embed.partitions, else success rows /
    embed.rows_per_task, and at least a local master's cores (a small table is often one file)."""
    from laion_spark.session import local_cores

    return embed_cfg.partitions or max(1, math.ceil(success_rows / embed_cfg.rows_per_task),
                                       min(local_cores(spark) or 1, success_rows or 1))


def arrow_batch_rows(spark, rows: int):
    """Within the block, Spark hands the embed UDF Arrow batches of `rows` rows and reads the image
    bytes in Parquet batches of at most IMAGE_READER_BATCH_ROWS; the session's own settings are put back
    afterwards (a notebook's session outlives the stage)."""
    from laion_spark.session import image_reader_batch, session_confs

    return session_confs(spark, {ARROW_BATCH_CONF: rows, **image_reader_batch(spark)})


def _merged(per_chunk: list[dict]) -> dict:
    """device_counts of each chunk -> their sum per device."""
    out: dict[str, dict[str, int]] = {}
    for counts in per_chunk:
        for device, c in counts.items():
            m = out.setdefault(device, {"tasks": 0, "rows": 0})
            m["tasks"] += c["tasks"]
            m["rows"] += c["rows"]
    return dict(sorted(out.items()))


def run(spark, cfg) -> dict:
    from pyspark.sql import Observation

    from laion_spark import chunks as C
    from laion_spark.embed.model import model_specs
    from laion_spark.embed.transform import REQUIRED_COLUMNS, device_counts, embed_images

    images = spark.read.parquet(cfg.input)
    missing = [c for c in REQUIRED_COLUMNS if c not in images.columns]
    if missing:
        raise ConfigError(f"input {cfg.input} lacks column(s) {missing}; embed reads an images table "
                          f"({', '.join(REQUIRED_COLUMNS)}, and language when present)")
    rows_in, groups = _success_groups(images)
    success_rows = sum(groups.values())
    specs = model_specs(cfg.embed)
    partitions = task_count(spark, cfg.embed, success_rows)
    chunks = C.chunk_count(cfg.embed.chunk_rows, success_rows)
    reused_chunks, observed = 0, []
    started = time.time()
    with arrow_batch_rows(spark, cfg.embed.arrow_batch_rows):
        if chunks > 1:  # each chunk committed on its own: a killed run keeps them (laion_spark/chunks.py)
            def make(part):
                observation = Observation(f"embed_devices_{time.monotonic_ns()}")
                return embed_images(part.read(), cfg.embed, task_count(spark, cfg.embed, part.rows), observation), \
                    lambda: device_counts(observation)

            # the chunks are groups of the images table's files: image bytes are read once, never split
            parts = C.split_by_files(spark, cfg.input, F.col(S.STATUS) == S.SUCCESS, cfg.embed.chunk_rows)
            chunks = len(parts)
            folder = C.chunks_uri(cfg.output)
            print_ = C.fingerprint("embed", cfg, chunks, cfg.input)
            reused_chunks, observed = C.run_chunks(spark, parts, folder, print_, S.EMBEDDINGS, make, "embeddings")
            C.assemble(folder, parts, cfg.output)
        else:
            devices = Observation("embed_devices")  # an accumulator would need the SparkContext: not on Connect
            embeddings = embed_images(images, cfg.embed, partitions, devices)
            write_table(embeddings, cfg.output, S.EMBEDDINGS, "embeddings", cfg.mode)
    seconds = time.time() - started
    written = spark.read.parquet(cfg.output)  # counts of the written table, never a second embedding run
    reason = F.substring_index(F.col(S.ERROR_MESSAGE), ":", 1)
    counts = written.groupBy(S.CLIP_MODEL, reason.alias("reason")).agg(
        F.count(F.lit(1)).alias("rows"), F.count(S.IMAGE_EMBEDDING).alias("embedded")).collect()
    rows_out = sum(r["rows"] for r in counts)
    if rows_out != success_rows:
        raise EmbedError(f"row accounting failed: {success_rows} success rows in {cfg.input} but {rows_out} "
                         f"embeddings rows in {cfg.output}")
    models: dict[str, dict[str, int]] = {}
    reasons: dict[str, int] = {}
    for r in counts:
        m = models.setdefault(r[S.CLIP_MODEL], {"rows": 0, "embedded": 0})
        m["rows"] += r["rows"]
        m["embedded"] += r["embedded"]
        if r["reason"] is not None:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + r["rows"]
    embedded = sum(m["embedded"] for m in models.values())
    summary = {
        "rows_in": rows_in,
        "success_rows": success_rows,
        "rows_out": rows_out,
        "embedded": embedded,
        "failed": rows_out - embedded,
        "failure_reasons": dict(sorted(reasons.items())),
        "groups": {g: {"rows": groups.get(g, 0), "model": specs[g].name} for g in S.LANGUAGE_GROUPS},
        "models": dict(sorted(models.items())),
        # how to load each embedding space again (index writes it into index_infos.json for search)
        "model_specs": {spec.name: {"model": spec.model, "pretrained": spec.pretrained,
                                    "model_config": spec.model_config or None}
                        for spec in dict.fromkeys(specs.values())},
        "partitions": partitions,
        "devices": _merged(observed) if chunks > 1 else device_counts(devices),
        "chunks": chunks,
        "chunks_reused": reused_chunks,
        "embed_seconds": round(seconds, 3),
        "images_per_s": round(embedded / seconds, 2) if seconds else None,
    }
    if chunks > 1:  # the table holds every chunk's rows and its count held: the chunks have served
        C.remove(C.chunks_uri(cfg.output))
    log.info("embed: %s images rows, %s success -> %s embedded, %s failed %s, %.1f images/s", rows_in,
             success_rows, embedded, summary["failed"], summary["failure_reasons"], summary["images_per_s"] or 0)
    return summary


def format_report(summary: dict) -> str:
    """Summary dict -> the text the CLI prints."""
    lines = [f"embed: {summary['rows_in']} images rows, {summary['success_rows']} success rows -> "
             f"{summary['embedded']} embedded, {summary['failed']} failed"]
    for reason, rows in summary["failure_reasons"].items():
        lines.append(f"  failed {reason:<22} {rows}")
    for group, info in summary["groups"].items():
        lines.append(f"  group {group:<8} {info['rows']:>10} rows  {info['model']}")
    for model, info in summary["models"].items():
        lines.append(f"  model {model}: {info['embedded']} embedded of {info['rows']}")
    for device, info in (summary.get("devices") or {}).items():
        lines.append(f"  device {device}: {info['tasks']} tasks, {info['rows']} rows")
    lines.append(f"  {summary['embed_seconds']} s, {summary['images_per_s']} images/s")
    return "\n".join(lines)
