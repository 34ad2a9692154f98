"""tag's row logic: batches of (sample_id, image_embedding, clip_model[, pwatermark]) -> the tags of each row,
and batches of (sample_id, image) -> pwatermark (no Spark).

INPUT  -> tag_frame: pandas batches of the input's rows joined with their embeddings (null where a row
          has none) and, where pwatermark is configured, the detector's score of the row's image (null
          where the row is not a dataset row, has no image or it does not decode); the configured heads
          (output column -> HeadSpec), the zero-shot prompts' text embeddings per clip_model with their
          boundary, and the tagger names.
          watermark_frame: pandas batches of (sample_id, image) of the dataset's rows, the detector's spec
OUTPUT -> tag_frame: one row per input row (schemas.TAGS): sample_id, punsafe, pwatermark, aesthetic_score
          (float, null where the head is not configured or the row has no embedding / score),
          nsfw_zero_shot (UNLIKELY / UNSURE / NSFW, null likewise), taggers (tag -> the versioned tagger
          that gave it); watermark_frame: one row per input row (WATERMARK_SCORES): sample_id, pwatermark

The two run apart: the detector where the image bytes are read (only its narrow scores move on to the
join by sample_id), the heads over the joined narrow rows. A head scores only what it can: a row without
an embedding, or with one that is not finite, gets a null, never a made-up score; heads and the
detector load once per Python worker (heads.load_head / watermark.load_watermark cache them).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from laion_spark import schemas as S
from laion_spark.tag.heads import HeadSpec, load_head
from laion_spark.tag.zero_shot import categorise

PUNSAFE, PWATERMARK, AESTHETIC, NSFW_ZERO_SHOT, TAGGERS = (
    "punsafe", "pwatermark", "aesthetic_score", "nsfw_zero_shot", "taggers")
SCORE_COLUMNS = (PUNSAFE, PWATERMARK, AESTHETIC)
# watermark_frame's output: a step between the stored images and the tags (DDL: no Spark import here)
WATERMARK_SCORES = f"{S.SAMPLE_ID} long, {PWATERMARK} float"


@dataclass(frozen=True)
class TagPlan:
    """What the tasks apply (picklable): heads by column, zero-shot prompts per clip_model, tagger names."""

    heads: dict = field(default_factory=dict)  # column -> HeadSpec
    prompts: dict = field(default_factory=dict)  # clip_model -> p x d float32 prompt embeddings
    boundary: int = 0
    taggers: dict = field(default_factory=dict)  # column -> tagger name (zero-shot: per model, below)
    zero_shot_name: str = ""  # e.g. clip_zero_shot_laion400m; the model is appended per row
    watermark: object = None  # a watermark.WatermarkSpec (its device resolved in each task), or None
    watermark_device: str = "cpu"  # tag.pwatermark.device: auto / cpu / cuda


def _matrices(values: pd.Series) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """A column of embedding arrays (None where missing) -> {length: (positions, n x length matrix)} of the
    usable vectors (finite, not all zero). Each length apart: a stray vector, wherever it sits in the
    batch, leaves the others scored, and is scored only by a head or prompt set of its own size."""
    by_length: dict[int, list[int]] = {}
    for i, v in enumerate(values):
        if v is not None and len(v):
            by_length.setdefault(len(v), []).append(i)
    out = {}
    for d, have in by_length.items():
        x = np.stack([np.asarray(values.iloc[i], dtype=np.float32) for i in have])
        finite = np.isfinite(x).all(axis=1) & (np.abs(x).sum(axis=1) > 0)
        if finite.any():
            out[d] = (np.asarray(have, np.int64)[finite], x[finite])
    return out


def tag_frame(frame: pd.DataFrame, plan: TagPlan) -> pd.DataFrame:
    """One batch (sample_id, image_embedding, clip_model[, pwatermark: the detector's score, null where it
    gave none]) -> its tags (schemas.TAGS' columns, same order)."""
    n = len(frame)
    out = {S.SAMPLE_ID: frame[S.SAMPLE_ID].astype("int64").to_numpy()}
    scores = {c: np.full(n, np.nan, np.float32) for c in SCORE_COLUMNS}
    nsfw: list = [None] * n
    models = frame[S.CLIP_MODEL].where(frame[S.CLIP_MODEL].notna(), None)
    space = models.fillna("").to_numpy()  # a vector without a clip_model is still scored by its size
    for model in pd.unique(space):
        rows = np.flatnonzero(space == model)
        model = model or None
        for d, (where, x) in _matrices(frame[S.IMAGE_EMBEDDING].iloc[rows].reset_index(drop=True)).items():
            at = rows[where]
            for column, spec in plan.heads.items():
                if d == load_head(spec).dimension:  # the driver checked every model's dimension
                    scores[column][at] = load_head(spec).score(x)
            prompts = plan.prompts.get(model)
            if prompts is not None and prompts.shape[1] == d:
                for i, category in zip(at, categorise(x, prompts, plan.boundary), strict=True):
                    nsfw[i] = category
    if plan.watermark is not None and PWATERMARK in frame.columns:
        scores[PWATERMARK][:] = frame[PWATERMARK].to_numpy(dtype=np.float64, na_value=np.nan)
    for c in SCORE_COLUMNS:
        out[c] = pd.array([None if np.isnan(v) else float(v) for v in scores[c]], dtype="Float32")
    out[NSFW_ZERO_SHOT] = nsfw
    # which tagger gave each value of the row (none for a null: nothing was given)
    columns = [*plan.heads, *([PWATERMARK] if plan.watermark is not None else [])]
    given = {c: ~np.isnan(scores[c]) for c in columns}
    out[TAGGERS] = [{**{c: plan.taggers[c] for c in columns if given[c][i]},
                     **({NSFW_ZERO_SHOT: f"{plan.zero_shot_name}/{m}"} if nsfw[i] is not None else {})}
                    for i, m in enumerate(models)]
    return pd.DataFrame(out)


def _watermark(plan: TagPlan):
    """The task's detector, on the device Spark gave the task (embed's rule), loaded once per worker."""
    import dataclasses

    import torch

    from laion_spark.embed.device import select_device, task_resources
    from laion_spark.tag.watermark import load_watermark

    choice = select_device(task_resources(), plan.watermark_device, "fp32", torch.cuda.device_count())
    return load_watermark(dataclasses.replace(plan.watermark, device=choice.device))


def watermark_frame(frame: pd.DataFrame, plan: TagPlan) -> pd.DataFrame:
    """One batch (sample_id, image) -> (sample_id, pwatermark): the detector's score, null where the image is
    missing or does not decode (watermark.WatermarkModel.score: batch_size images decoded at a time). Null,
    not NaN: Spark orders NaN above every number, so a NaN would win the max() over a duplicated row."""
    scores = _watermark(plan).score(list(frame[S.IMAGE]))
    return pd.DataFrame({S.SAMPLE_ID: frame[S.SAMPLE_ID].astype("int64").to_numpy(),
                         PWATERMARK: pd.array(scores, dtype="Float32")})


def _per_frame(fn, plan: TagPlan):
    """fn(frame, plan) -> the mapInPandas function applying it to every non-empty batch."""

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in frames:
            if len(frame):
                yield fn(frame, plan)

    return run


def tag_batches(plan: TagPlan):
    """-> the mapInPandas function: batches of joined rows -> batches of tags."""
    return _per_frame(tag_frame, plan)


def watermark_batches(plan: TagPlan):
    """-> the mapInPandas function: batches of (sample_id, image) -> batches of (sample_id, pwatermark)."""
    return _per_frame(watermark_frame, plan)


def head_spec(column: str, cfg_head) -> HeadSpec | None:
    """A TagHead config section -> its HeadSpec, None where it is not configured (no architecture)."""
    if not cfg_head.architecture:
        return None
    return HeadSpec(column=column, architecture=cfg_head.architecture, checkpoint=cfg_head.checkpoint,
                    dimension=cfg_head.dimension, clip_model=cfg_head.clip_model,
                    l2_normalize=cfg_head.l2_normalize, sigmoid=cfg_head.sigmoid)
