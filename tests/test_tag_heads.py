"""tag heads: each of LAION's released formats built here with random weights under exactly its key names
and shapes (the published module written out in the test as nn.Sequential), saved as a state dict, loaded
through a HeadSpec, and scored against the published module's own forward pass. No Spark."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from laion_spark.tag.heads import HeadError, HeadSpec, load_head


def embeddings(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32) * 3  # not unit: the head normalises


def unit(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x)
    return t / t.norm(dim=1, keepdim=True)


def save(tmp_path, name: str, state) -> str:
    path = tmp_path / name
    torch.save(state, path)
    return str(path)


class AestheticV2(nn.Module):
    """christophschuhmann/improved-aesthetic-predictor's MLP as published (its ReLUs commented out)."""

    def __init__(self, d):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(d, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                    nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, x):
        return self.layers(x)


class H14(nn.Module):
    """clip-retrieval's H14 NSFW head as published (no sigmoid in the module)."""

    def __init__(self, d=1024):
        super().__init__()
        blocks = []
        for a, b in ((d, 1024), (1024, 2048), (2048, 1024), (1024, 256), (256, 128)):
            blocks += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(0.2)]
        self.layers = nn.Sequential(*blocks, nn.Linear(128, 16), nn.Linear(16, 1))

    def forward(self, x):
        return self.layers(x)


def test_aesthetic_v1_linear(tmp_path):
    torch.manual_seed(1)
    for d in (768, 512):  # sa_0_4_vit_l_14_linear.pth and sa_0_4_vit_b_32_linear.pth
        ref = nn.Linear(d, 1).eval()
        assert sorted(ref.state_dict()) == ["bias", "weight"]
        path = save(tmp_path, f"v1_{d}.pth", ref.state_dict())
        head = load_head(HeadSpec("aesthetic_score", "linear", path, dimension=d))
        x = embeddings(64, d)
        with torch.no_grad():
            want = ref(unit(x))[:, 0].numpy()
        np.testing.assert_allclose(head.score(x), want, rtol=1e-5, atol=1e-5)
        assert len(head.checksum) == 12


def test_aesthetic_v2_mlp(tmp_path):
    torch.manual_seed(2)
    ref = AestheticV2(768).eval()
    weights = sorted(k for k in ref.state_dict() if k.endswith("weight"))
    assert weights == [f"layers.{i}.weight" for i in (0, 2, 4, 6, 7)]
    path = save(tmp_path, "sac+logos+ava1-l14-linearMSE.pth", ref.state_dict())
    head = load_head(HeadSpec("aesthetic_score", "aesthetic_v2", path))
    x = embeddings(50, 768, seed=3)
    with torch.no_grad():
        want = ref(unit(x))[:, 0].numpy()
    np.testing.assert_allclose(head.score(x), want, rtol=1e-4, atol=1e-5)


def test_h14_nsfw_with_and_without_a_sigmoid(tmp_path):
    torch.manual_seed(3)
    ref = H14().eval()
    path = save(tmp_path, "h14_nsfw.pth", ref.state_dict())
    x = embeddings(40, 1024, seed=4)
    with torch.no_grad():
        logits = ref(unit(x))[:, 0]
    raw = load_head(HeadSpec("punsafe", "h14_nsfw", path, dimension=1024))
    np.testing.assert_allclose(raw.score(x), logits.numpy(), rtol=1e-4, atol=1e-5)
    prob = load_head(HeadSpec("punsafe", "h14_nsfw", path, sigmoid=True))
    np.testing.assert_allclose(prob.score(x), torch.sigmoid(logits).numpy(), rtol=1e-4, atol=1e-6)
    # DataParallel's module. prefix and a {'state_dict': ...} wrapper load the same
    wrapped = save(tmp_path, "wrapped.pth", {"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}})
    np.testing.assert_allclose(load_head(HeadSpec("punsafe", "h14_nsfw", wrapped)).score(x), logits.numpy(),
                               rtol=1e-4, atol=1e-5)


def test_converted_autokeras_mlp_with_normalisation_and_categorical_dims(tmp_path):
    """The B/32 detector's graph (reference section 3a): categorical dims -> Normalization -> Dense32 -> ReLU
    -> Dense32 -> ReLU -> Dropout -> Dense1 -> sigmoid, as a state dict in our mlp layout."""
    torch.manual_seed(4)
    d, dims = 512, [92, 133, 312]
    dense = [nn.Linear(d, 32), nn.Linear(32, 32), nn.Linear(32, 1)]
    mean, var = torch.randn(d) * 0.01, torch.rand(d) * 0.01 + 1e-4
    fill = torch.tensor([1.0, 1.0, 1.0])  # what autokeras' lookup gives a value it never saw
    sd = {f"layers.{i}.{n}": p for i, layer in enumerate(dense) for n, p in layer.state_dict().items()}
    sd.update({"norm.mean": mean, "norm.var": var, "categorical.dims": torch.tensor(dims), "categorical.fill": fill})
    path = save(tmp_path, "b32_nsfw.pth", sd)
    x = embeddings(30, d, seed=5)
    with torch.no_grad():  # the Keras graph, step by step
        h = unit(x).clone()
        h[:, dims] = fill
        h = (h - mean) / torch.clamp(var.sqrt(), min=1e-7)
        h = torch.relu(dense[0](h))
        h = torch.relu(dense[1](h))
        want = torch.sigmoid(dense[2](h))[:, 0].numpy()
    head = load_head(HeadSpec("punsafe", "mlp", path, dimension=d, sigmoid=True))
    np.testing.assert_allclose(head.score(x), want, rtol=1e-4, atol=1e-6)


def test_checkpoints_that_do_not_fit_are_clear_errors(tmp_path):
    v2 = AestheticV2(768).state_dict()
    cases = [
        ("aesthetic_v2", {k: v for k, v in v2.items() if not k.startswith("layers.7.")}, "last layer gives 16"),
        ("h14_nsfw", v2, "h14_nsfw has linear layers at layers.[0, 3, 6, 9, 12, 15, 16]"),
        ("linear", v2, "no weight, bias keys"),
        ("aesthetic_v2", {**v2, "layers.2.weight": torch.zeros(128, 999)}, "takes 999 inputs"),
        ("mlp", {"layers.0.weight": torch.zeros(1, 8), "layers.0.bias": torch.zeros(1), "norm.mean": torch.zeros(8)},
         "come together"),
    ]
    for n, (arch, sd, message) in enumerate(cases):
        path = save(tmp_path, f"bad{n}.pth", sd)
        with pytest.raises(HeadError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_head(HeadSpec("x", arch, path))
    good = save(tmp_path, "good.pth", v2)
    with pytest.raises(HeadError, match="takes 768-dimensional embeddings, the config says 512"):
        load_head(HeadSpec("x", "aesthetic_v2", good, dimension=512))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(HeadError, match="not a PyTorch state dict"):
        load_head(HeadSpec("x", "linear", str(tmp_path / "junk.pth")))
    with pytest.raises(HeadError, match="not found"):
        load_head(HeadSpec("x", "linear", str(tmp_path / "missing.pth")))
    head = load_head(HeadSpec("x", "aesthetic_v2", good))
    with pytest.raises(HeadError, match="shape"):
        head.score(np.zeros((3, 512), np.float32))
