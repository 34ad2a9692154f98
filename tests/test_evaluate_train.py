"""evaluate's training and metrics, without Spark: open_clip's own trainer on hand-made webdataset shards,
and the held-out metrics on the packaged toy CLIP against a model that learnt nothing.

The shards are written here with tarfile (key.jpg + key.txt per sample, two shards), not by the export
stage, so the trainer's reading is checked against a format written apart from ours.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

pytest.importorskip("open_clip_train", reason="open_clip_torch >= 2.26.1 ships open_clip_train (evaluate extra)")
pytest.importorskip("webdataset", reason="webdataset (evaluate extra)")

from laion_spark.config import ConfigError
from laion_spark.evaluate import metrics
from laion_spark.evaluate.train_clip import (
    TrainError,
    TrainRecipe,
    drop_shard_end_markers,
    samples_seen,
    train,
    trainer_args,
)
from laion_spark.toy import world
from laion_spark.toy.train import MODEL_CONFIG, ensure_checkpoint

PER_SHARD = 40


def _write_shard(path: Path, samples) -> None:
    with tarfile.open(path, "w") as tar:
        for i, sample in enumerate(samples):
            key = f"{path.stem}{i:04d}"
            jpeg = io.BytesIO()
            sample.image.save(jpeg, "JPEG", quality=95)
            for ext, data in (("jpg", jpeg.getvalue()), ("txt", sample.caption.encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("shards")
    samples = world.split("train", 2 * PER_SHARD, seed=5)
    paths = [root / "00000.tar", root / "00001.tar"]
    _write_shard(paths[0], samples[:PER_SHARD])
    _write_shard(paths[1], samples[PER_SHARD:])
    return [str(p) for p in paths]


def test_open_clip_train_alone_stops_at_webdataset_shard_end_and_the_filter_fixes_it(shards) -> None:
    """The reason for drop_shard_end_markers: open_clip_train's reader raises at the first shard's end
    on the webdataset we pin; with the filter it yields every sample of both shards, each whole."""
    from open_clip_train import data

    with pytest.raises(KeyError, match="fname"):
        list(data.tarfile_to_samples_nothrow([{"url": u} for u in shards]))
    original = drop_shard_end_markers(data)
    try:
        samples = list(data.tarfile_to_samples_nothrow([{"url": u} for u in shards]))
    finally:
        data.group_by_keys_nothrow = original
    assert len(samples) == 2 * PER_SHARD
    assert {s["__key__"][:5] for s in samples} == {"00000", "00001"}
    assert all({"jpg", "txt"} <= set(s) for s in samples)


def test_a_subset_smaller_than_one_batch_is_refused() -> None:
    recipe = TrainRecipe(str(MODEL_CONFIG), batch_size=16)
    with pytest.raises(TrainError, match="fewer than one batch"):
        trainer_args(["a.tar"], 15, recipe, "/tmp/x", "n")
    with pytest.raises(TrainError, match="no shards"):
        trainer_args([], 100, recipe, "/tmp/x", "n")
    with pytest.raises(TrainError, match="less than one batch"):
        trainer_args(["a.tar"], 100, TrainRecipe(str(MODEL_CONFIG), samples_per_epoch=8, batch_size=16), "/tmp/x", "n")


def _state(checkpoint: str) -> dict:
    import torch

    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_the_trainer_reads_our_shards_repeats_them_and_is_repeatable(shards, tmp_path) -> None:
    import torch

    # 2 epochs of 48 samples (3 steps of 16) from 80: the second pass over the shards is needed
    recipe = TrainRecipe(str(MODEL_CONFIG), epochs=2, samples_per_epoch=48, batch_size=16, warmup=2, lr=1e-3,
                         seed=3)
    first = train(shards, 2 * PER_SHARD, recipe, str(tmp_path / "logs"), "first")
    second = train(shards, 2 * PER_SHARD, recipe, str(tmp_path / "logs"), "second")
    log = Path(first.log).read_text()
    assert "Train Epoch: 0 [" in log and "KeyError" not in log
    # open_clip_train logs the samples each epoch has seen: both epochs end at all 48
    assert "Train Epoch: 0 [48/48 (100%)]" in log and "Train Epoch: 1 [48/48 (100%)]" in log, log[-1500:]
    assert first.steps == 6 and first.checkpoint.endswith("epoch_2.pt")
    a, b = _state(first.checkpoint), _state(second.checkpoint)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "the same recipe gave different weights"
    # and it did train: the weights moved from the seed's initialisation
    one_step = TrainRecipe(str(MODEL_CONFIG), epochs=1, samples_per_epoch=16, batch_size=16, warmup=1, seed=3)
    other = train(shards, 2 * PER_SHARD, one_step, str(tmp_path / "logs"), "one-step")
    c = _state(other.checkpoint)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(TrainError, match="exists"):
        train(shards, 2 * PER_SHARD, recipe, str(tmp_path / "logs"), "first")


def test_prompts_are_the_world_captions_of_each_class() -> None:
    # written from the caption grammar, not from metrics.prompts' own loop
    count_two = {p("2") for p in metrics.prompts("count")}
    assert "two red circles" in count_two and "two orange triangles on a striped background" in count_two
    assert len(count_two) == 6 * 3 * 2
    blue = {p("blue") for p in metrics.prompts("colour")}
    assert blue == {world.caption(a) for a in world.all_attributes() if a["colour"] == "blue"}
    assert len(blue) == 3 * 3 * 2


@pytest.fixture(scope="module")
def samples():
    return metrics.heldout(120, seed=0)


def test_the_packaged_toy_clip_scores_far_above_chance_and_a_random_one_does_not(samples) -> None:
    import torch

    trained = metrics.measure(*metrics.load(str(MODEL_CONFIG), ensure_checkpoint().checkpoint), samples)
    torch.manual_seed(0)
    untrained = metrics.measure(*metrics.load(str(MODEL_CONFIG), None), samples)
    assert trained["images"] == untrained["images"] == 120
    assert trained["chance"]["zero_shot"] == {"colour": round(1 / 6, 4), "shape": round(1 / 3, 4),
                                              "count": round(1 / 3, 4)}
    for attribute in ("colour", "shape", "count"):
        assert trained["zero_shot"][attribute] >= 0.9, trained
        assert untrained["zero_shot"][attribute] <= 0.6, untrained
    assert trained["retrieval"]["recall@1"] >= 0.9 and trained["retrieval"]["recall@5"] >= 0.95
    assert untrained["retrieval"]["recall@5"] <= 0.3, untrained


def test_zero_shot_agrees_with_a_classifier_built_by_hand(samples) -> None:
    """Mean of each class's normalised caption embeddings, renormalised, argmax: written out here."""
    import torch

    model, preprocess, tokenizer = metrics.load(str(MODEL_CONFIG), ensure_checkpoint().checkpoint)
    few = samples[:40]
    got = metrics.measure(model, preprocess, tokenizer, few)["zero_shot"]["shape"]
    with torch.inference_mode():
        images = model.encode_image(torch.stack([preprocess(s.image) for s in few]), normalize=True)
        columns = []
        for shape in world.SHAPES:
            captions = [world.caption(a) for a in world.all_attributes() if a["shape"] == shape]
            mean = model.encode_text(tokenizer(captions), normalize=True).mean(0)
            columns.append(mean / mean.norm())
        predicted = (images @ torch.stack(columns, 1)).argmax(1).tolist()
    shapes = list(world.SHAPES)
    expected = sum(shapes[p] == s.attributes["shape"] for p, s in zip(predicted, few)) / len(few)
    assert got == round(expected, 4)


