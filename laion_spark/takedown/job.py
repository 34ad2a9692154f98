"""The takedown job: a finished run + a list of URLs or hashes -> those rows gone from every published
output of the run, in place, and recorded.

INPUT  -> JobConfig with input (the run directory, `run_dir=`), takedown.list (`list=`: a file as
          export's blocklists take them) and takedown.kind (url, url_md5, url_sha256, image_md5,
          image_sha1, image_sha256)
OUTPUT -> the released rows the list matches, removed from export/laion, export/subsets/*,
          export/webdataset (only the shards that hold them are rewritten), export/emb (likewise) and
          index/image, index/text (faiss remove_ids, their metadata); appended to export_removed with
          reason takedown:<list name>; recorded in run_dir/manifest.json under "takedowns" (when, which
          list and its hash, which rows, which files), which a later `pipeline` run adds to export's
          blocklists, so a rerun of export cannot bring them back. Every file that holds none of the
          rows stays byte for byte as it was; the stages' markers too (the run stays complete).
"""

from __future__ import annotations

import logging

from pyspark.sql import functions as F

from laion_spark import schemas as S
from laion_spark.config import ConfigError

log = logging.getLogger(__name__)

REASON_PREFIX = "takedown:"
RESUMES = True  # it changes a finished run in place; no output folder of its own


def prepare(cfg) -> None:
    from laion_spark.export.blocklist import KINDS
    from laion_spark.io import exists
    from laion_spark.pipeline.plan import table_uris

    t = cfg.takedown
    if not cfg.input or not t.list:
        raise ConfigError("laion-spark takedown run_dir=<dir> list=<file of URLs or hashes> [kind=url]")
    if t.kind not in KINDS:
        raise ConfigError(f"takedown.kind={t.kind}: one of {', '.join(KINDS)}")
    if not exists(t.list):
        raise ConfigError(f"list not found: {t.list}")
    u = table_uris(cfg.input)
    for name in ("release", "dataset"):
        if not exists(u[name]):
            raise ConfigError(f"{cfg.input} has no {name} ({u[name]}): takedown works on a run's export")


def _append_removed(spark, u: dict, dataset, tags, ids: list[int], reason: str) -> None:
    """The taken-down rows, as export writes its removed rows (no image bytes), appended to export_removed."""
    from pyspark.sql import types as T

    from laion_spark.export import release as R
    from laion_spark.io import exists

    rows = R.scored(dataset.where(F.col(S.SAMPLE_ID).isin(ids)), tags).withColumn(S.REASON, F.lit(reason))
    if exists(u["export_removed"]):
        target = spark.read.parquet(u["export_removed"]).schema
        rows = rows.select(*[(F.col(f"`{f.name}`") if f.name in rows.columns else F.lit(None)).cast(f.dataType)
                             .alias(f.name) for f in target.fields])
    else:
        rows = rows.select(*[f.name for f in rows.schema.fields
                             if not isinstance(f.dataType, T.BinaryType) and f.name != R.UNTAGGED])
    rows.write.mode("append").parquet(u["export_removed"])


def run(spark, cfg) -> dict:
    import fsspec

    from laion_spark.export import blocked as B
    from laion_spark.export.blocklist import BlocklistError
    from laion_spark.index.transform import normalise_names
    from laion_spark.io import exists, fsspec_uri, read_json, write_json
    from laion_spark.marker import file_hash
    from laion_spark.pipeline import manifest as M
    from laion_spark.pipeline.plan import INDEX_FIELDS, table_uris
    from laion_spark.takedown import rewrite as W

    t = cfg.takedown
    u = table_uris(cfg.input)
    listed = B.BlockList(B._name(t.list), t.kind, t.list)
    reason = REASON_PREFIX + listed.name
    release = spark.read.parquet(u["release"]).select(F.col("SAMPLE_ID").alias(S.SAMPLE_ID))
    dataset = normalise_names(spark.read.parquet(u["dataset"]))
    keys = [c for c in (S.SAMPLE_ID, S.URL, "md5", "sha1", "sha256") if c in dataset.columns]
    rows = dataset.select(*keys).join(release, S.SAMPLE_ID, "left_semi")
    try:
        hits = B.blocked(spark, rows, [listed])
    except BlocklistError as exc:
        raise ConfigError(f"takedown.list: {exc}") from None
    ids = sorted({r[S.SAMPLE_ID] for r in hits.select(S.SAMPLE_ID).collect()})
    files: list[dict] = []
    if ids:
        tags = spark.read.parquet(u["tags"]) if exists(u["tags"]) else None
        _append_removed(spark, u, dataset, tags, ids, reason)
        files += W.parquet_folder(u["release"], ids, "SAMPLE_ID")
        fs, subsets = fsspec.core.url_to_fs(fsspec_uri(u["export"] + "/subsets"))
        for sub in sorted(fs.ls(subsets, detail=False)) if fs.exists(subsets) else []:
            files += W.parquet_folder(sub, ids, "SAMPLE_ID")
        files += W.webdataset_shards(u["export"] + "/webdataset", ids)
        files += W.npy_shards(u["export"] + "/emb", ids)
        for field in INDEX_FIELDS:
            files += W.faiss_index(u[f"index_{field}"], ids)
    record = {"at": M.now(), "list": t.list, "kind": t.kind, "list_sha256": file_hash(t.list), "reason": reason,
              "removed": len(ids), "sample_ids": ids, "files": files}
    manifest = read_json(u["manifest"]) if exists(u["manifest"]) else {"run_dir": cfg.input}
    manifest.setdefault("takedowns", []).append(record)
    write_json(u["manifest"], manifest)
    log.info("takedown: %d released rows on %s removed; %d files rewritten", len(ids), t.list, len(files))
    return {"run_dir": cfg.input, "list": t.list, "kind": t.kind, "reason": reason, "removed": len(ids),
            "sample_ids": ids, "files": files}


def format_report(summary: dict) -> str:
    lines = [f"takedown: {summary['removed']} released rows matched {summary['list']} ({summary['kind']}) and were "
             f"removed (reason {summary['reason']}); {len(summary['files'])} files rewritten, every other file "
             "untouched"]
    lines += [f"  {f['file']}: -{f['removed']}" for f in summary["files"]]
    return "\n".join(lines)
