"""The tag job: dataset + embeddings -> tags (one row per dataset row: scores only, thresholds are export's).

INPUT  -> JobConfig with input (a dataset: filter's output, or any table with sample_id / SAMPLE_ID),
          tag.embeddings (`embeddings=URI`: the embed stage's output) and the heads in tag.*
OUTPUT -> tags at `output` (schemas.TAGS), and a summary dict: rows_in, tagged, rows
          without an embedding, per tag the rows scored and its tagger, the zero-shot categories

On the driver, before any task: every configured head is loaded once (a checkpoint that does not fit
its architecture, or a head whose dimension or clip_model differs from the embeddings', is a clear
error, not a failed task), and the zero-shot prompts are encoded with each embedding space's own CLIP
(named by the embeddings table's _summary.json). The tasks then need no model but the heads.
"""

from __future__ import annotations

import logging
import os

import numpy as np
from pyspark.sql import functions as F

from laion_spark import schemas as S
from laion_spark.config import ConfigError
from laion_spark.io import exists, fsspec_uri, write_table
from laion_spark.tag import transform as TT
from laion_spark.tag.heads import HeadError, load_head
from laion_spark.tag.zero_shot import PRESETS, preset, read_prompts

log = logging.getLogger(__name__)

USAGE = "laion-spark tag input=<dataset> embeddings=<embeddings> output=<tags>"


class TagError(RuntimeError):
    """The written tags do not hold one row per dataset row."""


def _heads(cfg) -> dict:
    t = cfg.tag
    out = {}
    for column, section in ((TT.PUNSAFE, t.punsafe), (TT.AESTHETIC, t.aesthetic_score)):
        spec = TT.head_spec(column, section)
        if spec is not None:
            out[column] = spec
    return out


def _watermark_spec(cfg):
    """tag.pwatermark -> a WatermarkSpec on the CPU (each task picks its own device), None if not configured."""
    from laion_spark.tag.watermark import WatermarkSpec

    w = cfg.tag.pwatermark
    if not w.architecture:
        return None
    return WatermarkSpec(checkpoint=w.checkpoint, architecture=w.architecture, image_size=w.image_size,
                         batch_size=w.batch_size)


def _prompts(cfg) -> tuple[list[str], int, str]:
    """-> (prompts, boundary, the tagger's name) of tag.nsfw_zero_shot.prompts (a preset or a file)."""
    name = cfg.tag.nsfw_zero_shot.prompts
    if name in PRESETS:
        prompts, boundary = preset(name)
        return prompts, boundary, f"clip_zero_shot_{name}"
    if not exists(name):
        raise ConfigError(f"tag.nsfw_zero_shot.prompts={name!r} is neither a preset ({sorted(PRESETS)}) nor a file")
    import fsspec

    from laion_spark.checksum import content_hash

    with fsspec.open(fsspec_uri(name), "r", encoding="utf-8") as fh:
        text = fh.read()
    try:
        prompts, boundary = read_prompts(text, name)
    except ValueError as exc:
        raise ConfigError(f"tag.nsfw_zero_shot.prompts: {exc}") from None
    return prompts, boundary, f"clip_zero_shot_{os.path.basename(name)}@{content_hash(name, 12)}"


def prepare(cfg) -> None:
    """Checks without Spark: the tables exist, outputs do not overlap inputs, every head loads, the
    prompts parse."""
    t = cfg.tag
    if not t.embeddings:
        raise ConfigError(f"embeddings is required: {USAGE}")
    out = fsspec_uri(cfg.output).rstrip("/")
    for name, uri in (("input", cfg.input), ("embeddings", t.embeddings)):
        if not exists(uri):
            raise ConfigError(f"{name} not found: {uri}")
        u = fsspec_uri(uri).rstrip("/")
        if u == out or u.startswith(out + "/") or out.startswith(u + "/"):
            raise ConfigError(f"output {cfg.output} overlaps {name} {uri}; write elsewhere")
    for column, spec in _heads(cfg).items():
        try:
            load_head(spec)
        except HeadError as exc:
            raise ConfigError(f"tag.{column}: {exc}") from None
    spec = _watermark_spec(cfg)
    if spec is not None:
        from laion_spark.tag.watermark import load_watermark

        try:
            load_watermark(spec)
        except HeadError as exc:
            raise ConfigError(f"tag.pwatermark: {exc}") from None
    if t.nsfw_zero_shot.enabled:
        _prompts(cfg)


def _model_spec(embeddings_uri: str, clip_model: str) -> dict | None:
    from laion_spark.index.job import _model_specs, _spec_from_name

    return _model_specs(embeddings_uri).get(clip_model) or _spec_from_name(clip_model)


def encode_prompts(spec: dict, prompts: list[str]) -> np.ndarray:
    """A model spec (model, pretrained, model_config) + prompts -> their L2-normalised text embeddings."""
    import torch

    from laion_spark.embed.cache import get_model
    from laion_spark.embed.model import ModelSpec
    from laion_spark.embed.text import encode_text

    loaded = get_model(ModelSpec(spec["model"], spec["pretrained"], spec.get("model_config") or "", "tag"), "cpu")
    with torch.inference_mode():
        x = encode_text(loaded.model, loaded.tokenizer(prompts).to(loaded.device), trim=True).float().cpu().numpy()
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _check_heads(heads: dict, spaces: dict) -> None:
    """Every head against every embedding space of the rows: its dimension, and its clip_model when given."""
    for column, spec in heads.items():
        head = load_head(spec)
        for (model, d), n in spaces.items():
            if spec.clip_model and model != spec.clip_model:
                raise ConfigError(f"tag.{column} expects embeddings of {spec.clip_model}, but {n} dataset rows have "
                                  f"{model}")
            if d != head.dimension:
                raise ConfigError(f"tag.{column} takes {head.dimension}-dimensional embeddings, but {n} dataset "
                                  f"rows of {model} have {d}")


