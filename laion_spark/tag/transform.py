"""tag's row logic: batches of (sample_id, image_embedding, clip_model) -> the tags of each row (no Spark).

INPUT  -> pandas batches of the dataset's rows joined with their embeddings (null where a row has
          none) and, where pwatermark is configured, the stored image bytes; the configured heads
          (output column -> HeadSpec), the zero-shot prompts' text embeddings per clip_model with
          their boundary, the watermark detector's spec, and the tagger names
OUTPUT -> one row per input row (schemas.TAGS): sample_id, punsafe, pwatermark, aesthetic_score
          (float, null where the head is not configured or the row has no embedding / image),
          nsfw_zero_shot (UNLIKELY / UNSURE / NSFW, null likewise), taggers (tag -> the versioned
          tagger that gave it)

A head scores only what it can: a row without an embedding, or with one that is not finite, gets a
null, never a made-up score; heads load once per Python worker (heads.load_head caches them).
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
    """One batch (sample_id, image_embedding, clip_model) -> its tags (schemas.TAGS' columns, same order)."""
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
    if plan.watermark is not None and S.IMAGE in frame.columns:
        scores[PWATERMARK][:] = _watermark(plan).score(list(frame[S.IMAGE]))
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


def tag_batches(plan: TagPlan):
    """-> the mapInPandas function: batches of joined rows -> batches of tags."""

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in frames:
            if len(frame):
                yield tag_frame(frame, plan)

    return run


def head_spec(column: str, cfg_head) -> HeadSpec | None:
    """A TagHead config section -> its HeadSpec, None where it is not configured (no architecture)."""
    if not cfg_head.architecture:
        return None
    return HeadSpec(column=column, architecture=cfg_head.architecture, checkpoint=cfg_head.checkpoint,
                    dimension=cfg_head.dimension, clip_model=cfg_head.clip_model,
                    l2_normalize=cfg_head.l2_normalize, sigmoid=cfg_head.sigmoid)
