"""pwatermark: LAION's watermark detector layout (timm efficientnet_b3a, 2 classes, its own 3-layer
classifier) built here with random weights under exactly those keys, saved as a state dict, loaded through
a WatermarkSpec, and scored against the published preprocessing and softmax[:, 0] written in the test.
No Spark."""

from __future__ import annotations

import io

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

from laion_spark.tag.heads import HeadError
from laion_spark.tag.watermark import WatermarkSpec, load_watermark


def laion_detector():
    """LAION-5B-WatermarkDetection's model as published."""
    model = timm.create_model("efficientnet_b3a", pretrained=False, num_classes=2)
    model.classifier = nn.Sequential(nn.Linear(1536, 625), nn.ReLU(), nn.Dropout(p=0.3), nn.Linear(625, 256),
                                     nn.ReLU(), nn.Linear(256, 2))
    return model.eval()


def pictures() -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for i, (w, h) in enumerate(((320, 200), (64, 300), (256, 256))):  # not square: Resize((256, 256)) squashes
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "PNG" if i % 2 else "JPEG")
        out.append(buf.getvalue())
    return out


def test_laions_layout_scores_as_the_published_model(tmp_path):
    torch.manual_seed(0)
    ref = laion_detector()
    keys = [k for k in ref.state_dict() if k.startswith("classifier.")]
    assert keys == [f"classifier.{i}.{p}" for i in (0, 3, 5) for p in ("weight", "bias")]
    torch.save({"weights": ref.state_dict()}, tmp_path / "model.pt")  # inference.py's {'weights': ...}
    images = pictures()
    pre = transforms.Compose([transforms.Resize((256, 256)), transforms.ToTensor(),
                              transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    with torch.no_grad():
        want = ref(torch.stack([pre(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])).softmax(1)[:, 0]
    got = load_watermark(WatermarkSpec(str(tmp_path / "model.pt"), batch_size=2)).score(
        [*images, b"not an image", None])
    np.testing.assert_allclose(got[:3], want.numpy(), atol=1e-5)
    assert np.isnan(got[3:]).all()  # a broken or missing image gets no score


def test_a_small_timm_model_with_timms_own_classifier_and_bad_checkpoints(tmp_path):
    torch.manual_seed(1)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=2).eval()  # its classifier is `fc`
    torch.save(model.state_dict(), tmp_path / "small.pt")
    images = pictures()
    pre = transforms.Compose([transforms.Resize((64, 64)), transforms.ToTensor(),
                              transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    with torch.no_grad():
        want = model(torch.stack([pre(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])).softmax(1)[:, 0]
    small = load_watermark(WatermarkSpec(str(tmp_path / "small.pt"), architecture="resnet10t", image_size=64))
    np.testing.assert_allclose(small.score(images), want.numpy(), atol=1e-5)
    with pytest.raises(HeadError, match="no classifier.0/3/5"):  # a ResNet's keys for an EfficientNet
        load_watermark(WatermarkSpec(str(tmp_path / "small.pt"), architecture="efficientnet_b0"))
    torch.save({"classifier.weight": torch.zeros(3, 1536), "classifier.bias": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(HeadError, match=r"classifier.weight is \(3, 1536\)"):
        load_watermark(WatermarkSpec(str(tmp_path / "bad.pt")))
    wrong = laion_detector().state_dict()
    wrong["conv_stem.weight"] = torch.zeros(8, 3, 3, 3)
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(HeadError, match="does not fit timm efficientnet_b3"):
        load_watermark(WatermarkSpec(str(tmp_path / "wrong.pt")))
    with pytest.raises(HeadError, match="no-such-net"):
        load_watermark(WatermarkSpec(str(tmp_path / "bad.pt"), architecture="no-such-net"))
