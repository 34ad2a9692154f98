"""The toy tag heads (laion_spark/toy/heads.py) through the tag stage's own loaders, on toy-world samples
they never saw (the validation split), scored against the world's ground truth: held-out accuracy above
90% for each. No Spark."""

from __future__ import annotations

import io

import numpy as np
import pytest

from laion_spark.tag.heads import HeadSpec, load_head
from laion_spark.tag.watermark import WatermarkSpec, load_watermark
from laion_spark.toy import heads as H
from laion_spark.toy import world


@pytest.fixture(scope="module")
def toy_heads():
    return H.ensure_heads()


@pytest.fixture(scope="module")
def held_out():
    return world.split("validation", 400, 0, start=50_000)


def test_the_embedding_heads_learn_their_attribute(toy_heads, held_out):
    x = H._embed(held_out)
    punsafe = load_head(HeadSpec("punsafe", "mlp", toy_heads.punsafe, sigmoid=True)).score(x)
    unsafe = np.array([s.attributes["colour"] == H.RECIPE["unsafe_colour"] for s in held_out])
    assert 0.05 < unsafe.mean() < 0.5  # both classes are there
    assert np.mean((punsafe > 0.5) == unsafe) > 0.9
    aesthetic = load_head(HeadSpec("aesthetic_score", "linear", toy_heads.aesthetic_score)).score(x)
    count = np.array([s.attributes["count"] for s in held_out])
    counted = np.round((aesthetic - H.RECIPE["aesthetic_offset"]) / H.RECIPE["aesthetic_scale"])
    assert np.mean(counted == count) > 0.9
    assert np.mean((aesthetic >= 6) == (count >= 2)) > 0.9  # LAION's aesthetic subset keeps 2 or 3 shapes


def test_the_watermark_head_finds_the_overlay(toy_heads, held_out):
    rng = np.random.default_rng(99)
    marked = rng.random(len(held_out)) < 0.5
    data = []
    for s, m in zip(held_out, marked, strict=True):
        image = H.add_watermark(s.image, rng) if m else s.image.convert("RGB")
        buf = io.BytesIO()
        image.save(buf, "PNG")
        data.append(buf.getvalue())
    spec = WatermarkSpec(toy_heads.pwatermark, architecture=H.RECIPE["watermark_architecture"],
                         image_size=H.RECIPE["image_size"])
    pwatermark = load_watermark(spec).score(data)
    assert np.mean((pwatermark > 0.5) == marked) > 0.9
    assert all(k in toy_heads.metrics for k in ("punsafe_accuracy", "aesthetic_count_accuracy", "pwatermark_accuracy"))
