"""The demo's toy shop: toy-world scenes (laion_spark.toy.world) as image URLs with alt texts.

INPUT  -> the demo seed (which scenes), or an image URL path (which scene to draw)
OUTPUT -> `toy_images(seed)`: TOY_IMAGES `ToyImage`s (URL, scene, alt text; a quarter of the alt
          texts are one-attribute mismatches, `world.mismatch`); `toy_png(path)`: the PNG the demo
          image server sends for a toy URL path, None for any other path

A toy URL names its scene: http://toys.example.com/toy/<stream>/<index>.png is world.sample(stream,
index), so the image server draws exactly the scene the crawl captioned (same attributes, same rng)
without knowing the seed. The stream is the world's test split for the demo seed
(`world.split_seed("test", seed)`): never the train stream the toy CLIP learned from, nor the
validation stream its threshold was chosen on.
"""

from __future__ import annotations

import io
import random
import re
from dataclasses import dataclass

TOY_HOST = "toys.example.com"
TOY_IMAGES = 40  # scenes in the shop, TOY_IMAGES // 4 of them with a mismatched caption
TOY_PER_PAGE = 8
# 64x64 -> 256x256 (download.image_size, so the download stage does not resize it), NEAREST: the
# scene's own pixels, only bigger
TOY_SCALE = 4
_PATH = re.compile(r"^/toy/(\d{1,9})/(\d{1,9})\.png$")


@dataclass(frozen=True)
class ToyImage:
    """One toy-shop `<img>`: `alt` is the caption written on the page, `caption` the scene's own;
    `mismatched` names the attribute the alt text gets wrong (None: the alt is the true caption)."""

    url: str
    stream: int
    index: int
    caption: str
    alt: str
    mismatched: str | None = None

    @property
    def path(self) -> str:
        return toy_path(self.stream, self.index)


def toy_path(stream: int, index: int) -> str:
    """world stream + index -> the URL path of that scene."""
    return f"/toy/{stream}/{index}.png"


def is_toy_path(path: str) -> bool:
    """URL path -> whether it names a toy scene (toy_png draws it)."""
    return _PATH.match(path) is not None


def toy_images(seed: int = 0) -> tuple[ToyImage, ...]:
    """demo seed -> the toy shop's images, in page order; the same seed always gives the same ones."""
    import numpy as np

    from laion_spark.toy import world

    stream = world.split_seed("test", seed)
    chosen = random.Random(f"laion-spark-demo-toys-{seed}").sample(range(TOY_IMAGES), TOY_IMAGES // 4)
    # colour, shape and count take turns, so every kind of mismatch is in the shop
    mismatched = {index: world.MISMATCH_ATTRIBUTES[k % 3] for k, index in enumerate(sorted(chosen))}
    images = []
    for index in range(TOY_IMAGES):
        scene = world.sample(stream, index)
        which, alt = mismatched.get(index), None
        if which:
            alt = world.mismatch(scene.attributes, which, np.random.default_rng([stream, index, 1]))
        url = f"http://{TOY_HOST}{toy_path(stream, index)}"
        images.append(ToyImage(url, stream, index, scene.caption, alt or scene.caption, which))
    return tuple(images)


def toy_png(path: str) -> bytes | None:
    """URL path -> the PNG of its scene (256x256), or None when the path is not a toy path."""
    from PIL import Image

    from laion_spark.toy import world

    match = _PATH.match(path)
    if not match:
        return None
    image = world.sample(int(match[1]), int(match[2])).image
    image = image.resize((image.width * TOY_SCALE, image.height * TOY_SCALE), Image.Resampling.NEAREST)
    out = io.BytesIO()
    # zlib level 0: the flat render compresses to about 1 KB, under LAION's 5 KB minimum
    # (download.min_image_bytes, meant for icons and spacers); uncompressed it passes, pixel for pixel
    image.save(out, "PNG", compress_level=0)
    return out.getvalue()
