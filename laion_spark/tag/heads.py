"""Score heads over CLIP image embeddings: LAION's released formats and our own, loaded from state dicts.

INPUT  -> a HeadSpec (architecture, checkpoint URI, output column, the dimension it expects, whether
          the input is L2-normalised first and a sigmoid applied last) and n x d float32 embeddings
OUTPUT -> load_head: an EmbeddingHead (the module in eval mode, its checkpoint's hash); its `score`:
          n float32 scores; HeadError naming the file, the key and the shape for a checkpoint that
          does not fit the architecture

Architectures (reference: peers-index-tag-export.md, section 3), by the keys of their state dicts:
  linear        LAION's aesthetic predictor v1: nn.Linear(d, 1), keys `weight`, `bias`
  aesthetic_v2  the improved aesthetic predictor: Linear(d,1024), Linear(1024,128), Linear(128,64),
                Linear(64,16), Linear(16,1) at `layers.{0,2,4,6,7}` with dropouts between and no
                activation (its ReLUs are commented out: the MLP is affine)
  h14_nsfw      clip-retrieval's H14 NSFW head: Linear(d,1024), (1024,2048), (2048,1024), (1024,256),
                (256,128) each followed by ReLU + Dropout, then Linear(128,16), Linear(16,1), at
                `layers.{0,3,6,9,12,15,16}`; no sigmoid inside (HeadSpec.sigmoid says whether to apply one)
  mlp           ours, and the layout an autokeras NSFW detector converts to: optional `norm.mean` /
                `norm.var` (Keras Normalization: (x - mean) / max(sqrt(var), 1e-7)), optional
                `categorical.dims` / `categorical.fill` (the dimensions autokeras encoded as categories:
                each replaced by the constant its lookup gives an unseen value), then `layers.N` linear
                layers with ReLU between them (not after the last)
The layer list is read from the state dict (every 2-D `layers.N.weight`, by N), so any depth of these
families loads; the activations come from the architecture's rule, since dropout and ReLU leave no keys.
Dropout is an identity at inference, so it is not built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

ARCHITECTURES = ("linear", "aesthetic_v2", "h14_nsfw", "mlp")
KERAS_EPSILON = 1e-7


class HeadError(ValueError):
    """A checkpoint that does not fit its declared architecture or dimension (what, where, which shape)."""


@dataclass(frozen=True)
class HeadSpec:
    column: str  # punsafe, aesthetic_score, ...
    architecture: str
    checkpoint: str  # a local file or URI
    dimension: int = 0  # the embedding size it expects (0: read from the checkpoint)
    clip_model: str = ""  # the embedding space it was trained on ('' : any of that dimension)
    l2_normalize: bool = True  # LAION's heads take the L2-normalised embedding
    sigmoid: bool = False  # apply a sigmoid to the last layer's output (h14_nsfw's module has none)


def read_state_dict(path: str) -> dict:
    """A local checkpoint -> its tensors: a plain state dict, or one under `state_dict` / `weights` /
    `model` (LAION's watermark `inference.py` saves {'weights': ...}); DataParallel's `module.` dropped."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (any unpickling failure is the file's)
        raise HeadError(f"{path}: not a PyTorch state dict ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "weights", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise HeadError(f"{path}: expected a dict of tensors (a state dict), got {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _layers(sd: dict, path: str, architecture: str) -> list[tuple[str, int]]:
    """-> [(key prefix, output size)] of the linear layers, in order, checked to chain."""
    if architecture == "linear":
        prefixes = [""] if "weight" in sd else []
    else:
        idx = sorted({int(m.group(1)) for k in sd if (m := re.fullmatch(r"layers\.(\d+)\.weight", k))})
        prefixes = [f"layers.{i}." for i in idx]
    if not prefixes:
        want = "weight, bias" if architecture == "linear" else "layers.N.weight"
        raise HeadError(f"{path}: no {want} keys for architecture {architecture} (keys: {sorted(sd)[:8]})")
    out, width = [], None
    for prefix in prefixes:
        w, b = sd.get(prefix + "weight"), sd.get(prefix + "bias")
        if w is None or w.ndim != 2 or b is None or tuple(b.shape) != (w.shape[0],):
            raise HeadError(f"{path}: {prefix}weight / {prefix}bias are not a linear layer "
                            f"({None if w is None else tuple(w.shape)}, {None if b is None else tuple(b.shape)})")
        if width is not None and w.shape[1] != width:
            raise HeadError(f"{path}: {prefix}weight takes {w.shape[1]} inputs but the layer before gives {width}")
        width = int(w.shape[0])
        out.append((prefix, width))
    if width != 1:
        raise HeadError(f"{path}: the last layer gives {width} outputs, a score head gives 1")
    expected = {"aesthetic_v2": [0, 2, 4, 6, 7], "h14_nsfw": [0, 3, 6, 9, 12, 15, 16]}.get(architecture)
    if expected is not None and [int(p.split(".")[1]) for p, _ in out] != expected:
        raise HeadError(f"{path}: {architecture} has linear layers at layers.{expected}, this file at "
                        f"{[p.rstrip('.') for p, _ in out]}")
    return out


def _relu_after(architecture: str, n_layers: int) -> list[bool]:
    if architecture == "h14_nsfw":
        return [i < n_layers - 2 for i in range(n_layers)]
    if architecture == "mlp":
        return [i < n_layers - 1 for i in range(n_layers)]
    return [False] * n_layers  # linear, aesthetic_v2 (its ReLUs are commented out upstream)


class EmbeddingHead:
    """A loaded head: score(n x d embeddings) -> n scores, in eval mode, without gradients."""

    def __init__(self, spec: HeadSpec, sd: dict, path: str, checksum: str):
        import torch

        if spec.architecture not in ARCHITECTURES:
            raise HeadError(f"{spec.column}: architecture {spec.architecture!r} is not one of {ARCHITECTURES}")
        self.spec, self.checksum = spec, checksum
        layers = _layers(sd, path, spec.architecture)
        self.weights = [(sd[p + "weight"].float(), sd[p + "bias"].float()) for p, _ in layers]
        self.relu = _relu_after(spec.architecture, len(layers))
        self.dimension = int(self.weights[0][0].shape[1])
        if spec.dimension and spec.dimension != self.dimension:
            raise HeadError(f"{spec.column}: {path} takes {self.dimension}-dimensional embeddings, the config "
                            f"says {spec.dimension}")
        self.mean = self.std = None
        self.cat_dims = self.cat_fill = None
        if spec.architecture == "mlp":
            if ("norm.mean" in sd) != ("norm.var" in sd):
                raise HeadError(f"{path}: norm.mean and norm.var come together")
            if "norm.mean" in sd:
                self.mean = sd["norm.mean"].float().reshape(-1)
                self.std = torch.clamp(sd["norm.var"].float().reshape(-1).sqrt(), min=KERAS_EPSILON)
                if self.mean.numel() != self.dimension or self.std.numel() != self.dimension:
                    raise HeadError(f"{path}: norm.mean / norm.var have {self.mean.numel()} / {self.std.numel()} "
                                    f"values, the first layer takes {self.dimension}")
            if "categorical.dims" in sd:
                self.cat_dims = sd["categorical.dims"].long().reshape(-1)
                self.cat_fill = sd["categorical.fill"].float().reshape(-1)
                if self.cat_dims.numel() != self.cat_fill.numel() or (
                        self.cat_dims.numel() and int(self.cat_dims.max()) >= self.dimension):
                    raise HeadError(f"{path}: categorical.dims / categorical.fill do not fit {self.dimension} dims")

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """n x d float embeddings -> n float32 scores (NaN rows stay NaN: nothing is made up)."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] != self.dimension:
            raise HeadError(f"{self.spec.column}: embeddings of shape {tuple(x.shape)}, the head takes "
                            f"{self.dimension} dimensions")
        with torch.no_grad():
            if self.spec.l2_normalize:
                x = x / x.norm(dim=1, keepdim=True)
            if self.cat_dims is not None:
                x = x.clone()
                x[:, self.cat_dims] = self.cat_fill
            if self.mean is not None:
                x = (x - self.mean) / self.std
            for (w, b), relu in zip(self.weights, self.relu, strict=True):
                x = torch.nn.functional.linear(x, w, b)
                if relu:
                    x = torch.relu(x)
            if self.spec.sigmoid:
                x = torch.sigmoid(x)
        return x[:, 0].numpy().astype(np.float32)


_LOADED: dict = {}


def load_once(cache: dict, spec, column: str, build):
    """A frozen spec with a `checkpoint` -> build(spec, its state dict, its URI, its checksum), made once
    per process and spec (a Python worker scores many batches; the driver checks them first)."""
    from laion_spark.embed.model import ModelLoadError, checkpoint_checksum, local_checkpoint

    if spec not in cache:
        try:
            path = local_checkpoint(spec.checkpoint)
        except ModelLoadError as exc:
            raise HeadError(f"{column}: {exc}") from None
        cache[spec] = build(spec, read_state_dict(path), spec.checkpoint, checkpoint_checksum(spec.checkpoint))
    return cache[spec]


def load_head(spec: HeadSpec) -> EmbeddingHead:
    """HeadSpec -> its EmbeddingHead, loaded once per process."""
    return load_once(_LOADED, spec, spec.column, EmbeddingHead)
