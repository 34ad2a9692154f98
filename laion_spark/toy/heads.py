"""Toy tag heads for the tests and the demo, trained on the toy world: recipe -> three checkpoints.

    python -m laion_spark.toy.heads [--out DIR] [--package]

Each head plays one of LAION's on the toy world, in LAION's own formats, so the tag stage loads them
exactly as it loads LAION's files:
  punsafe          "unsafe" = a chosen colour (red): our `mlp` layout (Linear(d, 32) -> ReLU ->
                   Linear(32, 1), sigmoid) over the toy CLIP's image embedding
  aesthetic_score  2 x the shape count + 2.5 (4.5, 6.5, 8.5: LAION's "aesthetic >= 6" keeps two or three
                   shapes, with a margin on each side): the
                   v1 layout (`nn.Linear(d, 1)`) over the L2-normalised embedding
  pwatermark       a text overlay drawn on the image: timm's `test_efficientnet` with LAION's three-layer
                   classifier (256 -> 64 -> 32 -> 2, index 0 = watermark) over the image itself
Training is deterministic on CPU (fixed seeds, one thread, deterministic algorithms) from the world's
train split; `metrics` holds the held-out accuracy on its test split. ensure_heads() returns the
committed copy in laion_spark/toy/weights/ when it is of the current recipe (hash of the recipe, this
file, the world and the toy CLIP), else trains once into build/toy-heads/ (about 30 s) and reuses that.
`--package` refreshes the committed copy after a recipe change.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from laion_spark.toy import world

PACKAGED = Path(__file__).with_name("weights")
HEAD_NAMES = ("punsafe", "aesthetic_score", "pwatermark")

log = logging.getLogger(__name__)

RECIPE = {
    "seed": 0, "threads": 1, "train": 2400, "test": 600, "unsafe_colour": "red", "aesthetic_scale": 2.0,
    "aesthetic_offset": 2.5,
    "embedding_steps": 600, "embedding_lr": 0.01, "watermark_epochs": 4, "watermark_batch": 64,
    "watermark_lr": 0.003, "watermark_architecture": "test_efficientnet", "image_size": 64,
}
OVERLAY_TEXT = ("SAMPLE", "(c) toy", "stock", "PREVIEW", "watermark")


class ToyHeads(NamedTuple):
    punsafe: str
    aesthetic_score: str
    pwatermark: str
    metrics: dict

    def overrides(self) -> list[str]:
        """-> the tag stage's config overrides that load these heads."""
        return ["tag.punsafe.architecture=mlp", f"tag.punsafe.checkpoint={self.punsafe}", "tag.punsafe.sigmoid=true",
                "tag.aesthetic_score.architecture=linear", f"tag.aesthetic_score.checkpoint={self.aesthetic_score}",
                f"tag.pwatermark.architecture={RECIPE['watermark_architecture']}",
                f"tag.pwatermark.checkpoint={self.pwatermark}", f"tag.pwatermark.image_size={RECIPE['image_size']}"]


def add_watermark(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """An image -> a copy with a stock-photo watermark: a word in light text with a dark edge, twice
    (tiled, as stock sites do), placed and worded by rng."""
    from PIL import ImageFont

    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    text = OVERLAY_TEXT[int(rng.integers(len(OVERLAY_TEXT)))]
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow without FreeType sizes: its bitmap font
        font = ImageFont.load_default()
    shade = int(rng.integers(225, 256))
    for row in (int(rng.integers(2, 20)), int(rng.integers(34, 50))):
        x = int(rng.integers(0, 16))
        draw.text((x, row), text, fill=(shade, shade, shade), font=font, stroke_width=1, stroke_fill=(40, 40, 40))
    return out


def _labels(samples, recipe) -> tuple[np.ndarray, np.ndarray]:
    unsafe = np.array([s.attributes["colour"] == recipe["unsafe_colour"] for s in samples], np.float32)
    aesthetic = np.array([recipe["aesthetic_scale"] * s.attributes["count"] + recipe["aesthetic_offset"]
                          for s in samples], np.float32)
    return unsafe, aesthetic


def _embed(samples) -> np.ndarray:
    """Samples -> the toy CLIP's L2-normalised image embeddings."""
    import open_clip
    import torch

    from laion_spark.toy.train import MODEL_NAME, ensure_checkpoint

    ck = ensure_checkpoint()
    open_clip.add_model_config(ck.model_config)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=ck.checkpoint)
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(samples), 256):
            x = model.encode_image(torch.stack([preprocess(s.image) for s in samples[start:start + 256]]))
            out.append(torch.nn.functional.normalize(x, dim=1).numpy())
    return np.concatenate(out)


