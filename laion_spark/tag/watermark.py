"""pwatermark: an image classifier over the stored image bytes (LAION's watermark detector and its kin).

INPUT  -> a WatermarkSpec (timm architecture, checkpoint, input size, device) and stored image bytes
OUTPUT -> load_watermark: the model in eval mode on its device with its checkpoint's hash; its `score`:
          per image pwatermark = softmax(logits)[:, 0] (LAION: index 0 = watermark, 1 = clear), NaN
          for an image that does not decode; HeadError for a checkpoint that does not fit

LAION's detector (reference: peers-index-tag-export.md, 3c): timm `efficientnet_b3a` with 2 classes and
its classifier replaced by Linear(1536, 625) -> ReLU -> Dropout(0.3) -> Linear(625, 256) -> ReLU ->
Linear(256, 2) (keys classifier.0 / classifier.3 / classifier.5); input Resize((256, 256)), no crop,
ImageNet mean / std. The classifier's layout is read from the checkpoint: that three-layer head, or
timm's own Linear (classifier.weight), over any timm architecture (the toy detector is a small
one; the keys sit under the architecture's own classifier name, `fc` for a ResNet), so the same code
serves LAION's weights and ours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from laion_spark.tag.heads import HeadError, load_once

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class WatermarkSpec:
    checkpoint: str
    # a timm model name; LAION's efficientnet_b3a is timm 1.0's efficientnet_b3 (the same layers: timm maps
    # the old name to it with a warning)
    architecture: str = "efficientnet_b3"
    image_size: int = 256
    device: str = "cpu"
    batch_size: int = 32
    max_pixels: int = 89_478_484


def _classifier(sd: dict, path: str, features: int, name: str):
    """The checkpoint's classifier keys (under the architecture's classifier name: `classifier` for
    EfficientNet, `fc` for ResNet) -> the matching torch module (LAION's three layers, or one Linear)."""
    from torch import nn

    laion = tuple(f"{name}.{i}.weight" for i in (0, 3, 5))
    if all(k in sd for k in laion):
        a, b, c = (sd[k].shape for k in laion)
        if a[1] != features or b[1] != a[0] or c[1] != b[0] or c[0] != 2:
            raise HeadError(f"{path}: classifier shapes {tuple(a)}, {tuple(b)}, {tuple(c)} do not chain from "
                            f"{features} features to 2 classes")
        return nn.Sequential(nn.Linear(a[1], a[0]), nn.ReLU(), nn.Dropout(0.3), nn.Linear(b[1], b[0]), nn.ReLU(),
                             nn.Linear(c[1], c[0]))
    if f"{name}.weight" in sd:
        w = sd[f"{name}.weight"]
        if tuple(w.shape) != (2, features):
            raise HeadError(f"{path}: {name}.weight is {tuple(w.shape)}, want (2, {features})")
        return nn.Linear(features, 2)
    raise HeadError(f"{path}: no {name}.0/3/5 (LAION's watermark head) nor {name}.weight keys")


class WatermarkModel:
    """A loaded detector: score(list of image bytes) -> pwatermark per image (NaN where it does not decode)."""

    def __init__(self, spec: WatermarkSpec, sd: dict, path: str, checksum: str):
        import timm
        import torch
        from torchvision import transforms

        try:
            model = timm.create_model(spec.architecture, pretrained=False, num_classes=2)
        except Exception as exc:  # noqa: BLE001  (timm's own message names what it does not know)
            raise HeadError(f"tag.pwatermark.architecture={spec.architecture!r}: {exc}") from None
        name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier", "classifier")
        setattr(model, name, _classifier(sd, path, model.num_features, name))
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise HeadError(f"{path} does not fit timm {spec.architecture}: {' '.join(first[:3])[:400]}") from None
        self.model = model.eval().to(spec.device)
        self.spec, self.checksum = spec, checksum
        self.transform = transforms.Compose([
            transforms.Resize((spec.image_size, spec.image_size)),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])
        self._torch = torch

    def _pixels(self, data) -> object | None:
        from laion_spark.embed.encode import decode_image

        if data is None:
            return None
        try:
            image = decode_image(bytes(data), self.spec.max_pixels).convert("RGB")
        except Exception:  # noqa: BLE001  (a refused or broken image gets no score, never a made-up one)
            return None
        return self.transform(image)

    def score(self, images) -> np.ndarray:
        """Image bytes (None where missing) -> pwatermark per image, NaN where it does not decode.

        Decoded and classified `batch_size` images at a time, so what a task holds decoded follows the
        model's batch, not the length of `images` (an Arrow batch of 10,000 rows decoded at once would be
        10,000 x 3 x 256 x 256 floats, about 7.9 GB). The forward passes see the same batches as
        decoding everything first would (batch_size decodable images each), so the scores are the same.
        """
        out = np.full(len(images), np.nan, np.float32)
        rows: list[int] = []
        pixels: list = []
        for i, data in enumerate(images):
            tensor = self._pixels(data)
            if tensor is None:
                continue
            rows.append(i)
            pixels.append(tensor)
            del tensor  # the list holds the only reference: a flush frees the decoded images
            if len(pixels) == self.spec.batch_size:
                out[rows] = self._classify(pixels)
                rows = []
        if pixels:
            out[rows] = self._classify(pixels)
        return out

    def _classify(self, pixels: list) -> np.ndarray:
        """Decoded images (emptied here: only the stacked batch stays) -> softmax(logits)[:, 0] of each."""
        torch = self._torch
        batch = torch.stack(pixels).to(self.spec.device)
        pixels.clear()
        with torch.inference_mode():
            return self.model(batch).float().softmax(dim=1)[:, 0].cpu().numpy()


_LOADED: dict = {}


def load_watermark(spec: WatermarkSpec) -> WatermarkModel:
    """WatermarkSpec -> its model, loaded once per process."""
    return load_once(_LOADED, spec, "pwatermark", WatermarkModel)
