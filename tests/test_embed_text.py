"""The text tower without padding (laion_spark/embed/text.py) against open_clip's own encode_text.

Expectations come from open_clip: model.encode_text on the full, padded tokens. Models are tiny
architectures with random weights, registered with open_clip from a config dict here.
"""

from __future__ import annotations

import json

import pytest
import torch

from laion_spark.embed.text import _forward, encode_text, trimmable

CONTEXT = 77
BASE = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": CONTEXT, "vocab_size": 49408, "width": 48, "heads": 4, "layers": 2},
}
WORDS = ("a", "red", "circle", "two", "blue", "squares", "on", "striped", "background", "photo", "of", "the", "old",
         "bridge", "near", "river")


def _model(tmp_path, name: str, text_extra: dict | None = None, custom_text: bool = False, seed: int = 0):
    import open_clip

    config = json.loads(json.dumps(BASE))
    config["text_cfg"].update(text_extra or {})
    if custom_text:
        config["custom_text"] = True
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    torch.manual_seed(seed)
    model = open_clip.create_model(name)
    model.eval()
    return model, open_clip.get_tokenizer(name)


def _captions(n: int, seed: int = 0, longest: int = 90) -> list[str]:
    """n captions of 0 .. longest-1 words (the default reaches past the context: truncated)."""
    rng = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, longest, (n,), generator=rng).tolist()
    return [" ".join(WORDS[(i + k) % len(WORDS)] for k in range(length)) for i, length in enumerate(lengths)]


@pytest.mark.parametrize("text_extra, custom_text", [
    ({}, False),                        # open_clip.CLIP, argmax pooling (OpenAI / LAION CLIPs)
    ({}, True),                         # CustomTextCLIP with open_clip's TextTransformer
    ({"pool_type": "eos"}, False),      # pooling at the tokenizer's end-of-text id
])
def test_trimmed_text_features_equal_open_clip(tmp_path, text_extra, custom_text):
    model, tokenizer = _model(tmp_path, f"trim-{len(text_extra)}-{int(custom_text)}", text_extra, custom_text)
    tokens = tokenizer(_captions(70))
    assert trimmable(model)
    with torch.inference_mode():
        expected = model.encode_text(tokens)
        got = encode_text(model, tokens, chunk_rows=8)  # 9 chunks of different lengths, scattered back
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_rows_come_back_in_their_order(tmp_path):
    model, tokenizer = _model(tmp_path, "trim-order")
    captions = _captions(20, seed=3)
    with torch.inference_mode():
        batch = encode_text(model, tokenizer(captions), chunk_rows=4)
        one_by_one = torch.cat([model.encode_text(tokenizer([c])) for c in captions])
    torch.testing.assert_close(batch, one_by_one, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("text_extra", [{"pool_type": "last"}, {"no_causal_mask": True, "pool_type": "argmax"}])
def test_towers_that_see_the_padding_are_not_trimmed(tmp_path, text_extra):
    model, tokenizer = _model(tmp_path, f"notrim-{'-'.join(text_extra)}", text_extra)
    tokens = tokenizer(_captions(12, seed=1, longest=30))  # all shorter than the context: there is padding to cut
    assert not trimmable(model)
    with torch.inference_mode():
        expected = model.encode_text(tokens)
        got = encode_text(model, tokens)
        assert torch.equal(got, expected)  # the model's own encode_text ran
        # and the guard matters: for this tower, cutting the padding would change the features
        if model.attn_mask is not None:
            length = int(tokens.argmax(-1).max()) + 1
            cut = _forward(model, model.text_pool_type, None, tokens[:, :length])
            assert not torch.allclose(cut, expected, atol=1e-3)


def test_trim_off_is_encode_text(tmp_path):
    model, tokenizer = _model(tmp_path, "trim-off")
    tokens = tokenizer(_captions(5))
    with torch.inference_mode():
        assert torch.equal(encode_text(model, tokens, trim=False), model.encode_text(tokens))
