"""Download's image work, ours against OpenCV's (img2dataset's) and pyvips': decode -> 256 border -> JPEG, per image.

    .venv/bin/python bench/image_paths.py [--seed 0] [--pool 200] [--passes 3]

INPUT  -> bench/download.py's image pool (bench/imageset.py: JPEG / PNG / WebP, 200x200 .. 1600x1200)
OUTPUT -> printed: ms per image, overall and per format, for
          ours    laion_spark.download.image.process_image with the download stage's defaults (every
                  check in it: format sniffing, the header-first bomb guard, EXIF orientation, the
                  border geometry, JPEG at its quality), in this process
          opencv  cv2.imdecode + INTER_AREA resize + copyMakeBorder + imencode (JPEG, quality 95), as
                  img2dataset does, in img2dataset's venv (build/img2dataset-venv, `make img2dataset`, or
                  $IMG2DATASET_PYTHON); skipped with a reason where there is none
          pyvips  pyvips.Image.thumbnail_buffer (shrink-on-load, EXIF autorotate) + flatten on white +
                  gravity to the square + jpegsave_buffer (Q 95), in build/pyvips-venv (`make pyvips`, or
                  $PYVIPS_PYTHON); skipped with a reason where there is none
          and the ratios. One thread each (OpenCV's threads off, VIPS_CONCURRENCY=1), the mean of --passes
          passes after a warm-up pass.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import imageset  # noqa: E402 (bench/ beside this script)

# each peer's script: its own run(body) (decode -> 256 border -> JPEG) between HEAD and TIMING
HEAD = r"""
import json, sys, time
from collections import defaultdict
from pathlib import Path
directory, names, passes = Path(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
bodies = [(n.rsplit(".", 1)[-1], (directory / n).read_bytes()) for n in names]
"""
TIMING = r"""
for _, body in bodies:  # a warm-up pass
    run(body)
times = defaultdict(list)
for _ in range(passes):
    for ext, body in bodies:
        start = time.perf_counter()
        run(body)
        times[ext].append(time.perf_counter() - start)
print(json.dumps(times))
"""

OPENCV = HEAD + r"""
import cv2, numpy as np

cv2.setNumThreads(1)

def run(body, side=256):
    img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    scale = side / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LANCZOS4)
    top, left = (side - nh) // 2, (side - nw) // 2
    img = cv2.copyMakeBorder(img, top, side - nh - top, left, side - nw - left, cv2.BORDER_CONSTANT,
                             value=[255, 255, 255])
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
""" + TIMING


PYVIPS = HEAD + r"""
import pyvips

pyvips.cache_set_max(0)  # every pass decodes again, as a download does

def run(body, side=256):
    img = pyvips.Image.thumbnail_buffer(body, side, height=side)  # fits inside side x side
    if img.hasalpha():
        img = img.flatten(background=[255, 255, 255])
    if img.interpretation != "srgb":
        img = img.colourspace("srgb")
    img = img.gravity("centre", side, side, extend="background", background=[255, 255, 255])
    return img.jpegsave_buffer(Q=95)
""" + TIMING

# name -> (the code run in its own venv, $VAR naming another interpreter, the default venv, how to make it)
PEERS = {
    "opencv": (OPENCV, "IMG2DATASET_PYTHON", "img2dataset-venv", "make img2dataset"),
    "pyvips": (PYVIPS, "PYVIPS_PYTHON", "pyvips-venv", "make pyvips"),
}


def summary(times: dict[str, list[float]]) -> tuple[float, dict[str, float]]:
    every = [t for ts in times.values() for t in ts]
    return 1000 * sum(every) / len(every), {k: round(1000 * sum(v) / len(v), 2) for k, v in sorted(times.items())}


def ours(directory: Path, names: list[str], passes: int) -> dict[str, list[float]]:
    from laion_spark.config import load_config
    from laion_spark.download.image import process_image

    cfg = load_config([], ["input=x", "output=y"], stage="download").download
    bodies = [(n.rsplit(".", 1)[-1], (directory / n).read_bytes()) for n in names]
    for _, body in bodies:
        process_image(body, cfg)
    times = defaultdict(list)
    for _ in range(passes):
        for ext, body in bodies:
            start = time.perf_counter()
            result = process_image(body, cfg)
            times[ext].append(time.perf_counter() - start)
            assert result.status == "success", (ext, result.status)
    return times


def peer(name: str, directory: Path, names: list[str], passes: int) -> dict[str, list[float]] | str:
    code, var, venv, make = PEERS[name]
    python = os.environ.get(var) or str(HERE.parent / "build" / venv / "bin" / "python")
    if not Path(python).is_file():
        return f"no interpreter at {python} ({make}, or set {var})"
    env = dict(os.environ, VIPS_CONCURRENCY="1", OMP_NUM_THREADS="1")
    res = subprocess.run([python, "-c", code, str(directory), json.dumps(names), str(passes)],
                         capture_output=True, text=True, timeout=1800, env=env)
    if res.returncode != 0:
        return f"the {name} run failed: {res.stderr[-500:]}"
    return json.loads(res.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", type=int, default=200)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    directory, pool, _ = imageset.load_pool(args.seed, args.pool)
    names = [p.name for p in pool]
    counts = defaultdict(int)
    for n in names:
        counts[n.rsplit(".", 1)[-1]] += 1
    print(f"pool: {len(names)} images {dict(sorted(counts.items()))}, {args.passes} passes, one thread")
    mine, mine_by = summary(ours(directory, names, args.passes))
    print(f"ours (Pillow, process_image): {mine:.2f} ms/image  {mine_by}")
    for name in PEERS:
        theirs = peer(name, directory, names, args.passes)
        if isinstance(theirs, str):
            print(f"{name}: skipped: {theirs}")
            continue
        other, other_by = summary(theirs)
        print(f"{name}: {other:.2f} ms/image  {other_by}")
        print(f"    ratio ({name} time / ours, > 1: ours faster): {other / mine:.2f}x")


if __name__ == "__main__":
    main()
