"""The demo's toy shop: toy-world scenes (laion_spark.toy.world) as image URLs with alt texts.

INPUT  -> the demo seed (which scenes), or an image URL path (which scene to draw)
OUTPUT -> `toy_images(seed)`: TOY_IMAGES `ToyImage`s (URL, scene, alt text; a quarter of the alt
          texts are one-attribute mismatches, `world.mismatch`); `planted_images(seed)`: TOY_UNSAFE
          red scenes and TOY_WATERMARKED watermarked previews, with their true captions;
          `shop_images(seed)`: all of them in page order; `toy_png(path)`: the PNG the demo image
          server sends for a toy URL path, None for any other path

A toy URL names its scene: http://toys.example.com/toy/<stream>/<index>.png is world.sample(stream,
index), so the image server draws exactly the scene the crawl captioned (same attributes, same rng)
without knowing the seed. The stream is the world's test split for the demo seed
(`world.split_seed("test", seed)`): never the train stream the toy CLIP learned from, nor the
validation stream its threshold was chosen on.

The planted scenes are for the tag stage's toy heads (laion_spark/toy/heads.py). "Unsafe" is red
there: the shop takes the first TOY_UNSAFE red scenes of the stream after its TOY_IMAGES ordinary
ones. A watermark is heads.add_watermark's overlay: .../toy/<stream>/<index>-wm.png is the scene as a
stock site's small preview, 64x64 (the world's own size, not scaled up) with the overlay drawn
translucent over it, placed by an rng seeded from the path; the shop takes the first TOY_WATERMARKED
scenes that are not red after the ordinary ones. The toy pwatermark head was trained on the overlay at
that size, so it sees it only where no resize blurs it: the demo's download keeps small images as they
are (download.resize_only_if_bigger), and the head then reads the pixels drawn here. The toy CLIP
never saw text on a picture: it scores most watermarked previews under its threshold, true captions
or not (the demo's report says how many the filter kept).
"""

from __future__ import annotations

import io
import random
import re
from dataclasses import dataclass

TOY_HOST = "toys.example.com"
TOY_IMAGES = 40  # ordinary scenes in the shop, TOY_IMAGES // 4 of them with a mismatched caption
TOY_UNSAFE = 4  # red scenes planted for the toy punsafe head
TOY_WATERMARKED = 8  # watermarked previews planted for the toy pwatermark head
TOY_PER_PAGE = 8
# 64x64 -> 256x256 (download.image_size, so the download stage does not resize it), NEAREST: the
# scene's own pixels, only bigger
TOY_SCALE = 4
# a watermarked preview: the overlay blended at this opacity (stock sites draw theirs translucent; the
# toy head, trained on opaque text, still sees it, and the toy CLIP is disturbed a little less)
WATERMARK_OPACITY = 0.85
_PATH = re.compile(r"^/toy/(\d{1,9})/(\d{1,9})(-wm)?\.png$")


@dataclass(frozen=True)
class ToyImage:
    """One toy-shop `<img>`: `alt` is the caption written on the page, `caption` the scene's own;
    `mismatched` names the attribute the alt text gets wrong (None: the alt is the true caption);
    `planted` is "unsafe" (a red scene) or "watermarked" (the watermarked preview), None for an
    ordinary scene."""

    url: str
    stream: int
    index: int
    caption: str
    alt: str
    mismatched: str | None = None
    planted: str | None = None

    @property
    def path(self) -> str:
        return toy_path(self.stream, self.index, self.planted == "watermarked")


def toy_path(stream: int, index: int, watermarked: bool = False) -> str:
    """world stream + index (+ whether watermarked) -> the URL path of that scene."""
    return f"/toy/{stream}/{index}{'-wm' if watermarked else ''}.png"


def is_toy_path(path: str) -> bool:
    """URL path -> whether it names a toy scene (toy_png draws it)."""
    return _PATH.match(path) is not None


def _image(stream: int, index: int, caption: str, alt: str | None = None, mismatched: str | None = None,
           planted: str | None = None) -> ToyImage:
    url = f"http://{TOY_HOST}{toy_path(stream, index, planted == 'watermarked')}"
    return ToyImage(url, stream, index, caption, alt or caption, mismatched, planted)


def toy_images(seed: int = 0) -> tuple[ToyImage, ...]:
    """demo seed -> the shop's ordinary images, in index order; the same seed always gives the same ones."""
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
        images.append(_image(stream, index, scene.caption, alt, which))
    return tuple(images)


def planted_images(seed: int = 0) -> tuple[ToyImage, ...]:
    """demo seed -> the planted images (true captions): the first TOY_UNSAFE red scenes and the first
    TOY_WATERMARKED other scenes of the stream after the ordinary ones, in index order."""
    from laion_spark.toy import world
    from laion_spark.toy.heads import RECIPE

    stream = world.split_seed("test", seed)
    unsafe, watermarked = [], []
    index = TOY_IMAGES
    while len(unsafe) < TOY_UNSAFE or len(watermarked) < TOY_WATERMARKED:
        scene = world.sample(stream, index)
        red = scene.attributes["colour"] == RECIPE["unsafe_colour"]
        if red and len(unsafe) < TOY_UNSAFE:
            unsafe.append(_image(stream, index, scene.caption, planted="unsafe"))
        elif not red and len(watermarked) < TOY_WATERMARKED:
            watermarked.append(_image(stream, index, scene.caption, planted="watermarked"))
        index += 1
    return tuple(sorted(unsafe + watermarked, key=lambda t: t.index))


def shop_images(seed: int = 0) -> tuple[ToyImage, ...]:
    """demo seed -> every image of the shop in page order: the ordinary ones with the planted ones
    inserted among them at places the seed picks."""
    images = list(toy_images(seed))
    rng = random.Random(f"laion-spark-demo-planted-{seed}")
    for image in planted_images(seed):
        images.insert(rng.randrange(len(images) + 1), image)
    return tuple(images)


def toy_png(path: str) -> bytes | None:
    """URL path -> the PNG of its scene (256x256; a watermarked preview 64x64), or None when the path
    is not a toy path."""
    import numpy as np
    from PIL import Image

    from laion_spark.toy import world
    from laion_spark.toy.heads import add_watermark

    match = _PATH.match(path)
    if not match:
        return None
    stream, index = int(match[1]), int(match[2])
    image = world.sample(stream, index).image
    if match[3]:
        marked = add_watermark(image, np.random.default_rng([stream, index, 2]))
        image = Image.blend(image.convert("RGB"), marked, WATERMARK_OPACITY)
    else:
        image = image.resize((image.width * TOY_SCALE, image.height * TOY_SCALE), Image.Resampling.NEAREST)
    out = io.BytesIO()
    # zlib level 0: the flat render compresses to about 1 KB, under LAION's 5 KB minimum
    # (download.min_image_bytes, meant for icons and spacers); uncompressed it passes, pixel for pixel
    image.save(out, "PNG", compress_level=0)
    return out.getvalue()
