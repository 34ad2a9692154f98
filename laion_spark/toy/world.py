"""A deterministic synthetic world of captioned images: (seed, index) -> (64x64 RGB image, caption, attributes).

Each image shows one, two or three shapes of one colour and one kind on a plain or striped grey
background; its caption names exactly those attributes ("a red circle", "two blue squares",
"three green triangles on a striped background"). The toy CLIP (`laion_spark.toy.train`) learns
this world, and the tests use it to check that image-text similarity means something.

Splits are disjoint sample streams: `split("train" | "validation" | "test", n, seed)` draws from
a stream of its own, so no split ever reuses another's (seed, index). `mismatch()` changes exactly
one attribute of a caption, which is what a filter has to notice.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64

# Saturated, well-separated hues: the background is grey, so colour never belongs to the background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
}
SHAPES: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles"}
COUNTS: dict[int, str] = {1: "a", 2: "two", 3: "three"}
BACKGROUNDS = ("plain", "striped")

# The attributes a mismatched caption may change; the background is described but never swapped
# alone, so a mismatch is always about the objects themselves.
MISMATCH_ATTRIBUTES = ("colour", "shape", "count")

SPLITS = ("train", "validation", "test")

# Shapes sit in distinct cells of a 3x3 grid, so they never overlap and the count stays visible.
_GRID = 3
_CELL = IMAGE_SIZE / _GRID
_COLOUR_JITTER = 18


class Sample(NamedTuple):
    image: Image.Image
    caption: str
    attributes: dict


def caption(attributes: dict) -> str:
    """attributes {colour, shape, count, background} -> the caption that describes them."""
    count = attributes["count"]
    shape = attributes["shape"] if count == 1 else SHAPES[attributes["shape"]]
    number = COUNTS[count]
    if count == 1 and attributes["colour"][0] in "aeiou":
        number = "an"  # "an orange circle"
    text = f"{number} {attributes['colour']} {shape}"
    if attributes["background"] == "striped":
        text += " on a striped background"
    return text


def all_attributes() -> list[dict]:
    """() -> every attribute combination of the world, in a fixed order (6 x 3 x 3 x 2 = 108)."""
    return [
        {"colour": colour, "shape": shape, "count": count, "background": background}
        for colour in COLOURS
        for shape in SHAPES
        for count in COUNTS
        for background in BACKGROUNDS
    ]


def _choose(rng: np.random.Generator, options):
    # Index-based choice keeps Python types (np.random.choice would return numpy scalars).
    options = list(options)
    return options[int(rng.integers(len(options)))]


def mismatch_attributes(attributes: dict, which: str, rng: np.random.Generator) -> dict:
    """attributes, which ("colour" | "shape" | "count"), rng -> a copy with only `which` changed to another value."""
    if which not in MISMATCH_ATTRIBUTES:
        raise ValueError(f"which must be one of {MISMATCH_ATTRIBUTES}, got {which!r}")
    values = {"colour": COLOURS, "shape": SHAPES, "count": COUNTS}[which]
    changed = dict(attributes)
    changed[which] = _choose(rng, [value for value in values if value != attributes[which]])
    return changed


def mismatch(attributes: dict, which: str, rng: np.random.Generator) -> str:
    """attributes, which, rng -> the caption of the same scene with exactly one attribute (`which`) changed."""
    return caption(mismatch_attributes(attributes, which, rng))


def _draw_background(draw: ImageDraw.ImageDraw, background: str, rng: np.random.Generator) -> None:
    light = int(rng.integers(215, 246))
    draw.rectangle((0, 0, IMAGE_SIZE, IMAGE_SIZE), fill=(light, light, light))
    if background == "plain":
        return
    dark = light - int(rng.integers(55, 90))
    width = int(rng.integers(2, 5))
    period = 2 * width + int(rng.integers(0, 3))
    orientation = _choose(rng, ("horizontal", "vertical", "diagonal"))
    for start in range(-IMAGE_SIZE, 2 * IMAGE_SIZE, period):
        if orientation == "horizontal":
            draw.rectangle((0, start, IMAGE_SIZE, start + width - 1), fill=(dark, dark, dark))
        elif orientation == "vertical":
            draw.rectangle((start, 0, start + width - 1, IMAGE_SIZE), fill=(dark, dark, dark))
        else:
            draw.line((start, 0, start + IMAGE_SIZE, IMAGE_SIZE), fill=(dark, dark, dark), width=width)


def _draw_shape(draw, shape: str, centre: tuple[float, float], radius: float, fill: tuple[int, int, int]) -> None:
    x, y = centre
    if shape == "circle":
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)
    elif shape == "square":
        half = radius * 0.85  # same apparent area as the circle, roughly
        draw.rectangle((x - half, y - half, x + half, y + half), fill=fill)
    else:
        draw.polygon([(x, y - radius), (x + radius, y + radius * 0.8), (x - radius, y + radius * 0.8)], fill=fill)


def render(attributes: dict, rng: np.random.Generator) -> Image.Image:
    """attributes, rng -> a 64x64 RGB image of the scene (positions, sizes, shades and stripes drawn from rng)."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))
    draw = ImageDraw.Draw(image)
    _draw_background(draw, attributes["background"], rng)
    base = COLOURS[attributes["colour"]]
    fill = tuple(int(np.clip(c + rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1), 0, 255)) for c in base)
    cells = rng.permutation(_GRID * _GRID)[: attributes["count"]]
    for cell in cells:
        radius = float(rng.uniform(8.0, 10.0))
        slack = _CELL / 2 - radius  # how far the centre may move without leaving its cell
        row, col = divmod(int(cell), _GRID)
        centre = (
            (col + 0.5) * _CELL + float(rng.uniform(-slack, slack)),
            (row + 0.5) * _CELL + float(rng.uniform(-slack, slack)),
        )
        _draw_shape(draw, attributes["shape"], centre, radius, fill)
    return image


def sample(seed: int, index: int) -> Sample:
    """seed, index -> Sample(image, caption, attributes); the same (seed, index) always gives the same sample."""
    rng = np.random.default_rng([seed, index])
    attributes = {
        "colour": _choose(rng, COLOURS),
        "shape": _choose(rng, SHAPES),
        "count": _choose(rng, COUNTS),
        "background": _choose(rng, BACKGROUNDS),
    }
    return Sample(render(attributes, rng), caption(attributes), attributes)


def split_seed(name: str, seed: int = 0) -> int:
    """split name, seed -> the stream seed of that split: distinct modulo len(SPLITS), so splits never share one."""
    if name not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
    return seed * len(SPLITS) + SPLITS.index(name)


def split(name: str, n: int, seed: int = 0, start: int = 0) -> list[Sample]:
    """split name, n, seed[, start] -> samples start..start+n-1 of that split's stream."""
    stream = split_seed(name, seed)
    return [sample(stream, index) for index in range(start, start + n)]
