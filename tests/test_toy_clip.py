"""Toy CLIP: held-out samples of the synthetic world -> similarities that mean something.

The model is loaded only through open_clip's public API (add_model_config, create_model_and_transforms
with a local checkpoint, get_tokenizer), the way the embed stage loads any real checkpoint. Captions
are checked by a parser written here, not by the world's caption generator.
"""

import hashlib
import re

import numpy as np
import pytest

from laion_spark.toy import world

SEED = 0
VALIDATION_N = 300
TEST_N = 400

# Written independently of world.py: the caption grammar the world promises.
_COUNT_WORDS = {"a": 1, "an": 1, "two": 2, "three": 3}
_COLOURS = {"red", "green", "blue", "yellow", "purple", "orange"}
_CAPTION = re.compile(
    r"^(?P<count>a|an|two|three) (?P<colour>\w+) (?P<shape>circle|square|triangle)(?P<plural>s?)"
    r"(?P<striped> on a striped background)?$"
)


def parse_caption(text: str) -> dict:
    """caption -> {colour, shape, count, background}; AssertionError when the text is not a world caption."""
    match = _CAPTION.match(text)
    assert match, f"not a caption of the world: {text!r}"
    count = _COUNT_WORDS[match["count"]]
    assert match["colour"] in _COLOURS, text
    assert (count > 1) == (match["plural"] == "s"), f"number disagrees with count: {text!r}"
    if count == 1:
        assert match["count"] == ("an" if match["colour"][0] in "aeiou" else "a"), text
    return {
        "colour": match["colour"],
        "shape": match["shape"],
        "count": count,
        "background": "striped" if match["striped"] else "plain",
    }


def _fingerprint(sample) -> str:
    return hashlib.sha256(sample.image.tobytes() + sample.caption.encode()).hexdigest()


def test_mismatch_changes_exactly_one_attribute():
    rng = np.random.default_rng(1)
    changed = {which: set() for which in world.MISMATCH_ATTRIBUTES}
    for sample in world.split("test", TEST_N, SEED):
        truth = parse_caption(sample.caption)
        assert truth == sample.attributes
        for which in world.MISMATCH_ATTRIBUTES:
            wrong = parse_caption(world.mismatch(sample.attributes, which, rng))
            differing = {key for key in truth if truth[key] != wrong[key]}
            assert differing == {which}, (sample.caption, wrong)
            changed[which].add(wrong[which])
    # Every alternative value turns up, so the mismatch is not stuck on one substitute.
    assert changed["colour"] == _COLOURS and changed["shape"] == {"circle", "square", "triangle"}
    assert changed["count"] == {1, 2, 3}


def test_world_is_deterministic_and_splits_are_disjoint():
    first = [_fingerprint(s) for s in world.split("test", 50, SEED)]
    again = [_fingerprint(world.sample(world.split_seed("test", SEED), i)) for i in range(50)]
    assert first == again
    assert np.array_equal(np.asarray(world.sample(5, 9).image), np.asarray(world.sample(5, 9).image))
    splits = {name: {_fingerprint(s) for s in world.split(name, 300, SEED)} for name in world.SPLITS}
    assert all(len(fingerprints) == 300 for fingerprints in splits.values())
    assert not splits["train"] & splits["validation"]
    assert not splits["train"] & splits["test"]
    assert not splits["validation"] & splits["test"]
    # Every combination of the world occurs, so the held-out splits test what training saw.
    seen = {parse_caption(s.caption)["count"] for s in world.split("train", 100, SEED)}
    assert seen == {1, 2, 3}


def test_packaged_checkpoint_is_the_current_recipes():
    # The tests and the demo use the committed checkpoint; a recipe change without `make toy-clip` would
    # silently train for minutes in every fresh checkout instead.
    from laion_spark.toy.train import MODEL_NAME, PACKAGED, ensure_checkpoint, recipe_hash

    packaged = PACKAGED / f"{MODEL_NAME}-{recipe_hash()}.pt"
    assert packaged.is_file(), "the toy CLIP's recipe changed: run `make toy-clip` and commit laion_spark/toy/weights/"
    assert ensure_checkpoint().checkpoint == str(packaged)
    assert len(list(PACKAGED.glob(f"{MODEL_NAME}-*.pt"))) == 1  # no stale copies shipped


