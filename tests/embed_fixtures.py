"""Test helper for the embed stage: tiny open_clip models saved as local checkpoints, an images
table with every kind of row, and reference embeddings from open_clip called directly.

INPUT  -> a folder, a model name, a tiny architecture, a seed; image rows to build
OUTPUT -> TinyModel (JSON config + state_dict checkpoint), images rows as a pandas DataFrame,
          reference image / text embeddings

The reference side uses open_clip alone (add_model_config, create_model_and_transforms, its own
preprocess, get_tokenizer) and Pillow: none of laion_spark's helpers.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tests.images import encode, textured

# tiny ViT CLIPs: default tokenizer (vocab 49408), short context; a few MB each
TINY_A = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_B = {  # another architecture: other embedding size, input size, depth
    "embed_dim": 24,
    "vision_cfg": {"image_size": 48, "layers": 1, "width": 48, "patch_size": 16, "head_width": 24},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 24, "heads": 2, "layers": 1},
}


@dataclass(frozen=True)
class TinyModel:
    name: str  # the architecture name (= the config file's stem, as open_clip registers it)
    config: str  # path of the JSON config
    checkpoint: str  # path of the torch.save'd state_dict

    @property
    def clip_model(self) -> str:
        """What the clip_model column must say: the file name and 12 hex digits of the file's sha256."""
        return clip_model_name(self.name, self.checkpoint)

    def overrides(self, key: str = "embed") -> list[str]:
        """CLI overrides naming this model as embed.model/pretrained/model_config (key=embed) or as
        one group's model (key=embed.models.en)."""
        if key == "embed":
            return [f"embed.model={self.name}", f"embed.pretrained={self.checkpoint}",
                    f"embed.model_config={self.config}"]
        return [f"{key}={self.name},{self.checkpoint},{self.config}"]


def clip_model_name(model: str, checkpoint: str) -> str:
    """A model's architecture + checkpoint file -> MODEL/<file name>@<first 12 hex digits of its sha256>."""
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()[:12]
    return f"{model}/{Path(checkpoint).name}@{digest}"


def write_model(folder: Path, name: str, config: dict, seed: int, checkpoint_name: str | None = None) -> TinyModel:
    """Register a tiny architecture with open_clip, build it with random weights under `seed`, save them."""
    import open_clip
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / f"{name}.json"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    open_clip.add_model_config(config_path)
    torch.manual_seed(seed)
    model = open_clip.create_model(name)
    checkpoint = folder / (checkpoint_name or f"{name}-seed{seed}.pt")
    torch.save(model.state_dict(), checkpoint)
    return TinyModel(name, str(config_path), str(checkpoint))


def reference_embeddings(model: TinyModel, images: list[bytes], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """open_clip directly: the model from its checkpoint, its preprocess and tokenizer -> (image, text)
    embeddings, each row divided by its L2 norm."""
    import open_clip
    import torch

    open_clip.add_model_config(model.config)
    clip, _, preprocess = open_clip.create_model_and_transforms(model.name, pretrained=model.checkpoint)
    clip.eval()
    tokenizer = open_clip.get_tokenizer(model.name)
    pixels = torch.stack([preprocess(Image.open(io.BytesIO(b))) for b in images])
    with torch.no_grad():
        image = clip.encode_image(pixels)
        text = clip.encode_text(tokenizer(texts))
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return image.numpy(), text.numpy()


CAPTIONS = ["a red circle", "two blue squares", "a green triangle on a striped background", "ein Hund",
            "un chat noir", "", "photo 1234", "a very long caption " * 12]
LANGUAGES = ["en", "en", "en", "de", "fr", "nolang", None, "ja"]
FAILED_STATUSES = ["http_error", "timeout", "decode_error", "too_small", "opted_out"]
CORRUPT_ID = 9_000_001


def image_bytes(i: int) -> bytes:
    """Row i's stored image: PNG or JPEG, RGB, grey or RGBA, of assorted sizes (so resize + crop act)."""
    size = [(40, 30), (64, 64), (50, 90), (33, 33), (120, 48)][i % 5]
    im = textured(size, seed=i)
    if i % 7 == 3:
        im = im.convert("L")
    if i % 7 == 5:
        im = im.convert("RGBA")
    return encode(im, "PNG") if i % 2 else encode(im.convert("RGB") if im.mode == "RGBA" else im, "JPEG", quality=90)


def images_frame(successes: int = 20, with_corrupt: bool = True) -> pd.DataFrame:
    """An images table: `successes` success rows (mixed languages), failure rows of several statuses
    (no image), and one success row whose stored bytes are not an image."""
    rows = []
    for i in range(successes):
        rows.append({"sample_id": 1000 + i, "url": f"http://img.test/{i}.jpg", "text": CAPTIONS[i % len(CAPTIONS)],
                     "language": LANGUAGES[i % len(LANGUAGES)], "status": "success", "error_message": None,
                     "image": image_bytes(i)})
    for j, status in enumerate(FAILED_STATUSES):
        rows.append({"sample_id": 5000 + j, "url": f"http://img.test/f{j}.jpg", "text": "a failed row",
                     "language": "en", "status": status, "error_message": f"{status} here", "image": None})
    if with_corrupt:
        rows.append({"sample_id": CORRUPT_ID, "url": "http://img.test/corrupt.jpg", "text": "a corrupt image",
                     "language": "en", "status": "success", "error_message": None,
                     "image": b"\xff\xd8\xff\xe0 this is not really a JPEG" * 3})
    frame = pd.DataFrame(rows)
    frame["sample_id"] = frame["sample_id"].astype("int64")
    return frame
