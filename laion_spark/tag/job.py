"""The tag job: dataset + embeddings -> tags (one row per input row: scores only, thresholds are export's).

INPUT  -> JobConfig with input (the rows to tag: filter's dataset, download's images, or any table with
          sample_id / SAMPLE_ID), tag.embeddings (`embeddings=URI`: the embed stage's output), tag.dataset
          (`dataset=URI`: filter's dataset, the rows pwatermark classifies; empty: the input is the
          dataset) and the heads in tag.*
OUTPUT -> tags at `output` (schemas.TAGS), and a summary dict: rows_in, tagged, rows without an
          embedding, per tag the rows scored and its tagger, the images the watermark detector was
          given, the zero-shot categories

On the driver, before any task: every configured head is loaded once (a checkpoint that does not fit
its architecture, or a head whose dimension or clip_model differs from the embeddings', is a clear
error, not a failed task), and the zero-shot prompts are encoded with each embedding space's own CLIP
(named by the embeddings table's _summary.json). The tasks then need no model but the heads and the
watermark detector.

The plan moves no image bytes (tag_table): the watermark detector runs where the dataset's bytes are
read and only (sample_id, pwatermark) is shuffled; the input's sample_ids, those scores and the
embeddings meet in joins on sample_id, each side hash-partitioned once into rows_per_task-sized tasks,
where the embedding heads run. The heads score every input row (the report and the demo read punsafe for
rejected rows too; they are cheap); the detector, a CNN over the decoded image, only the dataset's
rows, which are the ones released: a row of the input outside tag.dataset gets a null pwatermark.
"""

from __future__ import annotations

import logging
import os
from typing import NamedTuple

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
    """The written tags do not hold one row per input row."""


class Tagging(NamedTuple):
    """What tag computes before it writes (tag_table): the tags DataFrame and what the summary needs."""

    tags: object  # DataFrame of schemas.TAGS, one row per input row
    rows_in: int
    spaces: dict  # (clip_model, dimension) -> input rows with such an embedding
    taggers: dict  # column -> versioned tagger name
    zero_shot_name: str
    watermark: object  # a pyspark Observation of the rows handed to the detector (`images`), None: not configured

    def watermark_images(self) -> int | None:
        """Rows handed to the watermark detector, once `tags` has run; None where it is not configured or
        Spark reported no count (adaptive execution drops the count where it skips an empty stage, and a
        Connect server may return none for a write)."""
        if self.watermark is None:
            return None
        try:
            value = self.watermark.get.get("images")  # waits for the first action over `tags`
        except Exception:  # noqa: BLE001  (an empty row from the JVM: nothing reported)
            return None
        return None if value is None else int(value)


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
    tables = [("input", cfg.input), ("embeddings", t.embeddings)]
    if dataset_uri(cfg):
        tables.append(("tag.dataset", dataset_uri(cfg)))
    for name, uri in tables:
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


def dataset_uri(cfg) -> str:
    """tag.dataset: filter's dataset, the rows the watermark detector classifies ('' : the input is the
    dataset)."""
    return cfg.tag.dataset or ""


def run(spark, cfg) -> dict:
    """The tag job (see _run), reading the image bytes in small Parquet batches (session.image_reader_batch)."""
    from laion_spark.session import image_reader_batch, session_confs

    with session_confs(spark, image_reader_batch(spark)):
        return _run(spark, cfg)


def _read_rows(spark, uri: str, name: str):
    from laion_spark.index.transform import normalise_names

    df = normalise_names(spark.read.parquet(uri))
    if S.SAMPLE_ID not in df.columns:
        raise ConfigError(f"{name} {uri} has no sample_id (or SAMPLE_ID) column")
    return df


