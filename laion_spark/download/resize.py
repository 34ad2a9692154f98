"""Resize geometry of img2dataset's five modes, and its application to a Pillow image.

INPUT  -> an upright image size (w, h) and (image_size, resize_mode, resize_only_if_bigger)
OUTPUT -> a `Plan` (new size, centre-crop box, border padding) and `apply_plan(image, plan)`

The rules are those of img2dataset (rom1504/img2dataset `img2dataset/resizer.py`, `Resizer.__call__`,
read at commit 0d8caf8 of the 1.4x series; unchanged since the older 7247de0 apart from the added
keep_ratio_largest) with the albumentations 1.x functions it calls (`augmentations/geometric/
functional.py`: `_func_max_size`, `pad`; `augmentations/crops/functional.py`: `get_center_crop_coords`):

- keep_ratio, center_crop: `smallest_max_size` -> the shorter side becomes image_size; center_crop
  then `center_crop(size, size)`, whose origin is `((w - size) // 2, (h - size) // 2)`.
- keep_ratio_largest, border: `longest_max_size` -> the longer side becomes image_size; border then
  `pad(size, size, BORDER_CONSTANT, value=[255, 255, 255])`: white, `int((size - w) / 2.0)` on the
  left / top, the rest (so the odd pixel) on the right / bottom.
- new sizes: `scale = image_size / float(side)`; `round(dim * scale)` for each side (Python's
  round, half to even: albumentations' `py3round`); no resize at all when `scale == 1.0`.
- resize_only_if_bigger: img2dataset resizes only when "downscale" holds, which compares the
  shorter side with image_size for keep_ratio / center_crop and the longer side for border /
  keep_ratio_largest; an image it does not resize is neither cropped nor padded either.
- filters: INTER_AREA when downscaling and LANCZOS4 otherwise; here Pillow's BOX (the same
  area average) and LANCZOS.

One deliberate difference: a side that rounds to 0 (a 1000x1 banner to 256) becomes 1, where
OpenCV's resize would raise and img2dataset would report an error.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

WHITE = (255, 255, 255)
RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")
_SHORTER_SIDE_MODES = ("keep_ratio", "center_crop")
_LONGER_SIDE_MODES = ("keep_ratio_largest", "border")


@dataclass(frozen=True)
class Plan:
    """What to do to an upright image of size `source`; every box is in upright pixels."""

    source: tuple[int, int]
    resize: tuple[int, int] | None = None  # new (w, h), None = keep the pixels as they are
    downscale: bool = False  # filter choice (and whether a reduced JPEG decode may be used)
    crop: tuple[int, int, int, int] | None = None  # (left, top, right, bottom) after the resize
    pad: tuple[int, int, int, int] | None = None  # (left, top, right, bottom) border widths

    @property
    def output_size(self) -> tuple[int, int]:
        w, h = self.resize or self.source
        if self.crop:
            w, h = self.crop[2] - self.crop[0], self.crop[3] - self.crop[1]
        if self.pad:
            w, h = w + self.pad[0] + self.pad[2], h + self.pad[1] + self.pad[3]
        return w, h

    @property
    def identity(self) -> bool:
        return self.resize is None and self.crop is None and self.pad is None


def plan_resize(width: int, height: int, image_size: int, resize_mode: str, only_if_bigger: bool) -> Plan:
    """Upright size + resize settings -> the Plan img2dataset's Resizer would carry out."""
    source = (width, height)
    if resize_mode == "no":
        return Plan(source)
    if resize_mode in _SHORTER_SIDE_MODES:
        side = min(width, height)
    elif resize_mode in _LONGER_SIDE_MODES:
        side = max(width, height)
    else:
        raise ValueError(f"unknown resize_mode {resize_mode!r}; valid: {', '.join(RESIZE_MODES)}")
    downscale = side > image_size
    if only_if_bigger and not downscale:
        return Plan(source)
    scale = image_size / float(side)
    resize = None
    new_w, new_h = width, height
    if scale != 1.0:
        new_w, new_h = (max(1, round(dim * scale)) for dim in (width, height))
        resize = (new_w, new_h)
    crop = pad = None
    if resize_mode == "center_crop":
        left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
        if (new_w, new_h) != (image_size, image_size):
            crop = (left, top, left + image_size, top + image_size)
    elif resize_mode == "border":
        pad_w, pad_h = max(0, image_size - new_w), max(0, image_size - new_h)
        left, top = int(pad_w / 2.0), int(pad_h / 2.0)
        if pad_w or pad_h:
            pad = (left, top, pad_w - left, pad_h - top)
    return Plan(source, resize, downscale, crop, pad)


def resample_filter(plan: Plan) -> Image.Resampling:
    """BOX (area average, OpenCV's INTER_AREA) to shrink, LANCZOS to enlarge: img2dataset's defaults."""
    return Image.Resampling.BOX if plan.downscale else Image.Resampling.LANCZOS


def crop_and_pad(image: Image.Image, plan: Plan) -> Image.Image:
    """An upright image already at plan.resize -> centre-cropped / white-padded as planned."""
    if plan.crop:
        image = image.crop(plan.crop)
    if plan.pad:
        left, top, right, bottom = plan.pad
        canvas = Image.new(image.mode, (image.width + left + right, image.height + top + bottom),
                           WHITE if image.mode == "RGB" else 255)
        canvas.paste(image, (left, top))
        image = canvas
    return image


def apply_plan(image: Image.Image, plan: Plan) -> Image.Image:
    """An upright image of size plan.source -> the planned output (same mode)."""
    if plan.resize:
        image = image.resize(plan.resize, resample_filter(plan))
    return crop_and_pad(image, plan)