def test_remote_shards_of_several_subsets_are_copied_apart(shards, tmp_path) -> None:
    """Shards on a remote filesystem (fsspec's memory://) are copied to local disk; two subsets whose
    shards share names (every export writes 00000.tar, ...) keep their own bytes."""
    import fsspec

    from laion_spark.evaluate.subsets import local_shards

    memory = fsspec.filesystem("memory")
    one, two = f"memory://{tmp_path.name}/one", f"memory://{tmp_path.name}/two"
    try:
        memory.put(shards[1], f"{one}/00000.tar")
        memory.put(shards[0], f"{two}/00000.tar")
        memory.put(shards[1], f"{two}/00001.tar")
        work = tmp_path / "work"
        first, second = local_shards(one, work), local_shards(two, work)
        assert (first.samples, second.samples) == (PER_SHARD, 2 * PER_SHARD)
        assert len(set(first.shards + second.shards)) == 3
        for copied, original in zip(first.shards + second.shards, [shards[1], shards[0], shards[1]], strict=True):
            assert Path(copied).is_relative_to(work) and Path(copied).read_bytes() == Path(original).read_bytes()
        with pytest.raises(ConfigError, match="no webdataset shards"):
            local_shards(f"memory://{tmp_path.name}/none", work)
    finally:
        memory.rm(f"/{tmp_path.name}", recursive=True)


def test_samples_seen_reads_each_epochs_last_progress_line(tmp_path) -> None:
    """open_clip_train's progress lines (padded counts, every n steps and at each epoch's end) -> samples trained."""
    log = tmp_path / "out.log"
    assert samples_seen(log) == 0  # no log: nothing trained
    log.write_text("2026-12-07,03:00:00 | INFO | Start epoch 0\n"
                   "2026-12-07,03:00:01 | INFO | Train Epoch: 0 [  32/4096 (1%)] Data (t): 0.1 Loss: 3.4\n"
                   "2026-12-07,03:00:09 | INFO | Train Epoch: 0 [4096/4096 (100%)] Data (t): 0.1 Loss: 2.1\n"
                   "2026-12-07,03:00:09 | INFO | Start epoch 1\n"
                   "2026-12-07,03:00:10 | INFO | Train Epoch: 1 [ 416/4096 (10%)] Data (t): 0.1 Loss: 2.0\n"
                   "2026-12-07,03:00:11 | INFO | Train Epoch: 1 [1024/4096 (25%)] Data (t): 0.1 Loss: 1.9\n")
    assert samples_seen(log) == 4096 + 1024
