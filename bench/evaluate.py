"""Benchmark (not a timed test): does the filter make a better dataset? The evaluation crawl through the
demo's pipeline, then `laion-spark evaluate`: a CLIP trained from scratch on the filtered pairs, on all
downloaded pairs and on a random subset as large as the filtered one, DataComp-style.

    SPARK_LOCAL_IP=127.0.0.1 .venv/bin/python bench/evaluate.py                 # conf/demo-evaluate.yaml
    SPARK_LOCAL_IP=127.0.0.1 .venv/bin/python bench/evaluate.py --set demo.toy_images=1000 --set evaluate.epochs=2

INPUT  -> conf/demo-evaluate.yaml (3,000 toy scenes, a fifth of the alt texts one attribute wrong, three
          tenths unrelated; the recipe), plus --set KEY=VALUE overrides for both commands
OUTPUT -> printed: the seconds of the demo and of evaluate; per subset the pairs and what they are (true
          captions, one attribute wrong, unrelated, from the toy shop's own list; other pages' pairs),
          the zero-shot top-1 per attribute, recall@1 / @5 and the training seconds, and the gain of the
          filtered subset over the random one; the run under bench/out/evaluate/run (results.md there)

What each subset holds is counted here from its shards' URLs against the toy shop's list of what each
scene's alt text is (demo/toyshop.py), not taken from evaluate's summary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out" / "evaluate"
CONF = REPO / "conf" / "demo-evaluate.yaml"


def _cli(*args: str) -> float:
    """Run `laion-spark ARGS` (its output to a log beside the run) -> its wall seconds; exit on failure."""
    cli = Path(sys.executable).parent / "laion-spark"
    env = {**os.environ, "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
           "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable)}
    log = OUT / f"{args[0]}.log"
    started = time.perf_counter()
    with open(log, "wb") as fh:
        rc = subprocess.run([str(cli), *args], stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.perf_counter() - started
    if rc != 0:
        sys.exit(f"laion-spark {args[0]} failed (exit {rc}); see {log}:\n" + log.read_text()[-3000:])
    return seconds


def _urls(folder: Path) -> list[str]:
    urls = []
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            urls += [json.loads(tar.extractfile(m).read())["url"] for m in tar if m.name.endswith(".json")]
    return urls


def _kinds(urls: list[str], shop_kind: dict[str, str]) -> Counter:
    return Counter(shop_kind.get(u, "other pages") for u in urls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for both commands")
    args = parser.parse_args()
    from laion_spark.config import load_config
    from laion_spark.demo.toyshop import Shop, shop_images

    OUT.mkdir(parents=True, exist_ok=True)
    run_dir = OUT / "run"
    demo_s = _cli("demo", "--config", str(CONF), f"output={run_dir}", "mode=overwrite", *args.set)
    evaluate_s = _cli("evaluate", "--config", str(CONF), f"run_dir={run_dir}", *args.set)
    results = json.loads((run_dir / "evaluate" / "results.json").read_text())

    demo = load_config([str(CONF)], [f"output={run_dir}", *args.set], stage="demo").demo
    shop_kind = {}
    for toy in shop_images(demo.seed, Shop.of(demo)):
        shop_kind[toy.url] = ("unrelated" if toy.mismatched == "unrelated" else "one attribute wrong"
                              if toy.mismatched else "true caption")
    folders = {"filtered": run_dir / "export" / "webdataset", "all": run_dir / "evaluate" / "shards" / "all",
               "random": run_dir / "evaluate" / "shards" / "random"}
    r = results["recipe"]
    print(f"toy shop: {demo.toy_images} scenes, {demo.wrong_captions:.0%} one attribute wrong, "
          f"{demo.unrelated_captions:.0%} unrelated; demo {demo_s:.0f} s, evaluate {evaluate_s:.0f} s "
          f"({results['model']}, {r['epochs']} x {r['samples_per_epoch']} samples, batch {r['batch_size']}, "
          f"{r['steps']} steps per subset, {r['device']}, {r['threads']} thread(s))")
    print("\n| subset | pairs | true captions | one attribute wrong | unrelated | other pages | zero-shot colour "
          "| shape | count | mean | recall@1 | recall@5 | train s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    means = {}
    for name, s in results["subsets"].items():
        kinds = _kinds(_urls(folders[name]), shop_kind)
        z, t = s["zero_shot"], s["retrieval"]
        means[name] = sum(z.values()) / 3
        print(f"| {name} | {s['pairs']:,} | {kinds['true caption']:,} | {kinds['one attribute wrong']:,} | "
              f"{kinds['unrelated']:,} | {kinds['other pages']:,} | {z['colour']:.3f} | {z['shape']:.3f} | "
              f"{z['count']:.3f} | {means[name]:.3f} | {t['recall@1']:.3f} | {t['recall@5']:.3f} | "
              f"{s['train_seconds']:.0f} |")
    c = results["chance"]
    print(f"| chance | | | | | | {c['zero_shot']['colour']:.3f} | {c['zero_shot']['shape']:.3f} | "
          f"{c['zero_shot']['count']:.3f} | | {c['retrieval']['recall@1']:.3f} | {c['retrieval']['recall@5']:.3f} | |")
    if {"filtered", "random"} <= set(means):
        subsets = results["subsets"]
        print(f"\nfiltered against random (same size, same recipe): mean zero-shot {means['filtered']:.3f} vs "
              f"{means['random']:.3f} ({means['filtered'] - means['random']:+.3f}); recall@5 "
              f"{subsets['filtered']['retrieval']['recall@5']:.3f} vs {subsets['random']['retrieval']['recall@5']:.3f}")
    if {"filtered", "all"} <= set(means):
        print(f"filtered against all ({results['subsets']['all']['pairs']:,} pairs): mean zero-shot "
              f"{means['filtered']:.3f} vs {means['all']:.3f} ({means['filtered'] - means['all']:+.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