def tag_table(spark, cfg, dataset: str | None = None) -> Tagging:
    """cfg -> the tags DataFrame that _run writes (nothing written; the driver-side checks done), with what
    the summary needs. `dataset`: filter's dataset URI, the rows the detector classifies (None: tag.dataset;
    '': the input itself).

    Plan (every join on sample_id, each side hash-partitioned into the same rows_per_task-sized tasks,
    so each side is exchanged once and the joins add no exchange of their own):
      input's sample_ids  LEFT JOIN  (sample_id, pwatermark) of the dataset's rows with an image
                          LEFT JOIN  embeddings (sample_id, image_embedding, clip_model)
      -> mapInPandas(tag_frame): the embedding heads and the zero-shot rule.
    The detector's (sample_id, pwatermark) comes from a mapInPandas straight over the scan of the
    dataset's (sample_id, image): the bytes are decoded where they are read and never exchanged."""
    from laion_spark.filter.job import check_duplicates, read_embeddings

    t = cfg.tag
    dataset = dataset_uri(cfg) if dataset is None else dataset
    rows_df = _read_rows(spark, cfg.input, "input")
    embeddings = read_embeddings(spark, t.embeddings)
    check_duplicates(embeddings, t.embeddings)
    watermark = _watermark_spec(cfg)
    images = None
    if watermark is not None:
        images = _read_rows(spark, dataset, "tag.dataset") if dataset else rows_df
        if S.IMAGE not in images.columns:
            where = f"tag.dataset {dataset}" if dataset else f"input {cfg.input}"
            raise ConfigError(f"tag.pwatermark classifies the stored images, and {where} has no image column "
                              "(give the dataset filter wrote, which keeps download's image bytes)")
    ids = rows_df.select(S.SAMPLE_ID)
    # the embedding spaces of the input's rows, for the heads' checks: only (sample_id, clip_model, its
    # dimension) is shuffled for this, never the vectors
    sizes = (embeddings.where(F.col(S.IMAGE_EMBEDDING).isNotNull())
             .select(S.SAMPLE_ID, S.CLIP_MODEL, F.size(S.IMAGE_EMBEDDING).alias("d")))
    spaces = {(r[S.CLIP_MODEL], r["d"]): r["n"] for r in ids.join(sizes, S.SAMPLE_ID)
              .groupBy(S.CLIP_MODEL, "d").agg(F.count(F.lit(1)).alias("n")).collect()}
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
    rows_in = rows_df.count()
    partitions = max(1, -(-rows_in // t.rows_per_task))
    # every side hash-partitioned by sample_id into `partitions`, so each is exchanged once and the joins
    # add none; the detector's scores joined first: a side that is no exchange itself (the aggregate) is the
    # one Spark lines the others up with, so the tasks stay rows_per_task-sized where that is fewer than
    # the session's shuffle partitions (two exchanges alone would be re-made with spark.sql.shuffle.partitions)
    rows = ids.repartition(partitions, S.SAMPLE_ID)
    observed = None
    if watermark is not None:
        from pyspark.sql import Observation

        observed = Observation()
        scores = (images.select(S.SAMPLE_ID, S.IMAGE).where(F.col(S.IMAGE).isNotNull())
                  .mapInPandas(TT.watermark_batches(plan), TT.WATERMARK_SCORES)
                  .observe(observed, F.count(F.lit(1)).alias("images")))
        # one score per sample_id, whatever the dataset holds twice (a union of tables): a join that
        # repeated the row would break the accounting; max() is deterministic, and skips an undecodable copy
        scores = (scores.repartition(partitions, S.SAMPLE_ID).groupBy(S.SAMPLE_ID)
                  .agg(F.max(TT.PWATERMARK).alias(TT.PWATERMARK)))
        rows = rows.join(scores, S.SAMPLE_ID, "left")
    rows = rows.join(embeddings.select(S.SAMPLE_ID, S.IMAGE_EMBEDDING, S.CLIP_MODEL)
                     .repartition(partitions, S.SAMPLE_ID), S.SAMPLE_ID, "left")
    tags = rows.mapInPandas(TT.tag_batches(plan), S.TAGS)
    return Tagging(tags=tags, rows_in=rows_in, spaces=spaces, taggers=taggers, zero_shot_name=zero_name,
                   watermark=observed)


def _run(spark, cfg) -> dict:
    tagging = tag_table(spark, cfg)
    rows_in, spaces, taggers, zero_name = tagging.rows_in, tagging.spaces, tagging.taggers, tagging.zero_shot_name
    write_table(tagging.tags, cfg.output, S.TAGS, "tags", cfg.mode)
    written = spark.read.parquet(cfg.output)
    aggs = [F.count(F.lit(1)).alias("rows")] + [F.count(c).alias(c) for c in (*TT.SCORE_COLUMNS, TT.NSFW_ZERO_SHOT)]
    counts = written.agg(*aggs).first().asDict()
    if counts["rows"] != rows_in:
        raise TagError(f"row accounting failed: {rows_in} input rows but {counts['rows']} tags rows")
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
    if tagging.watermark is not None:
        # the dataset's rows with an image: what the detector was given (rows outside tag.dataset: nothing)
        summary["watermark_images"] = tagging.watermark_images()
    log.info("tag: %s rows -> %s tagged (%s)", rows_in, counts["rows"], summary["scored"])
    return summary


def format_report(summary: dict) -> str:
    lines = [f"tag: {summary['rows_in']} dataset rows -> {summary['tagged']} tags rows "
             f"({summary['without_embedding']} without an embedding: null scores)"]
    for column, n in summary["scored"].items():
        tagger = summary["taggers"].get(column, "not configured: null")
        lines.append(f"  {column:<16} {n} scored by {tagger}")
    if summary.get("watermark_images") is not None:
        lines.append(f"  pwatermark's detector was given {summary['watermark_images']} images: the dataset's rows "
                     "with stored bytes (other rows: null)")
    if summary["nsfw_zero_shot"]:
        lines.append(f"  nsfw_zero_shot categories: {summary['nsfw_zero_shot']}")
    return "\n".join(lines)
