"""tag's nsfw_zero_shot: LAION-400M's prompt list (kept with its lost comma, and fixed) and the top-2 rule,
against the rule computed here with torch's softmax and topk as LAION's filter did. No Spark."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from laion_spark.tag.zero_shot import NSFW, UNLIKELY, UNSURE, categorise, preset, read_prompts


def test_the_published_list_keeps_its_quirk_and_the_fixed_one_restores_the_comma():
    published, boundary = preset("laion400m")
    fixed, fixed_boundary = preset("laion400m_fixed")
    assert len(published) == 35 and len(fixed) == 36 and boundary == fixed_boundary == 19
    assert published[5] == "animal, bird, mammal, insectfashion, clothes"  # the two literals, joined
    assert fixed[5:7] == ["animal, bird, mammal, insect", "fashion, clothes"]
    assert published[18].startswith("porn, sex, sperm") and fixed[18] == "talk show"  # the quirk: 18 counts as neutral
    assert published[19:] == fixed[20:] and published[:5] == fixed[:5]
    with pytest.raises(KeyError, match="laion400m"):
        preset("nope")


def reference(images, prompts, boundary):
    """LAION's filter, restated: softmax(100 * cos) over the prompts, torch.topk(2), then the rule."""
    img = torch.nn.functional.normalize(torch.tensor(images, dtype=torch.float64), dim=1)
    txt = torch.nn.functional.normalize(torch.tensor(prompts, dtype=torch.float64), dim=1)
    probs = (100.0 * img @ txt.T).softmax(dim=-1)
    out = []
    for row in probs:
        a, b = row.topk(2).indices.tolist()
        out.append(UNLIKELY if a < boundary and b < boundary else NSFW if a >= boundary and b >= boundary else UNSURE)
    return out


def test_categories_follow_laions_rule():
    rng = np.random.default_rng(0)
    prompts = rng.standard_normal((35, 32))
    # images near one prompt or between two: every branch of the rule is reached
    picks = rng.integers(0, 35, size=(300, 2))
    images = prompts[picks[:, 0]] + prompts[picks[:, 1]] * rng.random((300, 1)) + rng.standard_normal((300, 32)) * 0.3
    got = categorise(images, prompts, 19)
    assert got == reference(images, prompts, 19)
    assert {UNLIKELY, UNSURE, NSFW} <= set(got)


def test_missing_or_broken_embeddings_get_no_category():
    prompts = np.eye(4)
    images = np.array([[1.0, 0.9, 0, 0], [0, 0, 0, 0], [np.nan, 1, 0, 0], [0, 0, 1, 0.9], [1, 0, 0.9, 0]])
    assert categorise(images, prompts, 2) == [UNLIKELY, None, None, NSFW, UNSURE]


def test_a_prompt_file():
    prompts, boundary = read_prompts("# mine\nneutral\na photo\n---\nexplicit\n\n", "p.txt")
    assert prompts == ["neutral", "a photo", "explicit"] and boundary == 2
    for bad, where in (("a\nb\n", "p.txt: give"), ("a\n---\nb\n---\nc", "p.txt:4: a second")):
        with pytest.raises(ValueError, match=where):
            read_prompts(bad, "p.txt")


def test_a_stray_vector_first_in_a_batch_leaves_the_others_scored():
    # a vector of another length (a corrupt row) heads the batch: the rest are still categorised by the
    # rule above, and the stray one, which no prompt set fits, gets no category (it used to fail the task)
    import pandas as pd

    from laion_spark.tag.transform import TagPlan, tag_frame

    rng = np.random.default_rng(3)
    prompts = rng.standard_normal((6, 16)).astype(np.float32)
    images = prompts[rng.integers(0, 6, 40)] + rng.standard_normal((40, 16)).astype(np.float32) * 0.4
    vectors = [rng.standard_normal(15).astype(np.float32), *images, None]
    frame = pd.DataFrame({"sample_id": np.arange(len(vectors)), "image_embedding": vectors,
                          "clip_model": ["m"] * len(vectors)})
    plan = TagPlan(prompts={"m": prompts}, boundary=3, zero_shot_name="zs")
    got = tag_frame(frame, plan)
    assert got["nsfw_zero_shot"].tolist() == [None, *reference(images, prompts, 3), None]
    assert got["taggers"][0] == {} and got["taggers"][1] == {"nsfw_zero_shot": "zs/m"}
    assert got["punsafe"].isna().all()