def _fit(module, x, y, loss, steps: int, lr: float):
    import torch

    opt = torch.optim.Adam(module.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss(module(x)[:, 0], y).backward()
        opt.step()
    return module.eval()


def _watermark_set(samples, rng: np.random.Generator):
    """Samples -> (images, labels): every other one overlaid; label 0 = watermark, 1 = clear (LAION's)."""
    images, labels = [], []
    for i, s in enumerate(samples):
        marked = i % 2 == 0
        images.append(add_watermark(s.image, rng) if marked else s.image.convert("RGB"))
        labels.append(0 if marked else 1)
    return images, np.array(labels)


def _watermark_model(recipe):
    import timm
    from torch import nn

    model = timm.create_model(recipe["watermark_architecture"], pretrained=False, num_classes=2)
    model.classifier = nn.Sequential(nn.Linear(model.num_features, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 32),
                                     nn.ReLU(), nn.Linear(32, 2))
    return model


def _pixels(images, size: int):
    import torch
    from torchvision import transforms

    from laion_spark.tag.watermark import IMAGENET_MEAN, IMAGENET_STD

    pre = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                              transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return torch.stack([pre(im) for im in images])


def train(recipe: dict = RECIPE) -> tuple[dict, dict]:
    """recipe -> ({head: state dict}, metrics with the held-out accuracy of each)."""
    import torch
    from torch import nn

    torch.manual_seed(recipe["seed"])
    torch.set_num_threads(recipe["threads"])
    torch.use_deterministic_algorithms(True)
    train_s = world.split("train", recipe["train"], recipe["seed"], start=100_000)  # not the toy CLIP's batches
    test_s = world.split("test", recipe["test"], recipe["seed"], start=100_000)
    x_train, x_test = (torch.from_numpy(_embed(s)) for s in (train_s, test_s))
    (u_train, a_train), (u_test, _) = _labels(train_s, recipe), _labels(test_s, recipe)
    d = x_train.shape[1]

    unsafe = _fit(nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 1)), x_train, torch.from_numpy(u_train),
                  nn.BCEWithLogitsLoss(), recipe["embedding_steps"], recipe["embedding_lr"])
    aesthetic = _fit(nn.Linear(d, 1), x_train, torch.from_numpy(a_train), nn.MSELoss(), recipe["embedding_steps"],
                     recipe["embedding_lr"])
    rng = np.random.default_rng(recipe["seed"])
    images, labels = _watermark_set(train_s, rng)
    pixels, target = _pixels(images, recipe["image_size"]), torch.from_numpy(labels)
    model = _watermark_model(recipe)
    opt = torch.optim.Adam(model.parameters(), lr=recipe["watermark_lr"])
    g = torch.Generator().manual_seed(recipe["seed"])
    model.train()
    for _ in range(recipe["watermark_epochs"]):
        for idx in torch.randperm(len(images), generator=g).split(recipe["watermark_batch"]):
            opt.zero_grad()
            nn.functional.cross_entropy(model(pixels[idx]), target[idx]).backward()
            opt.step()
    model.eval()
    test_images, test_labels = _watermark_set(test_s, rng)
    with torch.no_grad():
        p_unsafe = torch.sigmoid(unsafe(x_test)[:, 0]).numpy()
        p_aesthetic = aesthetic(x_test)[:, 0].numpy()
        p_watermark = model(_pixels(test_images, recipe["image_size"])).softmax(1)[:, 0].numpy()
    metrics = {
        "recipe": recipe,
        "punsafe_accuracy": float(np.mean((p_unsafe > 0.5) == (u_test > 0.5))),
        "aesthetic_count_accuracy": float(np.mean(np.round((p_aesthetic - recipe["aesthetic_offset"])
                                                           / recipe["aesthetic_scale"])
                                                  == [s.attributes["count"] for s in test_s])),
        "pwatermark_accuracy": float(np.mean((p_watermark > 0.5) == (test_labels == 0))),
    }
    # the mlp layout's keys: layers.N (nn.Sequential's own indices 0 and 2, renumbered 0 and 1)
    unsafe_sd = {"layers.0.weight": unsafe[0].weight, "layers.0.bias": unsafe[0].bias,
                 "layers.1.weight": unsafe[2].weight, "layers.1.bias": unsafe[2].bias}
    states = {"punsafe": {k: v.detach().clone() for k, v in unsafe_sd.items()},
              "aesthetic_score": aesthetic.state_dict(), "pwatermark": model.state_dict()}
    return states, metrics


