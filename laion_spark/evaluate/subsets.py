"""A run directory -> the webdataset shard sets evaluate trains on: the release's own shards and the baselines.

INPUT  -> a SparkSession, the run directory, EvaluateConfig and a folder for the baselines' shards
OUTPUT -> {name: Subset(shards: local .tar paths, samples, source)} for the names in evaluate.subsets:
          filtered  run_dir/export/webdataset as export wrote it: what a user of the release trains on
          all       every downloaded pair of run_dir/images (status success): no CLIP filter
          random    as many of those pairs as `filtered` holds, drawn by a hash of sample_id and
                    evaluate.seed (the same draw every time)
          The baselines leave out every row that export or a takedown removed for a list (export_removed,
          reasons blocklisted:* and takedown:*), and every other row with the same URL or image: a
          taken-down image is not trained on, not even in a baseline.

Samples are counted in the tars themselves (a key with a caption and an image), not taken from any
summary, so `train=` shards from elsewhere are counted the same way. open_clip_train opens local files:
shards under a remote URI are copied to the local work folder first.
"""

from __future__ import annotations

import logging
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from laion_spark import schemas as S
from laion_spark.config import ConfigError

log = logging.getLogger(__name__)

SUBSETS = ("filtered", "all", "random")
IMAGE_EXTENSIONS = {"jpg", "jpeg", "png", "webp"}  # open_clip_train's image keys


def check_names(names) -> None:
    """evaluate.subsets -> ConfigError unless it names one or more of SUBSETS."""
    unknown = [n for n in names if n not in SUBSETS]
    if unknown or not names:
        raise ConfigError(f"bad value for evaluate.subsets: {list(names)}; choose from {', '.join(SUBSETS)}")


def in_order(names) -> list[str]:
    """Subset names -> SUBSETS' order first (filtered, all, random), any other name after."""
    return sorted(names, key=lambda n: (SUBSETS.index(n) if n in SUBSETS else len(SUBSETS), n))


@dataclass(frozen=True)
class Subset:
    shards: list[str]  # local .tar paths
    samples: int  # image + caption pairs in them
    source: str  # where they came from (a folder URI, or the table they were cut from)


def _key_and_extension(name: str) -> tuple[str, str]:
    """A tar member name -> (sample key, extension) as webdataset splits it: up to the basename's first dot."""
    folder, _, base = name.rpartition("/")
    key, _, extension = base.partition(".")
    return (f"{folder}/{key}" if folder else key), extension.lower()


def count_samples(tar_path: str) -> int:
    """A webdataset .tar -> the keys that have a caption (.txt) and an image, as open_clip_train pairs them."""
    keys: dict[str, set[str]] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            if member.isfile():
                key, extension = _key_and_extension(member.name)
                keys.setdefault(key, set()).add(extension)
    return sum(1 for extensions in keys.values() if "txt" in extensions and extensions & IMAGE_EXTENSIONS)


def local_shards(uri: str, workdir: Path) -> Subset:
    """A folder of shards or comma-separated .tar URIs -> Subset with local paths (copied when remote)."""
    import fsspec

    from laion_spark.io import fsspec_uri

    paths: list[tuple[object, str]] = []
    for part in [u.strip() for u in uri.split(",") if u.strip()]:
        fs, path = fsspec.core.url_to_fs(fsspec_uri(part))
        if fs.isdir(path):
            paths += [(fs, p) for p in sorted(fs.glob(f"{path.rstrip('/')}/*.tar"))]
        elif fs.exists(path):
            paths.append((fs, path))
        else:
            raise ConfigError(f"no webdataset shards at {part}")
    if not paths:
        raise ConfigError(f"no .tar shards in {uri}")
    local = []
    copies = None  # a folder of this call's own: every subset's shards are named 00000.tar, 00001.tar, ...
    for i, (fs, path) in enumerate(paths):
        if "file" in fs.protocol or "local" in fs.protocol:
            local.append(path)
        else:
            if copies is None:
                workdir.mkdir(parents=True, exist_ok=True)
                copies = Path(tempfile.mkdtemp(prefix="copied-", dir=workdir))
            target = copies / f"{i:05d}-{Path(path).name}"
            fs.get(path, str(target))
            local.append(str(target))
    return Subset(local, sum(count_samples(p) for p in local), uri)


def baseline_pool(spark, run_dir: str):
    """run_dir -> the success rows of its images table, less every row removed for a list (and its twins)."""
    from pyspark.sql import functions as F

    from laion_spark.export.blocked import REASON_PREFIX as BLOCKLISTED
    from laion_spark.io import exists
    from laion_spark.pipeline.plan import table_uris
    from laion_spark.takedown.job import REASON_PREFIX as TAKEN_DOWN

    uris = table_uris(run_dir)
    if not exists(uris["images"]):
        raise ConfigError(f"run_dir {run_dir} has no images table ({uris['images']}): the baselines are cut from it")
    pool = spark.read.parquet(uris["images"]).where(F.col(S.STATUS) == S.SUCCESS)
    if exists(uris["export_removed"]):
        removed = spark.read.parquet(uris["export_removed"])
        listed = removed.where(F.col(S.REASON).startswith(BLOCKLISTED) | F.col(S.REASON).startswith(TAKEN_DOWN))
        for column in (S.SAMPLE_ID, S.URL, "sha256"):
            if column in listed.columns and column in pool.columns:
                gone = listed.select(column).where(F.col(column).isNotNull()).distinct()
                pool = pool.join(gone, column, "left_anti")
    return pool


def build(spark, run_dir: str, cfg, folder: str, workdir: Path) -> dict[str, Subset]:
    """See the module docstring. `folder` (a URI) receives the baselines' shards; `cfg` is the JobConfig."""
    from pyspark.sql import functions as F

    from laion_spark.export.job import write_shards
    from laion_spark.pipeline.plan import table_uris

    ev = cfg.evaluate
    check_names(ev.subsets)
    if ev.train:
        return {"given": local_shards(ev.train, workdir)}
    out: dict[str, Subset] = {}
    filtered_uri = f"{table_uris(run_dir)['export']}/webdataset"
    filtered = None
    if "filtered" in ev.subsets or "random" in ev.subsets:  # random is as large as filtered
        try:
            filtered = local_shards(filtered_uri, workdir)
        except ConfigError:
            raise ConfigError(f"run_dir {run_dir} has no release shards at {filtered_uri}: run export (or the "
                              "pipeline) with export.outputs including webdataset, or give train=") from None
        if "filtered" in ev.subsets:
            out["filtered"] = filtered
    if "all" in ev.subsets or "random" in ev.subsets:
        pool = baseline_pool(spark, run_dir)
        shard_cfg = cfg.export
        for name in ("all", "random"):
            if name not in ev.subsets:
                continue
            rows = pool
            if name == "random":
                rows = pool.orderBy(F.xxhash64(F.col(S.SAMPLE_ID), F.lit(ev.seed)), S.SAMPLE_ID).limit(filtered.samples)
            uri = f"{folder.rstrip('/')}/{name}"
            summary = write_shards(rows, shard_cfg, uri, "overwrite")
            log.info("evaluate: %s: %d pairs in %d shard(s) at %s", name, summary["successes"], summary["shards"], uri)
            subset = local_shards(uri, workdir)
            out[name] = Subset(subset.shards, subset.samples, f"{table_uris(run_dir)['images']} ({name})")
    return out