def run(spark, cfg) -> dict:
    """The tag job (see _run), reading the image bytes in small Parquet batches (session.image_reader_batch)."""
    from laion_spark.session import image_reader_batch, session_confs

    with session_confs(spark, image_reader_batch(spark)):
        return _run(spark, cfg)


def _run(spark, cfg) -> dict:
    from laion_spark.filter.job import check_duplicates, read_embeddings
    from laion_spark.index.transform import normalise_names

    t = cfg.tag
    dataset = normalise_names(spark.read.parquet(cfg.input))
    if S.SAMPLE_ID not in dataset.columns:
        raise ConfigError(f"input {cfg.input} has no sample_id (or SAMPLE_ID) column")
    embeddings = read_embeddings(spark, t.embeddings)
    check_duplicates(embeddings, t.embeddings)
    watermark = _watermark_spec(cfg)
    if watermark is not None and S.IMAGE not in dataset.columns:
        raise ConfigError(f"tag.pwatermark classifies the stored images, and input {cfg.input} has no image column "
                          "(give the dataset filter wrote, which keeps download's image bytes)")
    keep = [S.SAMPLE_ID, *([S.IMAGE] if watermark is not None else [])]
    rows = dataset.select(*keep).join(
        embeddings.select(S.SAMPLE_ID, S.IMAGE_EMBEDDING, S.CLIP_MODEL), S.SAMPLE_ID, "left")
    spaces = {(r[S.CLIP_MODEL], r["d"]): r["n"] for r in rows.where(F.col(S.IMAGE_EMBEDDING).isNotNull())
              .groupBy(S.CLIP_MODEL, F.size(S.IMAGE_EMBEDDING).alias("d")).agg(F.count(F.lit(1)).alias("n")).collect()}
    heads = _heads(cfg)
    _check_heads(heads, spaces)
    taggers = {c: f"{s.architecture}/{load_head(s).checksum}" for c, s in heads.items()}
    if watermark is not None:
        from laion_spark.tag.watermark import load_watermark

        taggers[TT.PWATERMARK] = f"{watermark.architecture}/{load_watermark(watermark).checksum}"
    prompts, boundary, zero_name = {}, 0, ""
    if t.nsfw_zero_shot.enabled:
        texts, boundary, zero_name = _prompts(cfg)
        for model in sorted({m for m, _ in spaces if m is not None}):
            spec = _model_spec(t.embeddings, model)
            if spec is None:
                raise ConfigError(f"tag.nsfw_zero_shot needs the CLIP model of {model} to encode its prompts, "
                                  f"and {t.embeddings}/_summary.json does not name it; set "
                                  "tag.nsfw_zero_shot.enabled=false")
            from laion_spark.embed.model import ModelLoadError

            try:
                prompts[model] = encode_prompts(spec, texts)
            except ModelLoadError as exc:
                raise ConfigError(f"tag.nsfw_zero_shot needs the CLIP model of {model} to encode its prompts: {exc}; "
                                  "set tag.nsfw_zero_shot.enabled=false to tag without it") from None
    plan = TT.TagPlan(heads=heads, prompts=prompts, boundary=boundary, taggers=taggers, zero_shot_name=zero_name,
                      watermark=watermark, watermark_device=t.pwatermark.device)
    rows_in = dataset.count()
    partitions = max(1, -(-rows_in // t.rows_per_task))
    write_table(rows.repartition(partitions, S.SAMPLE_ID).mapInPandas(TT.tag_batches(plan), S.TAGS), cfg.output,
                S.TAGS, "tags", cfg.mode)
    written = spark.read.parquet(cfg.output)
    aggs = [F.count(F.lit(1)).alias("rows")] + [F.count(c).alias(c) for c in (*TT.SCORE_COLUMNS, TT.NSFW_ZERO_SHOT)]
    counts = written.agg(*aggs).first().asDict()
    if counts["rows"] != rows_in:
        raise TagError(f"row accounting failed: {rows_in} dataset rows but {counts['rows']} tags rows")
    categories = {r[TT.NSFW_ZERO_SHOT]: r["n"] for r in written.where(F.col(TT.NSFW_ZERO_SHOT).isNotNull())
                  .groupBy(TT.NSFW_ZERO_SHOT).agg(F.count(F.lit(1)).alias("n")).collect()}
    embedded = sum(spaces.values())
    summary = {
        "rows_in": rows_in, "tagged": counts["rows"], "without_embedding": rows_in - embedded,
        "scored": {c: counts[c] for c in (*TT.SCORE_COLUMNS, TT.NSFW_ZERO_SHOT)},
        "not_configured": [c for c in TT.SCORE_COLUMNS if c not in taggers],
        "taggers": {**taggers, **({TT.NSFW_ZERO_SHOT: zero_name} if zero_name else {})},
        "nsfw_zero_shot": categories,
        "embedding_spaces": {f"{m}:{d}": n for (m, d), n in spaces.items()},
    }
    log.info("tag: %s rows -> %s tagged (%s)", rows_in, counts["rows"], summary["scored"])
    return summary


def format_report(summary: dict) -> str:
    lines = [f"tag: {summary['rows_in']} dataset rows -> {summary['tagged']} tags rows "
             f"({summary['without_embedding']} without an embedding: null scores)"]
    for column, n in summary["scored"].items():
        tagger = summary["taggers"].get(column, "not configured: null")
        lines.append(f"  {column:<16} {n} scored by {tagger}")
    if summary["nsfw_zero_shot"]:
        lines.append(f"  nsfw_zero_shot categories: {summary['nsfw_zero_shot']}")
    return "\n".join(lines)