def recipe_hash(recipe: dict = RECIPE) -> str:
    """-> 16 hex digits over the recipe, this module, the world and the toy CLIP's checkpoint name."""
    from laion_spark.toy.train import ensure_checkpoint

    digest = hashlib.sha256()
    for part in (json.dumps(recipe, sort_keys=True).encode(), Path(__file__).read_bytes(),
                 Path(world.__file__).read_bytes(), Path(ensure_checkpoint().checkpoint).name.encode()):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


def ensure_heads(directory: str | os.PathLike | None = None, recipe: dict = RECIPE) -> ToyHeads:
    """directory (default build/toy-heads/) -> the heads of this recipe, trained there when missing."""
    import torch

    from laion_spark.toy.train import _locked, _write_atomically, default_directory

    stem = f"toy-heads-{recipe_hash(recipe)}"
    if directory is None and (PACKAGED / f"{stem}.json").is_file():  # the committed copy of this recipe
        directory = PACKAGED
    folder = Path(directory) if directory is not None else default_directory().parent / "toy-heads"
    paths = {name: folder / f"{stem}-{name}.pt" for name in HEAD_NAMES}
    metrics_file = folder / f"{stem}.json"

    def result() -> ToyHeads:
        return ToyHeads(*(str(p) for p in paths.values()), json.loads(metrics_file.read_text()))

    if metrics_file.is_file():
        return result()
    with _locked(folder):
        if not metrics_file.is_file():
            log.info("training the toy tag heads into %s", folder)
            states, metrics = train(recipe)
            for name, state in states.items():
                _write_atomically(paths[name], lambda path, s=state: torch.save(s, path))
            _write_atomically(metrics_file, lambda path: Path(path).write_text(json.dumps(metrics, indent=2) + "\n"))
    return result()


def package(heads: ToyHeads, recipe: dict = RECIPE) -> ToyHeads:
    """Heads trained under build/ -> copies in laion_spark/toy/weights/ (committed: about 0.5 MB, so that
    neither the tests nor the demo train them); packaged heads of older recipes are removed."""
    import shutil

    stem = f"toy-heads-{recipe_hash(recipe)}"
    PACKAGED.mkdir(exist_ok=True)
    for name in HEAD_NAMES:
        shutil.copyfile(getattr(heads, name), PACKAGED / f"{stem}-{name}.pt")
    (PACKAGED / f"{stem}.json").write_text(json.dumps(heads.metrics, indent=2) + "\n")  # last: the marker
    for old in PACKAGED.glob("toy-heads-*"):
        if not old.name.startswith(stem):
            old.unlink()
    return ensure_heads(recipe=recipe)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="folder (default build/toy-heads/)")
    ap.add_argument("--package", action="store_true",
                    help="train into build/ (or reuse it) and copy the heads to laion_spark/toy/weights/")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")  # as toy.train's main
    if args.package and args.out is None:
        from laion_spark.toy.train import default_directory

        args.out = str(default_directory().parent / "toy-heads")
    heads = ensure_heads(args.out)
    if args.package:
        heads = package(heads)
    for name in ("punsafe", "aesthetic_score", "pwatermark"):
        log.info("%-16s %s", name, getattr(heads, name))
    log.info("held-out accuracy %s", {k: v for k, v in heads.metrics.items() if k != "recipe"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
