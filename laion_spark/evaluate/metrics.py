"""A CLIP model + the toy world's held-out images -> zero-shot accuracy per attribute and retrieval recall.

INPUT  -> an open_clip model, its preprocess and tokenizer, and held-out samples (`heldout(n, seed)`:
          the toy world's validation stream, which no demo crawl draws from)
OUTPUT -> {"zero_shot": {colour, shape, count: top-1 accuracy}, "retrieval": {"recall@1", "recall@5"},
          "chance": the same figures for a model that guesses, "images": n}

Zero-shot classification as open_clip's own zero-shot code builds it (`build_zero_shot_classifier`):
one class per value of the attribute; each class's text embedding is the mean of its prompts, and the
prompts are the world's own captions with the other attributes varied ("two red circles", "two red
circles on a striped background", "two blue squares", ... for the count 2). Image -> text retrieval
ranks the world's 108 distinct captions for each image (held-out images share captions, so ranking
the other images' captions, as a pairwise recall would, is ambiguous): recall@k is the share of
images whose true caption is among the k best.
"""

from __future__ import annotations

from laion_spark.toy import world

ATTRIBUTES = {"colour": list(world.COLOURS), "shape": list(world.SHAPES), "count": list(world.COUNTS)}
RECALL_AT = (1, 5)


def heldout(n: int, seed: int = 0) -> list[world.Sample]:
    """n, seed -> the toy world's validation samples 0..n-1 (disjoint from every demo crawl's images)."""
    return world.split("validation", n, seed)


def prompts(attribute: str) -> list:
    """An attribute -> open_clip zero-shot templates: one callable per combination of the other
    attributes, class name (str) -> that combination's caption with the class's value."""
    values = ATTRIBUTES[attribute]
    cast = type(values[0])  # class names are strings; the world's counts are ints
    bases = [a for a in world.all_attributes() if a[attribute] == values[0]]
    return [lambda name, base=base: world.caption({**base, attribute: cast(name)}) for base in bases]


def chance() -> dict:
    captions = len(world.all_attributes())
    return {"zero_shot": {a: round(1 / len(v), 4) for a, v in ATTRIBUTES.items()},
            "retrieval": {f"recall@{k}": round(k / captions, 4) for k in RECALL_AT}}


def measure(model, preprocess, tokenizer, samples: list[world.Sample], device: str = "cpu") -> dict:
    """See the module docstring."""
    import open_clip
    import torch

    model = model.to(device).eval()
    with torch.inference_mode():
        images = torch.cat([
            model.encode_image(torch.stack([preprocess(s.image) for s in samples[i:i + 256]]).to(device),
                               normalize=True)
            for i in range(0, len(samples), 256)
        ])
        zero_shot = {}
        for attribute, values in ATTRIBUTES.items():
            classifier = open_clip.build_zero_shot_classifier(
                model, tokenizer, [str(v) for v in values], prompts(attribute), num_classes_per_batch=None,
                device=device)
            predicted = (images @ classifier).argmax(1).tolist()
            truth = [values.index(s.attributes[attribute]) for s in samples]
            zero_shot[attribute] = round(sum(p == t for p, t in zip(predicted, truth)) / len(samples), 4)
        captions = [world.caption(a) for a in world.all_attributes()]
        texts = model.encode_text(tokenizer(captions).to(device), normalize=True)
        ranked = (images @ texts.T).argsort(1, descending=True)[:, :max(RECALL_AT)].tolist()
        truth = [captions.index(s.caption) for s in samples]
        retrieval = {f"recall@{k}": round(sum(t in r[:k] for r, t in zip(ranked, truth)) / len(samples), 4)
                     for k in RECALL_AT}
    return {"zero_shot": zero_shot, "retrieval": retrieval, "chance": chance(), "images": len(samples)}


def load(model_config: str, checkpoint: str | None, device: str = "cpu"):
    """A model config JSON or open_clip model name (+ a checkpoint, None for random weights) -> (model,
    preprocess, tokenizer)."""
    from pathlib import Path

    import open_clip

    name = model_config  # a name open_clip knows, or a config file registered under its stem (as the trainer does)
    if model_config.endswith(".json"):
        open_clip.add_model_config(model_config)
        name = Path(model_config).stem
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=checkpoint or None,
                                                                 device=device)
    return model, preprocess, open_clip.get_tokenizer(name)
