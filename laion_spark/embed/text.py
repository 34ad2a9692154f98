"""The text tower without the padding: token ids -> the same text features as model.encode_text.

INPUT  -> an open_clip model and a batch of token ids (batch, context_length) from its tokenizer
OUTPUT -> text features (batch, embed_dim), unnormalised, as model.encode_text(tokens) gives them

Why: open_clip's tokenizers pad every caption to the context length (77), and the text tower then
runs the transformer over all 77 positions, while alt texts are mostly 5 - 20 tokens. In a CLIP
text tower with a causal attention mask and pooling at the end-of-text token, a position only
sees the positions before it, so the padding after the last end-of-text token of a batch never
reaches the pooled output: cutting it off gives the same features (to float rounding), and the
text tower's cost falls with the caption length (46 ms -> 6 ms per caption for ViT-B-32 on 2
CPU threads, measured in bench/embed.py's setting). Rows are sorted by length and cut in chunks,
so one long caption does not make its whole batch long.

Where the cut would change the result (no causal mask, a padding mask, a class token appended at
the end as in CoCa, pooling at the first or last position, a Hugging Face text tower), `trimmable`
says no and the model's own encode_text runs on the full tokens.
"""

from __future__ import annotations

import torch

# rows per length chunk: small enough to keep short captions together, large enough for fast matmuls
CHUNK_ROWS = 32
_END_POOLS = ("argmax", "eos")


def _tower(model):
    """open_clip model -> (the module holding the text transformer's parts, its pool type), or None."""
    if hasattr(model, "token_embedding") and hasattr(model, "text_pool_type"):
        return model, model.text_pool_type  # open_clip.CLIP: the text tower's parts sit on the model
    text = getattr(model, "text", None)
    if text is not None and hasattr(text, "token_embedding") and hasattr(text, "pool_type"):
        if getattr(text, "cls_emb", None) is not None or getattr(text, "use_pad_mask", False):
            return None  # the appended class token / padding mask see the padding
        return text, text.pool_type  # CustomTextCLIP with open_clip's own TextTransformer
    return None


def _is_causal(mask) -> bool:
    if mask is None or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return False
    above = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1)
    return bool(torch.equal(torch.isneginf(mask), above)) and bool((mask[~above] == 0).all())


def trimmable(model) -> bool:
    """open_clip model -> whether cutting the padding leaves its text features unchanged."""
    found = _tower(model)
    if found is None:
        return False
    tower, pool = found
    return pool in _END_POOLS and _is_causal(getattr(tower, "attn_mask", None))


def _eos_id(model, tower):
    return getattr(model, "text_eos_id", None) if tower is model else getattr(tower, "eos_id", None)


def _end_positions(tokens: torch.Tensor, pool: str, eos_id) -> torch.Tensor:
    """Token ids -> the position each row pools at (as open_clip's text_global_pool picks it)."""
    if pool == "argmax":
        return tokens.argmax(dim=-1)
    return (tokens == eos_id).int().argmax(dim=-1)


def _forward(tower, pool: str, eos_id, tokens: torch.Tensor) -> torch.Tensor:
    """The text tower over tokens already cut to their length (open_clip's encode_text with the
    positional embedding and the causal mask cut to match)."""
    from open_clip.transformer import text_global_pool

    length = tokens.shape[1]
    cast_dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(tokens).to(cast_dtype)
    x = x + tower.positional_embedding[:length].to(cast_dtype)
    x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
    x = tower.ln_final(x)
    x = text_global_pool(x, tokens, pool, eos_token_id=eos_id)
    projection = tower.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def encode_text(model, tokens: torch.Tensor, trim: bool = True, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """open_clip model + token ids (batch, context) -> text features (batch, dim), as model.encode_text.

    With trim (and a model where it is exact: `trimmable`), rows are sorted by their end-of-text
    position and run in chunks of chunk_rows, each cut to its longest row.
    """
    if not trim or tokens.shape[0] == 0 or not trimmable(model):
        return model.encode_text(tokens)
    tower, pool = _tower(model)
    eos_id = _eos_id(model, tower)
    ends = _end_positions(tokens, pool, eos_id)
    order = torch.argsort(ends, stable=True)
    out = None
    for start in range(0, tokens.shape[0], chunk_rows):
        rows = order[start:start + chunk_rows]
        length = int(ends[rows].max()) + 1
        features = _forward(tower, pool, eos_id, tokens[rows, :length])
        if out is None:
            out = features.new_empty((tokens.shape[0], features.shape[1]))
        out[rows] = features
    return out
