"""Train the toy CLIP on the synthetic world: recipe -> `toy-clip-<hash>.pt`, an open_clip checkpoint.

    python -m laion_spark.toy.train [--out DIR]

The model is the open_clip architecture `toy-clip` (toy-clip.json beside this file, about 3.6M
parameters, open_clip's own SimpleTokenizer and 64x64 preprocessing). Training is contrastive and
deterministic on CPU: fixed seeds, two threads, deterministic algorithms, freshly rendered batches
from the world's train split. Every step scores each image against every caption of the world
(108 of them), so each image meets all of its one-attribute mismatches as hard negatives.

The checkpoint is a plain state_dict, loadable by open_clip like any real one:

    open_clip.add_model_config(ckpt.model_config)
    model, _, preprocess = open_clip.create_model_and_transforms("toy-clip", pretrained=ckpt.checkpoint)
    tokenizer = open_clip.get_tokenizer("toy-clip")

`ensure_checkpoint()` returns the packaged checkpoint (laion_spark/toy/weights/, committed: 7 MB of
fp16 weights, so neither the tests nor the demo train) when it was made by the current recipe
(config, parameters, this module's and the world's source), else the cached one under build/, and
trains one when neither exists. After a change to the recipe, `make toy-clip`
(`python -m laion_spark.toy.train --package`) trains and writes the new packaged checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from laion_spark.toy import world

logger = logging.getLogger(__name__)

MODEL_NAME = "toy-clip"
MODEL_CONFIG = Path(__file__).with_name(f"{MODEL_NAME}.json")
# The committed checkpoint: fp16 halves it (14 -> 7 MB); open_clip loads it into the fp32 model as it is.
PACKAGED = Path(__file__).with_name("weights")

# Everything that decides the weights. A change here (or in the sources hashed with it) retrains.
RECIPE = {
    "seed": 0,
    # One thread: with other processes on a 2-core machine, two OpenMP threads measured 5-10x slower
    # per step than one (they wait on each other's time slices); a fixed count also fixes reduction order.
    "threads": 1,
    "steps": 1400,
    "batch_size": 64,
    "lr": 1e-3,
    "weight_decay": 0.05,
    "grad_clip": 1.0,
    "warmup_steps": 25,
    "sigmoid_weight": 1.0,
    "init_logit_scale": 1 / 0.07,
    "eval_samples": 300,
}


class ToyCheckpoint(NamedTuple):
    model: str
    model_config: str
    checkpoint: str


def recipe_hash(recipe: dict = RECIPE) -> str:
    """recipe -> 16 hex digits over the model config, the recipe and the source of this module and the world."""
    digest = hashlib.sha256()
    for part in (
        MODEL_CONFIG.read_bytes(),
        json.dumps(recipe, sort_keys=True).encode(),
        Path(__file__).read_bytes(),
        Path(world.__file__).read_bytes(),
    ):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


def default_directory() -> Path:
    """() -> build/toy-clip/ in the source checkout, or ~/.cache/laion-spark/toy-clip for an installed package."""
    root = Path(__file__).resolve().parents[2]
    if (root / "setup.py").is_file():
        return root / "build" / MODEL_NAME
    return Path.home() / ".cache" / "laion-spark" / MODEL_NAME


def _load_model():
    import open_clip

    open_clip.add_model_config(str(MODEL_CONFIG))
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME)
    return model, preprocess, open_clip.get_tokenizer(MODEL_NAME)


def _batch(step: int, batch_size: int, seed: int, preprocess, caption_index: dict):
    import torch

    samples = world.split("train", batch_size, seed, start=step * batch_size)
    images = torch.stack([preprocess(s.image) for s in samples])
    labels = torch.tensor([caption_index[s.caption] for s in samples])
    return images, labels


def _loss(image_features, text_features, labels, logit_scale, logit_bias, sigmoid_weight: float):
    """Normalised image features (B, D), all captions' features (C, D), caption labels (B,) -> scalar loss.

    Image -> caption: softmax over every caption of the world, so one-attribute mismatches are
    always among the negatives. Caption -> image: softmax over the batch's images, with every image
    of that caption a positive (a batch often holds the same caption twice). The sigmoid term
    (SigLIP's loss, with a bias kept out of the model) pushes true pairs above and mismatches below
    one global cosine, which is what the filter's threshold needs.
    """
    import torch
    import torch.nn.functional as F

    logits = logit_scale * image_features @ text_features.T  # (B, C)
    image_to_text = F.cross_entropy(logits, labels)
    present = torch.unique(labels)
    positives = (labels[None, :] == present[:, None]).float()  # (P, B)
    text_logits = logits[:, present].T  # (P, B)
    text_to_image = -(positives / positives.sum(1, keepdim=True) * F.log_softmax(text_logits, 1)).sum(1).mean()
    targets = F.one_hot(labels, text_features.shape[0]).float()
    sigmoid = F.binary_cross_entropy_with_logits(logits + logit_bias, targets, reduction="sum") / len(labels)
    return (image_to_text + text_to_image) / 2 + sigmoid_weight * sigmoid


def evaluate(model, preprocess, tokenizer, name: str, n: int, seed: int) -> dict:
    """model, split name, n -> one-attribute discrimination accuracy and the best single-threshold accuracy.

    For each image, its true caption against one mismatch per attribute (colour, shape, count).
    """
    import torch

    rng = np.random.default_rng([seed, 7])
    samples = world.split(name, n, seed)
    with torch.inference_mode():
        images = model.encode_image(torch.stack([preprocess(s.image) for s in samples]), normalize=True)
        true = model.encode_text(tokenizer([s.caption for s in samples]), normalize=True)
        true_sim = (images * true).sum(1)
        correct, false_sims = {}, []
        for which in world.MISMATCH_ATTRIBUTES:
            texts = [world.mismatch(s.attributes, which, rng) for s in samples]
            sim = (images * model.encode_text(tokenizer(texts), normalize=True)).sum(1)
            correct[which] = float((true_sim > sim).float().mean())
            false_sims.append(sim)
    false_sim = torch.cat(false_sims)
    # Best threshold by balanced accuracy: kept true pairs and dropped mismatches weigh the same.
    best = (0.0, 0.0)
    for threshold in torch.cat([true_sim, false_sim]).tolist():
        balanced = ((true_sim >= threshold).float().mean() + (false_sim < threshold).float().mean()) / 2
        best = max(best, (float(balanced), threshold))
    return {
        "pair_accuracy": correct,
        "threshold": best[1],
        "threshold_balanced_accuracy": best[0],
        "true_similarity_mean": float(true_sim.mean()),
        "mismatch_similarity_mean": float(false_sim.mean()),
    }


def train(recipe: dict = RECIPE):
    """recipe -> (trained open_clip model, metrics dict); deterministic for a given recipe, machine and torch."""
    import torch

    torch.manual_seed(recipe["seed"])
    torch.set_num_threads(recipe["threads"])
    # warn_only: a CPU op without a deterministic variant should warn, not stop the build.
    torch.use_deterministic_algorithms(True, warn_only=True)
    model, preprocess, tokenizer = _load_model()
    model.train()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(recipe["init_logit_scale"]))
    captions = [world.caption(a) for a in world.all_attributes()]
    caption_index = {c: i for i, c in enumerate(captions)}
    tokens = tokenizer(captions)
    logit_bias = torch.nn.Parameter(torch.tensor(-5.0))  # starts below every logit: most pairs are negatives
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2] + [logit_bias]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe["lr"],
    )
    steps, warmup = recipe["steps"], recipe["warmup_steps"]

    def lr_factor(step):
        # Linear warmup, then cosine decay to zero: the usual CLIP schedule.
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    started, cpu_started = time.perf_counter(), time.process_time()
    for step in range(steps):
        images, labels = _batch(step, recipe["batch_size"], recipe["seed"], preprocess, caption_index)
        image_features = model.encode_image(images, normalize=True)
        text_features = model.encode_text(tokens, normalize=True)
        loss = _loss(
            image_features, text_features, labels, model.logit_scale.exp(), logit_bias, recipe["sigmoid_weight"]
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])  # no ViT blow-up at this lr
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the temperature
        if step % 50 == 0 or step == steps - 1:
            logger.info("step %d/%d loss %.4f scale %.1f", step, steps, loss.item(), model.logit_scale.exp().item())
    train_seconds = time.perf_counter() - started
    train_cpu_seconds = time.process_time() - cpu_started
    model.eval()
    metrics = {
        "recipe": recipe,
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu_seconds, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "validation": evaluate(model, preprocess, tokenizer, "validation", recipe["eval_samples"], recipe["seed"]),
    }
    return model, metrics


@contextlib.contextmanager
def _locked(directory: Path):
    # Two processes asking at once (a test run and `make toy-clip`) train once, not twice.
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_checkpoint(directory: str | os.PathLike | None = None, recipe: dict = RECIPE) -> ToyCheckpoint:
    """directory (default: the packaged checkpoint, else default_directory()) -> ToyCheckpoint; trains only
    when no checkpoint of this recipe exists there.

    The checkpoint and its metrics are written under a temporary name and renamed, so an
    interrupted run leaves no half-written file that a later call would take for finished.
    """
    stem = f"{MODEL_NAME}-{recipe_hash(recipe)}"
    if directory is None and (PACKAGED / f"{stem}.pt").is_file():
        return ToyCheckpoint(MODEL_NAME, str(MODEL_CONFIG), str(PACKAGED / f"{stem}.pt"))
    directory = Path(directory) if directory is not None else default_directory()
    checkpoint = directory / f"{stem}.pt"
    result = ToyCheckpoint(MODEL_NAME, str(MODEL_CONFIG), str(checkpoint))
    if checkpoint.is_file():
        return result
    with _locked(directory):
        if checkpoint.is_file():  # another process finished while we waited for the lock
            return result
        import torch

        logger.info("training %s into %s", MODEL_NAME, checkpoint)
        model, metrics = train(recipe)
        metrics["checkpoint_bytes"] = _write_atomically(checkpoint, lambda path: torch.save(model.state_dict(), path))
        _write_atomically(
            directory / f"{stem}.json", lambda path: Path(path).write_text(json.dumps(metrics, indent=2) + "\n")
        )
    return result


def _write_atomically(target: Path, write) -> int:
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        size = temporary.stat().st_size
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return size


def package(trained: ToyCheckpoint, recipe: dict = RECIPE) -> ToyCheckpoint:
    """A trained checkpoint (fp32, under build/) -> the packaged fp16 copy in laion_spark/toy/weights/ with
    its metrics re-measured on the fp16 weights; older packaged checkpoints are removed."""
    import open_clip
    import torch

    stem = f"{MODEL_NAME}-{recipe_hash(recipe)}"
    state = torch.load(trained.checkpoint, map_location="cpu", weights_only=True)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    PACKAGED.mkdir(exist_ok=True)
    target = PACKAGED / f"{stem}.pt"
    size = _write_atomically(target, lambda path: torch.save(half, path))
    open_clip.add_model_config(str(MODEL_CONFIG))
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=str(target))
    model.eval()
    source = Path(trained.checkpoint).with_suffix(".json")
    metrics = json.loads(source.read_text()) if source.is_file() else {"recipe": recipe}
    metrics.update(weights_dtype="float16", checkpoint_bytes=size, validation=evaluate(
        model, preprocess, open_clip.get_tokenizer(MODEL_NAME), "validation", recipe["eval_samples"], recipe["seed"]))
    _write_atomically(target.with_suffix(".json"), lambda path: Path(path).write_text(json.dumps(metrics, indent=2)
                                                                                       + "\n"))
    for old in PACKAGED.glob(f"{MODEL_NAME}-*"):
        if old.stem != stem:
            old.unlink()
    return ToyCheckpoint(MODEL_NAME, str(MODEL_CONFIG), str(target))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="checkpoint directory (default: build/toy-clip/)")
    parser.add_argument("--package", action="store_true",
                        help="train into build/ (or reuse it) and write the fp16 copy to laion_spark/toy/weights/")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = ensure_checkpoint(args.out or (default_directory() if args.package else None))
    if args.package:
        result = package(result)
    metrics_path = Path(result.checkpoint).with_suffix(".json")
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    validation = metrics.get("validation", {})
    logger.info("model        %s  (%s)", result.model, result.model_config)
    logger.info("checkpoint   %s  (%s bytes)", result.checkpoint, metrics.get("checkpoint_bytes", "?"))
    logger.info("training     %s s wall, %s s CPU", metrics.get("train_seconds", "?"),
                metrics.get("train_cpu_seconds", "?"))
    logger.info("validation   true caption above its mismatch: %s", validation.get("pair_accuracy"))
    logger.info("             threshold %.3f: balanced accuracy %.3f", validation.get("threshold", float("nan")),
                validation.get("threshold_balanced_accuracy", float("nan")))

if __name__ == "__main__":
    main()
