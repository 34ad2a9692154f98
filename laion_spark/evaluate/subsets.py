"""A run directory -> the webdataset shard sets evaluate trains on: the release's own shards and the baselines.

INPUT  -> a SparkSession, the run directory, EvaluateConfig and a folder for the baselines' shards
OUTPUT -> {name: Subset(shards: local .tar paths, samples, source)} for the names in evaluate.subsets:
          filtered  run_dir/export/webdataset as export wrote it: what a user of the release trains on
          all       every downloaded pair of run_dir/images (status success): no CLIP filter
          random    as many of those pairs as `filtered` holds, drawn by a hash of sample_id and
                    evaluate.seed (the same draw every time)
          The baselines leave out every row a list of the run matches (export's blocklists and the lists
          takedowns recorded: run_lists), filtered or not, every row that export or a takedown removed
          for a list (export_removed, reasons blocklisted:* and takedown:*), and every other row with the
          same URL or image: a listed image is not trained on, not even in a baseline.

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


def run_lists(run_dir: str) -> list:
    """run_dir -> every list that applies to its rows (BlockLists, each (kind, uri) once): the lists export
    applied (its marker's "blocklists", those whose file is still there: the rows of one deleted since are
    in export_removed) and every list a takedown recorded under the run directory (takedown/journal.py;
    they stay when the user's own file is gone)."""
    from laion_spark.export.blocked import BlockList
    from laion_spark.io import exists
    from laion_spark.pipeline.plan import read_marker, table_uris
    from laion_spark.takedown.journal import recorded_lists

    marker = read_marker(table_uris(run_dir)["export"]) or {}
    lists = []
    for b in marker.get("blocklists") or []:
        if exists(b["uri"]):
            lists.append(BlockList(b["name"], b["kind"], b["uri"]))
        else:
            log.warning("export's blocklist %s is gone: only the rows export removed for it (export_removed) are "
                        "left out", b["uri"])
    lists += recorded_lists(run_dir)
    seen: set[tuple[str, str]] = set()
    out = []
    for bl in lists:
        if (bl.kind, bl.uri) not in seen:
            seen.add((bl.kind, bl.uri))
            out.append(bl)
    return out


def without_listed(spark, run_dir: str, rows, lists: list | None = None):
    """Rows of the run (sample_id, url and download's digests md5 / sha1 / sha256) -> the same rows less
    every row a list of the run matches (`lists`, default run_lists(run_dir): a row the filter rejected
    never reached export, and is matched here) and every row that shares a sample_id, URL or image
    (sha256) with a row export or a takedown removed for a list (export_removed, reasons blocklisted:*
    and takedown:*)."""
    from pyspark.sql import functions as F

    from laion_spark.export import blocked as B
    from laion_spark.export.blocklist import BlocklistError
    from laion_spark.io import exists
    from laion_spark.pipeline.plan import table_uris
    from laion_spark.takedown.journal import REASON_PREFIX as TAKEN_DOWN

    lists = run_lists(run_dir) if lists is None else lists
    if lists:
        keys = [c for c in (S.SAMPLE_ID, S.URL, "md5", "sha1", "sha256") if c in rows.columns]
        try:
            hits = B.blocked(spark, rows.select(*keys), lists)
        except BlocklistError as exc:
            raise ConfigError(f"the blocklists of {run_dir}: {exc}") from None
        rows = rows.join(hits.select(S.SAMPLE_ID), S.SAMPLE_ID, "left_anti")
    uris = table_uris(run_dir)
    if exists(uris["export_removed"]):
        removed = spark.read.parquet(uris["export_removed"])
        listed = removed.where(F.col(S.REASON).startswith(B.REASON_PREFIX) | F.col(S.REASON).startswith(TAKEN_DOWN))
        for column in (S.SAMPLE_ID, S.URL, "sha256"):
            if column in listed.columns and column in rows.columns:
                gone = listed.select(column).where(F.col(column).isNotNull()).distinct()
                rows = rows.join(gone, column, "left_anti")
    return rows


def baseline_pool(spark, run_dir: str):
    """run_dir -> the success rows of its images table, less every row a list reaches (without_listed)."""
    from pyspark.sql import functions as F

    from laion_spark.io import exists
    from laion_spark.pipeline.plan import table_uris

    uris = table_uris(run_dir)
    if not exists(uris["images"]):
        raise ConfigError(f"run_dir {run_dir} has no images table ({uris['images']}): the baselines are cut from it")
    return without_listed(spark, run_dir, spark.read.parquet(uris["images"]).where(F.col(S.STATUS) == S.SUCCESS))


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