@pytest.fixture(scope="session")
def toy_clip():
    import open_clip

    from laion_spark.toy.train import ensure_checkpoint

    checkpoint = ensure_checkpoint()
    open_clip.add_model_config(checkpoint.model_config)
    model, _, preprocess = open_clip.create_model_and_transforms(checkpoint.model, pretrained=checkpoint.checkpoint)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(checkpoint.model), checkpoint


def _similarities(model, preprocess, tokenizer, name: str, n: int) -> tuple[np.ndarray, dict]:
    """model, split -> cosine of each image with its caption, and with one mismatch per attribute."""
    import torch

    rng = np.random.default_rng([SEED, 11])
    samples = world.split(name, n, SEED)

    def encode_text(texts):
        features = model.encode_text(tokenizer(texts))
        return features / features.norm(dim=-1, keepdim=True)

    with torch.inference_mode():
        images = model.encode_image(torch.stack([preprocess(s.image) for s in samples]))
        images = images / images.norm(dim=-1, keepdim=True)
        true = (images * encode_text([s.caption for s in samples])).sum(1).numpy()
        wrong = {
            which: (images * encode_text([world.mismatch(s.attributes, which, rng) for s in samples])).sum(1).numpy()
            for which in world.MISMATCH_ATTRIBUTES
        }
    return true, wrong


@pytest.mark.slow
def test_true_caption_beats_its_one_attribute_mismatch(toy_clip):
    model, preprocess, tokenizer, _ = toy_clip
    true, wrong = _similarities(model, preprocess, tokenizer, "test", TEST_N)
    accuracy = {which: float(np.mean(true > sims)) for which, sims in wrong.items()}
    overall = float(np.mean([true > sims for sims in wrong.values()]))
    assert overall >= 0.95, accuracy
    assert min(accuracy.values()) >= 0.95, accuracy


@pytest.mark.slow
def test_validation_threshold_separates_test_pairs(toy_clip):
    model, preprocess, tokenizer, _ = toy_clip
    true, wrong = _similarities(model, preprocess, tokenizer, "validation", VALIDATION_N)
    false = np.concatenate(list(wrong.values()))
    candidates = np.unique(np.concatenate([true, false]))
    balanced = [(np.mean(true >= t) + np.mean(false < t)) / 2 for t in candidates]
    threshold = float(candidates[int(np.argmax(balanced))])

    true, wrong = _similarities(model, preprocess, tokenizer, "test", TEST_N)
    false = np.concatenate(list(wrong.values()))
    kept, dropped = float(np.mean(true >= threshold)), float(np.mean(false < threshold))
    assert kept >= 0.9 and dropped >= 0.9, (threshold, kept, dropped)


@pytest.mark.slow
def test_random_weights_fail_the_same_check(toy_clip):
    # The semantic checks can fail: the same architecture untrained is near chance.
    import open_clip
    import torch

    torch.manual_seed(0)
    _, preprocess, tokenizer, checkpoint = toy_clip
    model = open_clip.create_model(checkpoint.model).eval()
    true, wrong = _similarities(model, preprocess, tokenizer, "test", 200)
    assert float(np.mean([true > sims for sims in wrong.values()])) < 0.8


@pytest.mark.slow
def test_checkpoint_is_cached_and_small(toy_clip):
    from pathlib import Path

    from laion_spark.toy.train import RECIPE, ensure_checkpoint, recipe_hash

    checkpoint = toy_clip[3]
    assert ensure_checkpoint() == checkpoint  # second call: the cached file, no training
    assert Path(checkpoint.checkpoint).stat().st_size < 20 * 2**20
    assert recipe_hash(dict(RECIPE, steps=RECIPE["steps"] + 1)) != recipe_hash(RECIPE)
