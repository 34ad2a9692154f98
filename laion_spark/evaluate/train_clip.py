"""open_clip's own trainer (`open_clip_train.main`) on webdataset shards, in a process of its own, repeatable.

INPUT  -> `train(shards, samples, recipe, workdir, name)`: the shard paths (local files), how many samples
          they hold, a TrainRecipe (model, epochs x samples per epoch, batch size, learning rate, seed,
          device, precision, threads) and a local working folder
OUTPUT -> TrainResult: the checkpoint open_clip_train wrote (`<workdir>/<name>/checkpoints/epoch_<E>.pt`),
          its log, the steps trained and the seconds taken; TrainError when it trained nothing

The subprocess (`python -m laion_spark.evaluate.train_clip [--model-config F] [--threads N] [--shuffle-seed S]
-- <open_clip_train arguments>`) does three things before it calls `open_clip_train.main.main`:

* registers a model config file (open_clip's registry lives in the process that builds the model);
* drops webdataset's end-of-shard markers: since webdataset 0.2.96 its tar expander yields an empty
  dict after each shard, and open_clip_train's own `group_by_keys_nothrow` (which expects webdataset
  <= 0.2.86) raises `KeyError: 'fname'` on it at the end of the first shard (webdataset#384,
  open_clip#935); the filter is a no-op on older webdataset;
* seeds the sample shuffle, which open_clip_train leaves to webdataset's default (pid + time): without
  it two runs of the same recipe train on different batch orders.

It runs in a subprocess because open_clip_train sets up logging for the whole process (every logger's
level) and reads distributed settings from the environment: the child gets an environment without
them, so it trains as one process.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# distributed launchers' variables: open_clip_train would start torch.distributed from them
_DISTRIBUTED_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class TrainError(RuntimeError):
    """open_clip_train refused, failed, or would train no step."""


@dataclass(frozen=True)
class TrainRecipe:
    """One training recipe, the same for every subset it is compared on."""

    model: str  # an open_clip model config (.json: the model is named after the file) or a model name
    epochs: int = 1
    samples_per_epoch: int = 1024  # the same for every subset: a small one repeats
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 20
    weight_decay: float = 0.1
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"  # open_clip_train's own default (amp) is for GPUs
    threads: int = 1  # torch threads: one is deterministic, and the fastest on a shared 2-core box
    timeout_s: float = 3600.0

    @property
    def model_name(self) -> str:
        return Path(self.model).stem if self.model.endswith(".json") else self.model

    @property
    def steps(self) -> int:
        return self.epochs * (self.samples_per_epoch // self.batch_size)


@dataclass(frozen=True)
class TrainResult:
    checkpoint: str
    log: str
    steps: int
    samples_seen: int
    seconds: float


def trainer_args(shards: list[str], samples: int, recipe: TrainRecipe, workdir: str, name: str) -> list[str]:
    """The shards, their sample count and a recipe -> open_clip_train.main's arguments.

    Each epoch is samples_per_epoch samples: the shards repeat until it is reached, so subsets of any
    size train for the same number of steps. open_clip_train drops each pass's last partial batch
    (its batcher is not partial), so a subset smaller than one batch would train no step at all
    without a word: that is refused here, and so is an epoch shorter than one batch.
    """
    if not shards:
        raise TrainError("no shards to train on")
    if recipe.samples_per_epoch < recipe.batch_size:
        raise TrainError(f"{recipe.samples_per_epoch} samples per epoch is less than one batch of {recipe.batch_size}")
    if samples < recipe.batch_size:
        raise TrainError(f"{samples} samples in {len(shards)} shard(s), fewer than one batch of "
                         f"{recipe.batch_size}: it would train no step (set a smaller batch size)")
    return [
        "--train-data", "::".join(shards), "--dataset-type", "webdataset",
        "--train-num-samples", str(recipe.samples_per_epoch), "--epochs", str(recipe.epochs),
        "--batch-size", str(recipe.batch_size), "--workers", "0",
        "--model", recipe.model_name, "--pretrained", "", "--seed", str(recipe.seed),
        "--lr", str(recipe.lr), "--warmup", str(recipe.warmup), "--wd", str(recipe.weight_decay),
        "--precision", recipe.precision, "--device", recipe.device,
        # one checkpoint, the last (open_clip_train always saves the last epoch)
        "--logs", workdir, "--name", name, "--report-to", "", "--save-frequency", str(recipe.epochs),
        "--log-every-n-steps", str(max(1, recipe.steps // 10)),
    ]


def train(shards: list[str], samples: int, recipe: TrainRecipe, workdir: str, name: str) -> TrainResult:
    """See the module docstring. `workdir` must be local (open_clip_train writes with os calls)."""
    args = trainer_args(shards, samples, recipe, workdir, name)
    run_dir = Path(workdir) / name
    if run_dir.exists():  # open_clip_train refuses an existing run name (it returns -1, no exception)
        raise TrainError(f"{run_dir} exists: an earlier training run; remove it or choose another name")
    config = ["--model-config", recipe.model] if recipe.model.endswith(".json") else []
    cmd = [sys.executable, "-m", "laion_spark.evaluate.train_clip", *config,
           "--threads", str(recipe.threads), "--shuffle-seed", str(recipe.seed), "--", *args]
    env = {k: v for k, v in os.environ.items() if k not in _DISTRIBUTED_ENV and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS=str(recipe.threads), MKL_NUM_THREADS=str(recipe.threads))
    Path(workdir).mkdir(parents=True, exist_ok=True)
    console = Path(workdir) / f"{name}.console.log"
    started = time.perf_counter()
    with open(console, "wb") as out:
        try:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                timeout=recipe.timeout_s).returncode
        except subprocess.TimeoutExpired:
            raise TrainError(f"training {name} took over {recipe.timeout_s:g} s; its output: {console}") from None
    seconds = time.perf_counter() - started
    checkpoint = run_dir / "checkpoints" / f"epoch_{recipe.epochs}.pt"
    if rc != 0 or not checkpoint.is_file():
        tail = console.read_text(errors="replace")[-2000:]
        raise TrainError(f"open_clip_train failed for {name} (exit {rc}); the end of {console}:\n{tail}")
    seen = samples_seen(run_dir / "out.log")
    if seen != recipe.steps * recipe.batch_size:
        # the figures are reported as trained: a trainer that saw other than the recipe's samples is a fault
        raise TrainError(f"open_clip_train's log for {name} reports {seen} samples trained, the recipe "
                         f"{recipe.steps * recipe.batch_size}: {run_dir / 'out.log'}")
    return TrainResult(str(checkpoint), str(run_dir / "out.log"), seen // recipe.batch_size, seen, round(seconds, 2))


_PROGRESS = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/")


def samples_seen(out_log: Path) -> int:
    """open_clip_train's out.log -> the samples it trained on: the last progress line of each epoch
    ('Train Epoch: E [N/M (P%)]', N counting the samples of every batch so far, logged at each epoch's end)."""
    last: dict[int, int] = {}
    text = out_log.read_text(errors="replace") if out_log.is_file() else ""
    for epoch, samples in _PROGRESS.findall(text):
        last[int(epoch)] = max(last.get(int(epoch), 0), int(samples))
    return sum(last.values())


def drop_shard_end_markers(data_module) -> object:
    """open_clip_train.data -> its original group_by_keys_nothrow, after wrapping it so that webdataset's
    empty end-of-shard dicts never reach it (looked up at call time by tarfile_to_samples_nothrow)."""
    original = data_module.group_by_keys_nothrow

    def group_by_keys(data, *args, **kwargs):
        return original((sample for sample in data if sample), *args, **kwargs)

    data_module.group_by_keys_nothrow = group_by_keys
    return original


def seed_sample_shuffle(webdataset_module, seed: int) -> None:
    """Give webdataset.shuffle a seeded rng unless the caller passes one (open_clip_train does not)."""
    shuffle = webdataset_module.shuffle

    def seeded(*args, **kwargs):
        kwargs.setdefault("rng", random.Random(seed))
        return shuffle(*args, **kwargs)

    webdataset_module.shuffle = seeded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="open_clip_train.main with our model config, shards and seed")
    parser.add_argument("--model-config", help="a model config file to register (a model name needs none)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shuffle-seed", type=int, default=0)
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="-- then open_clip_train's arguments")
    args = parser.parse_args(argv)
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest

    import open_clip
    import torch
    import webdataset
    from open_clip_train import data as train_data
    from open_clip_train import main as train_main

    torch.set_num_threads(args.threads)
    if args.model_config:
        open_clip.add_model_config(args.model_config)
    drop_shard_end_markers(train_data)
    seed_sample_shuffle(webdataset, args.shuffle_seed)
    # main() returns -1 (and trains nothing) when it refuses, e.g. an existing run name
    return 0 if train_main.main(rest) is None else 1


if __name__ == "__main__":
    sys.exit(main())
