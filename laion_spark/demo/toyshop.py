"""The demo's toy shop: toy-world scenes (laion_spark.toy.world) as image URLs with alt texts.

INPUT  -> the demo seed (which scenes) and a Shop (how many scenes, what share of their alt texts is
          wrong: demo.toy_images, demo.wrong_captions, demo.unrelated_captions), or an image URL
          path (which scene to draw)
OUTPUT -> `toy_images(seed, shop)`: shop.images `ToyImage`s (URL, scene, alt text; by default a
          quarter of the alt texts are one-attribute mismatches, `world.mismatch`, and a larger shop
          may also carry unrelated ones, as web alt texts do); `planted_images(seed)`: TOY_UNSAFE red
          scenes and TOY_WATERMARKED watermarked previews, with their true captions;
          `shop_images(seed, shop)`: all of them in page order; `toy_png(path)`: the PNG the demo
          image server sends for a toy URL path, None for any other path

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
TOY_IMAGES = 40  # ordinary scenes in the default shop, TOY_IMAGES // 4 of them with a mismatched caption
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
# unrelated alt texts: what shop pages put on pictures besides a description (long enough for LAION's
# rules, so extract keeps them and only the CLIP filter can tell)
UNRELATED_ALTS = (
    "Free shipping on all orders over fifty dollars", "Click here to see this week's special offers",
    "Add to cart and save ten percent today", "Best price guaranteed or your money back",
    "Customer photo from our spring collection", "Sign up for our newsletter to win prizes",
    "Product image coming soon, please check back", "Gift cards available in every store",
)


@dataclass(frozen=True)
class Shop:
    """The toy shop's size and alt-text noise (DemoConfig's toy_images, wrong_captions, unrelated_captions)."""

    images: int = TOY_IMAGES  # ordinary scenes (the planted ones come on top)
    wrong: float = 0.25  # share of them whose alt gets exactly one attribute wrong
    unrelated: float = 0.0  # share whose alt is about something else: shop boilerplate or another scene

    def __post_init__(self) -> None:
        shares = (self.wrong, self.unrelated, self.wrong + self.unrelated)
        if self.images < 1 or not all(0 <= share <= 1 for share in shares):
            raise ValueError(f"a toy shop needs images >= 1 and wrong + unrelated shares within 0..1: {self}")

    @classmethod
    def of(cls, demo_cfg) -> Shop:
        return cls(demo_cfg.toy_images, demo_cfg.wrong_captions, demo_cfg.unrelated_captions)


DEFAULT_SHOP = Shop()  # the demo's: 40 scenes, a quarter of them one attribute wrong


@dataclass(frozen=True)
class ToyImage:
    """One toy-shop `<img>`: `alt` is the caption written on the page, `caption` the scene's own;
    `mismatched` names the attribute the alt text gets wrong, or is "unrelated" (None: the alt is the
    true caption);
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


def toy_images(seed: int = 0, shop: Shop = DEFAULT_SHOP) -> tuple[ToyImage, ...]:
    """demo seed + Shop -> the shop's ordinary images, in index order; the same seed and shop always give
    the same ones."""
    import numpy as np

    from laion_spark.toy import world

    stream = world.split_seed("test", seed)
    n = shop.images
    chosen = random.Random(f"laion-spark-demo-toys-{seed}").sample(range(n), round(n * shop.wrong))
    # colour, shape and count take turns, so every kind of mismatch is in the shop
    mismatched = {index: world.MISMATCH_ATTRIBUTES[k % 3] for k, index in enumerate(sorted(chosen))}
    rest = sorted(set(range(n)) - set(chosen))
    unrelated = set(random.Random(f"laion-spark-demo-unrelated-{seed}").sample(rest, round(n * shop.unrelated)))
    images = []
    for index in range(n):
        scene = world.sample(stream, index)
        which, alt = mismatched.get(index), None
        if which:
            alt = world.mismatch(scene.attributes, which, np.random.default_rng([stream, index, 1]))
        elif index in unrelated:
            which, pick = "unrelated", random.Random(f"laion-spark-demo-unrelated-{seed}-{index}")
            # half boilerplate, half the caption of a scene that differs in two or more of colour, shape and
            # count (a picture captioned for its neighbour, never a near miss or the truth by chance)
            others = [a for a in world.all_attributes()
                      if sum(a[k] != scene.attributes[k] for k in world.MISMATCH_ATTRIBUTES) >= 2]
            alt = pick.choice(UNRELATED_ALTS) if pick.random() < 0.5 else world.caption(pick.choice(others))
        images.append(_image(stream, index, scene.caption, alt, which))
    return tuple(images)


def planted_images(seed: int = 0, shop: Shop = DEFAULT_SHOP) -> tuple[ToyImage, ...]:
    """demo seed -> the planted images (true captions): the first TOY_UNSAFE red scenes and the first
    TOY_WATERMARKED other scenes of the stream after the ordinary ones, in index order."""
    from laion_spark.toy import world
    from laion_spark.toy.heads import RECIPE

    stream = world.split_seed("test", seed)
    unsafe, watermarked = [], []
    index = shop.images
    while len(unsafe) < TOY_UNSAFE or len(watermarked) < TOY_WATERMARKED:
        scene = world.sample(stream, index)
        red = scene.attributes["colour"] == RECIPE["unsafe_colour"]
        if red and len(unsafe) < TOY_UNSAFE:
            unsafe.append(_image(stream, index, scene.caption, planted="unsafe"))
        elif not red and len(watermarked) < TOY_WATERMARKED:
            watermarked.append(_image(stream, index, scene.caption, planted="watermarked"))
        index += 1
    return tuple(sorted(unsafe + watermarked, key=lambda t: t.index))


def shop_images(seed: int = 0, shop: Shop = DEFAULT_SHOP) -> tuple[ToyImage, ...]:
    """demo seed + Shop -> every image of the shop in page order: the ordinary ones with the planted ones
    inserted among them at places the seed picks."""
    images = list(toy_images(seed, shop))
    rng = random.Random(f"laion-spark-demo-planted-{seed}")
    for image in planted_images(seed, shop):
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
