"""embed's row logic on every real image of ../shared/corpora/images (bytes as stored, no download):
corrupt files, decompression bombs, icon containers, 16-bit, CMYK, animated, EXIF-rotated.

Expectations come from outside the code under test: IMAGE_FACTS.tsv (what Pillow 13 made of each
file, measured with its own bomb guard on, and what its magic bytes are) and the file names'
extensions. Embed reads the formats the download stage stores (JPEG, PNG, WebP) and refuses the
rest unparsed. The download stage's module is imported first, as in a Python worker that ran a
download task; Pillow's own bomb guard is then still as Pillow ships it (nothing of ours turns it
off), and embed's header check decides before Pillow's would.
"""

from __future__ import annotations

import csv
import re
import warnings

import numpy as np
import pytest

import laion_spark.download.image  # noqa: F401 - the worker state after a download task (see above)
from laion_spark.config import load_config
from laion_spark.embed.encode import (
    IMAGE_DECODE_ERROR,
    PREPROCESS_ERROR,
    TOO_MANY_PIXELS,
    UNSUPPORTED_FORMAT,
    embed_rows,
)
from laion_spark.embed.model import load_model, model_specs
from tests.corpora import require
from tests.embed_fixtures import TINY_A, write_model

CONTAINERS = ("ico", "cur", "icns")  # by extension: Pillow decodes their frames inside open()
STORED = ("jpeg", "png", "webp")  # magic bytes of what download stores (encode_format jpg / png / webp)
# magic bytes of formats Pillow knows that download never stores: refused from the magic bytes
NOT_STORED = ("gif", "tiff", "bmp", "ico/cur", "icns", "jpeg2000", "psd", "isobmff:avif")
MAX_PIXELS = 89_478_484  # embed.max_pixels' default


@pytest.fixture(scope="module")
def corpus_rows(tmp_path_factory):
    """-> (IMAGE_FACTS rows, image embedding or None per row, error_message or None per row)."""
    folder = require("images").parent
    with (folder / "images" / "IMAGE_FACTS.tsv").open(newline="", encoding="utf-8") as handle:
        facts = list(csv.DictReader(handle, delimiter="\t"))
    model = write_model(tmp_path_factory.mktemp("corpora-model"), "tiny-a", TINY_A, seed=1)
    cfg = load_config([], ["input=unused", "output=unused", *model.overrides()])
    loaded = load_model(model_specs(cfg.embed)["en"])
    data = [(folder / f["path"]).read_bytes() for f in facts]
    image, errors = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about odd files; the rows say what happened
        for i in range(0, len(data), 32):
            rows = embed_rows(loaded, data[i:i + 32], ["an image"] * len(data[i:i + 32]))
            image += rows.image
            errors += rows.errors
    return facts, image, errors


def _extension(fact) -> str:
    return fact["path"].rsplit(".", 1)[-1].lower()


def test_every_row_is_embedded_or_says_why(corpus_rows):
    facts, image, errors = corpus_rows
    assert len(image) == len(errors) == len(facts) > 600
    reasons = {IMAGE_DECODE_ERROR, PREPROCESS_ERROR, TOO_MANY_PIXELS, UNSUPPORTED_FORMAT}
    for fact, vector, error in zip(facts, image, errors):
        if error is None:
            assert vector is not None and np.isfinite(vector).all(), fact["path"]
            assert abs(float(np.linalg.norm(vector)) - 1) < 1e-4, fact["path"]
        else:
            assert vector is None and error.split(":")[0] in reasons, (fact["path"], error)


def test_bombs_are_refused_from_the_header(corpus_rows):
    facts, _, errors = corpus_rows
    bombs = [i for i, f in enumerate(facts) if "DecompressionBombError" in f["pillow_13_0_0"]]
    assert len(bombs) >= 5
    for i in bombs:  # refused before decoding: by size, or as a format that embed does not read
        want = TOO_MANY_PIXELS if facts[i]["magic"] in STORED else UNSUPPORTED_FORMAT
        assert errors[i] and errors[i].startswith(want + ":"), (facts[i]["path"], errors[i])
    for fact, error in zip(facts, errors):
        if error and error.startswith(TOO_MANY_PIXELS):  # every size refusal names a size over the limit
            width, height = map(int, re.search(r"(\d+)x(\d+) =", error).groups())
            assert width * height > MAX_PIXELS, (fact["path"], error)


def test_containers_are_refused_and_images_pillow_reads_are_embedded(corpus_rows):
    facts, _, errors = corpus_rows
    for fact, error in zip(facts, errors):
        if _extension(fact) in CONTAINERS:
            assert error and error.startswith(UNSUPPORTED_FORMAT + ":"), fact["path"]
    not_stored = [(f, e) for f, e in zip(facts, errors) if f["magic"] in NOT_STORED]
    assert len(not_stored) > 100
    for fact, error in not_stored:
        assert error and error.startswith(UNSUPPORTED_FORMAT + ":"), (fact["path"], error)
    stored = [(f, e) for f, e in zip(facts, errors) if f["magic"] in STORED]
    readable = [e for f, e in stored if f["pillow_13_0_0"] == "ok"]
    unreadable = [e for f, e in stored if f["pillow_13_0_0"] != "ok"]
    # a few files sit on the edge (Pillow reads them only in part); the rest must agree with Pillow
    assert sum(e is None for e in readable) >= 0.98 * len(readable) and len(readable) > 300
    assert sum(e is not None for e in unreadable) >= 0.95 * len(unreadable) and len(unreadable) > 20
