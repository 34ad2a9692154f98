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


def test_images_are_decoded_a_model_batch_at_a_time_with_the_whole_batch_scores(tmp_path, monkeypatch):
    # an Arrow batch of several model batches, broken and missing images among them: at no time are more
    # than batch_size decoded images alive (a whole batch decoded first would hold all of them), and every
    # score is the one scoring the whole list, decoded up front, in batch_size chunks of its decodable
    # images gives (what score did before), restated here with the test's own model and preprocessing
    import weakref

    torch.manual_seed(2)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=2).eval()
    torch.save(model.state_dict(), tmp_path / "small.pt")
    batch = 3
    rng = np.random.default_rng(4)
    images = []
    for i in range(14):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (24 + i, 40 - i, 3), dtype=np.uint8)).save(buf, "PNG")
        images.append(buf.getvalue())
    images[2], images[7], images[8] = b"not an image", None, images[8][:40]  # broken, missing, cut short
    detector = load_watermark(WatermarkSpec(str(tmp_path / "small.pt"), architecture="resnet10t", image_size=32,
                                            batch_size=batch))
    alive, peak, decoded = [0], [0], [0]

    def gone():
        alive[0] -= 1

    real = detector._pixels

    def watched(data):
        tensor = real(data)
        if tensor is not None:
            decoded[0] += 1
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
            weakref.finalize(tensor, gone)
        return tensor

    monkeypatch.setattr(detector, "_pixels", watched)
    got = detector.score(images)
    assert decoded[0] == 11 and peak[0] == batch and alive[0] == 0

    pre = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor(),
                              transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    have, pixels = [], []
    for i, data in enumerate(images):
        try:
            pixels.append(pre(Image.open(io.BytesIO(data)).convert("RGB")))
            have.append(i)
        except Exception:  # noqa: BLE001  (None, broken or cut short: no score)
            continue
    want = np.full(len(images), np.nan, np.float32)
    with torch.no_grad():
        for start in range(0, len(have), batch):
            rows = have[start:start + batch]
            want[rows] = model(torch.stack(pixels[start:start + batch])).softmax(1)[:, 0].numpy()
    assert have == [i for i in range(14) if i not in (2, 7, 8)]
    np.testing.assert_array_equal(got, want)
