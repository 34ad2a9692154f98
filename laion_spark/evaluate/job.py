"""The evaluate job: a run directory -> CLIPs trained from scratch on its filtered pairs and on baselines, measured.

INPUT  -> JobConfig with input (the run directory, `run_dir=`; or shards given as evaluate.train, `train=`),
          output (default <run_dir>/evaluate) and evaluate.* (the recipe: model, epochs x samples per
          epoch, batch size, learning rate, seed; the held-out images; the subsets)
OUTPUT -> under output: results.json and results.md (per subset: pairs, shards, steps, seconds, zero-shot
          top-1 accuracy per attribute and image -> text recall@1/@5 on held-out toy-world images, with
          the chance levels), shards/{all,random}/ (the baselines' shards), train/<subset>/ (open_clip_train's
          logs, when output is local); the summary dict holds the same figures

Every subset trains with the same recipe: the same architecture from the same seed, the same number of
steps (small subsets repeat), the same batch size and schedule; only the pairs differ. Held-out images
come from the toy world's validation stream, which no demo crawl draws from (laion_spark/toy/world.py),
so the measure fits runs on the demo's toy crawl, not on a real crawl.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from laion_spark.config import ConfigError

log = logging.getLogger(__name__)

RESUMES = True  # it describes a run: rewritten whole each time, not an error to redo


def default_output(cfg) -> str:
    return cfg.input.rstrip("/") + "/evaluate"


def prepare(cfg) -> None:
    from laion_spark.evaluate.subsets import check_names
    from laion_spark.io import exists

    ev = cfg.evaluate
    if not ev.train and not cfg.input:
        raise ConfigError("evaluate needs run_dir= (a finished run) or evaluate.train= (webdataset shards)")
    if cfg.input and not ev.train and not exists(cfg.input):
        raise ConfigError(f"run_dir not found: {cfg.input}")
    if not cfg.output:
        raise ConfigError("evaluate needs output= when it is given train= shards without run_dir=")
    check_names(ev.subsets)
    if ev.samples_per_epoch < ev.batch_size:
        raise ConfigError(f"evaluate.samples_per_epoch ({ev.samples_per_epoch}) is less than one batch "
                          f"(evaluate.batch_size {ev.batch_size})")
    try:
        import open_clip_train.main  # noqa: F401
        import webdataset  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"evaluate trains with open_clip's own trainer: {exc}; pip install "
                          "'laion-spark[evaluate]' (open_clip_torch >= 2.26.1 ships open_clip_train)") from None
    if ev.model and ev.model.endswith(".json") and not Path(ev.model).is_file():
        raise ConfigError(f"evaluate.model: no model config at {ev.model}")
    if ev.model and not ev.model.endswith(".json"):
        import open_clip

        if ev.model not in open_clip.list_models():
            raise ConfigError(f"evaluate.model: open_clip has no model {ev.model!r} (open_clip.list_models() lists "
                              "them; or give a model config .json)")
    recipe_of(cfg)  # the device's check, before any shard is written


def recipe_of(cfg):
    """EvaluateConfig -> the TrainRecipe every subset trains with (device and precision resolved)."""
    import torch

    from laion_spark.evaluate.train_clip import TrainRecipe
    from laion_spark.toy.train import MODEL_CONFIG

    ev = cfg.evaluate
    device = ev.device if ev.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("evaluate.device=cuda, but torch sees no CUDA device")
    return TrainRecipe(model=ev.model or str(MODEL_CONFIG), epochs=ev.epochs, samples_per_epoch=ev.samples_per_epoch,
                       batch_size=ev.batch_size, lr=ev.lr, warmup=ev.warmup, weight_decay=ev.weight_decay,
                       seed=ev.seed, device=device, precision="amp" if device == "cuda" else "fp32",
                       threads=ev.threads, timeout_s=ev.timeout_s)


def _local_folder(uri: str) -> Path | None:
    import fsspec

    from laion_spark.io import fsspec_uri

    fs, path = fsspec.core.url_to_fs(fsspec_uri(uri))
    return Path(path) if ("file" in fs.protocol or "local" in fs.protocol) else None


def train_and_measure(sets: dict, recipe, held: list, work: Path) -> dict[str, dict]:
    """{name: Subset} + TrainRecipe + held-out samples + a local folder -> {name: figures}: each subset
    trained from scratch with the same recipe (open_clip_train, train_clip.py), then measured (metrics.py)."""
    from laion_spark.evaluate import metrics
    from laion_spark.evaluate.train_clip import train

    results: dict[str, dict] = {}
    for name, subset in sets.items():
        log.info("evaluate: training %s on %s (%d pairs)", recipe.model_name, name, subset.samples)
        trained = train(subset.shards, subset.samples, recipe, str(work), name)
        try:
            model, preprocess, tokenizer = metrics.load(recipe.model, trained.checkpoint, recipe.device)
            measured = metrics.measure(model, preprocess, tokenizer, held, recipe.device)
        finally:
            Path(trained.checkpoint).unlink()  # 40+ MB each with the optimiser state; the figures are what is kept
        results[name] = {"pairs": subset.samples, "shards": len(subset.shards), "source": subset.source,
                         "steps": trained.steps, "samples_seen": trained.samples_seen,
                         "train_seconds": trained.seconds, "zero_shot": measured["zero_shot"],
                         "retrieval": measured["retrieval"]}
    return results


def run(spark, cfg) -> dict:
    from laion_spark.evaluate import metrics, subsets
    from laion_spark.io import write_json

    ev = cfg.evaluate
    recipe = recipe_of(cfg)
    out = cfg.output.rstrip("/")
    local_out = _local_folder(out)
    scratch = Path(tempfile.mkdtemp(prefix="laion-spark-evaluate-"))
    try:
        work = local_out / "train" if local_out is not None else scratch / "train"
        if work.exists():
            shutil.rmtree(work)  # open_clip_train refuses a run name that exists
        sets = subsets.build(spark, cfg.input, cfg, f"{out}/shards", scratch)
        held = metrics.heldout(ev.heldout_images, ev.seed)
        results = train_and_measure(sets, recipe, held, work)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    summary = {
        "run_dir": cfg.input or None,
        "output": out,
        "model": recipe.model_name,
        "recipe": {"epochs": recipe.epochs, "samples_per_epoch": recipe.samples_per_epoch,
                   "batch_size": recipe.batch_size, "steps": recipe.steps, "lr": recipe.lr, "warmup": recipe.warmup,
                   "weight_decay": recipe.weight_decay, "seed": recipe.seed, "device": recipe.device,
                   "precision": recipe.precision, "threads": recipe.threads},
        "heldout": {"images": len(held), "stream": f"toy world, validation split, seed {ev.seed}"},
        "chance": metrics.chance(),
        "subsets": results,
    }
    write_json(f"{out}/results.json", summary)
    _write_text(f"{out}/results.md", results_table(summary) + "\n")
    return summary


def _write_text(uri: str, text: str) -> None:
    import fsspec

    from laion_spark.io import fsspec_uri

    with fsspec.open(fsspec_uri(uri), "w", encoding="utf-8") as fh:
        fh.write(text)


def results_table(summary: dict) -> str:
    """The summary -> a Markdown table: one row per subset, and the chance levels."""
    head = ("| subset | pairs | steps | zero-shot colour | zero-shot shape | zero-shot count | recall@1 | recall@5 "
            "| train s |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for name, r in summary["subsets"].items():
        z, t = r["zero_shot"], r["retrieval"]
        rows.append(f"| {name} | {r['pairs']} | {r['steps']} | {z['colour']:.3f} | {z['shape']:.3f} | "
                    f"{z['count']:.3f} | {t['recall@1']:.3f} | {t['recall@5']:.3f} | {r['train_seconds']:.0f} |")
    z, t = summary["chance"]["zero_shot"], summary["chance"]["retrieval"]
    rows.append(f"| chance | | | {z['colour']:.3f} | {z['shape']:.3f} | {z['count']:.3f} | {t['recall@1']:.3f} | "
                f"{t['recall@5']:.3f} | |")
    return "\n".join([head, *rows])


def remove_from_outputs(evaluate_uri: str, sample_ids) -> list[dict]:
    """evaluate's output folder + sample_ids -> the baselines' shards (shards/<subset>/, img2dataset's layout)
    that hold them rewritten without their rows (takedown/rewrite.py), the others untouched byte for byte
    -> [{"file", "removed"}] per shard rewritten. No Spark. The rest holds no row: results.json and
    results.md are figures, train/ open_clip_train's logs, and the checkpoints are deleted once measured."""
    import fsspec

    from laion_spark.io import fsspec_uri
    from laion_spark.takedown import rewrite as W

    ids = [int(i) for i in sample_ids]
    if not ids:
        return []
    fs, folder = fsspec.core.url_to_fs(fsspec_uri(evaluate_uri.rstrip("/") + "/shards"))
    if not fs.isdir(folder):
        return []
    done: list[dict] = []
    for sub in sorted(p for p in fs.ls(folder, detail=False) if fs.isdir(p)):
        # the path fs.ls gives, under the URI's own scheme again (remote stores drop it)
        name = sub.rstrip("/").rsplit("/", 1)[-1]
        done += W.webdataset_shards(f"{evaluate_uri.rstrip('/')}/shards/{name}", ids)
    return done


def format_report(summary: dict) -> str:
    r = summary["recipe"]
    return "\n".join([
        f"evaluate: {summary['model']} from scratch, {r['epochs']} epoch(s) x {r['samples_per_epoch']} samples, "
        f"batch {r['batch_size']} ({r['steps']} steps, {r['device']}); held-out {summary['heldout']['images']} "
        f"toy-world images -> {summary['output']}/results.json",
        results_table(summary),
    ])
