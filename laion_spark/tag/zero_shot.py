"""LAION-400M's NSFW column by zero-shot CLIP: image embeddings + category prompts -> UNLIKELY / UNSURE / NSFW.

INPUT  -> n x d image embeddings, the prompts' text embeddings (encoded by the same CLIP), and the
          number of neutral prompts at the head of the list (`boundary`)
OUTPUT -> per image one of UNLIKELY / UNSURE / NSFW (None where the embedding is missing or not finite)

The rule (reference: peers-index-tag-export.md, 3d; crawlingathome's clip_filter): the two prompts with
the highest softmax(100 x cosine) are taken; both neutral (index < boundary) -> UNLIKELY, both not ->
NSFW, one of each -> UNSURE. It needs no weights beyond the CLIP model, so any checkpoint works.

The prompt list LAION ran lost a comma: "animal, bird, mammal, insect" "fashion, clothes" are one string,
so its list has 35 prompts, the first sexual one sits at 18, and the rule's `< 19` counts it as neutral.
`laion400m` keeps that list and boundary, so LAION-400M's column is reproduced; `laion400m_fixed`
restores the comma (36 prompts, 19 neutral, the same boundary now right).
"""

from __future__ import annotations

import numpy as np

UNLIKELY, UNSURE, NSFW = "UNLIKELY", "UNSURE", "NSFW"
LOGIT_SCALE = 100.0  # CLIP's: softmax(100 x cosine), as LAION's filter computed it

_NEUTRAL = ["neutral", "selfie", "illustration, drawing", "toys, play, kids, children", "teddy bear, puppet",
            "animal, bird, mammal, insect", "fashion, clothes", "logo, commercial, ad, advertisement",
            "drawing, painting", "anime, cartoon", "comedy, fun", "romance, love story",
            "thriller, suspense, crime story", "action, action movie", "horror, monster movie", "documentary",
            "news, journalism", "entertainment", "talk show"]
_SEXUAL = ["porn, sex, sperm, nipples, breats, tits, boops, penis, dick, cock, clitoris, vagina, fuck, lust, horny, "
           "sexual, lick, licking", "porn, sex, sperm, nipples", "porn, sex, sperm, penis, dick, cock",
           "nipples, breats, tits, boops, sexy", "penis, dick, cock", "clitoris, vagina",
           "sex, fuck, lust, horny, sexual, lick, licking", "porn, sex, sexy", "sexy, hot", "sperm, skin",
           "lust, horny, sexual", "lick, licking, body", "anime, hentai, sexy", "cartoon, sexy, sex", "hentai",
           "anime, sexy, breasts", "hentai"]


def _published() -> list[str]:
    fused = _NEUTRAL[:5] + [_NEUTRAL[5] + _NEUTRAL[6]] + _NEUTRAL[7:]  # Python joined the two literals
    return fused + _SEXUAL


PRESETS: dict[str, tuple[list[str], int]] = {
    "laion400m": (_published(), 19),
    "laion400m_fixed": (_NEUTRAL + _SEXUAL, 19),
}


def preset(name: str) -> tuple[list[str], int]:
    """A preset's name -> (prompts, boundary); KeyError naming the presets for another name."""
    if name not in PRESETS:
        raise KeyError(f"no prompt preset {name!r}; presets: {sorted(PRESETS)}")
    prompts, boundary = PRESETS[name]
    return list(prompts), boundary


def read_prompts(text: str, source: str) -> tuple[list[str], int]:
    """A prompt file's text -> (prompts, boundary): one prompt per line, `#` comments and blank lines
    skipped, a line `---` between the neutral prompts and the others (ValueError naming the line)."""
    neutral: list[str] = []
    other: list[str] = []
    seen_split = False
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line == "---":
            if seen_split:
                raise ValueError(f"{source}:{n}: a second '---'")
            seen_split = True
            continue
        (other if seen_split else neutral).append(line)
    if not seen_split or not neutral or not other:
        raise ValueError(f"{source}: give neutral prompts, a line '---', then the NSFW prompts (one per line)")
    return neutral + other, len(neutral)


def categorise(images: np.ndarray, prompts: np.ndarray, boundary: int) -> list[str | None]:
    """n x d image embeddings, p x d prompt embeddings -> the NSFW category of each image."""
    x = np.asarray(images, dtype=np.float64)
    t = np.asarray(prompts, dtype=np.float64)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    ok = np.isfinite(x).all(axis=1) & (norms[:, 0] > 0)
    logits = LOGIT_SCALE * (np.where(ok[:, None], x, 0.0) / np.where(norms > 0, norms, 1.0)) @ t.T
    # softmax is monotone, so its top 2 are the logits' top 2 (ties broken by the lower index, as torch.topk)
    top2 = np.argsort(-logits, axis=1, kind="stable")[:, :2]
    out: list[str | None] = []
    for good, (a, b) in zip(ok, top2, strict=True):
        if not good:
            out.append(None)
        elif a < boundary and b < boundary:
            out.append(UNLIKELY)
        elif a >= boundary and b >= boundary:
            out.append(NSFW)
        else:
            out.append(UNSURE)
    return out
