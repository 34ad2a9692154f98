"""The filter job: config -> read images + embeddings -> check -> filter -> write dataset + rejected
(+ .npy shards) -> count and check.

INPUT  -> JobConfig with input (an images table: the download stage's output), filter.embeddings
          (the embed stage's output; `embeddings=URI` on the command line), output, and filter.*
OUTPUT -> dataset at `output`, rejected at filter.rejected_output (default <output>_rejected), with
          filter.npy=true clip-retrieval style shards of the kept rows at filter.npy_output (default
          <output>_emb; one sub-folder per clip_model when the kept rows span several embedding
          spaces), and a summary dict: rows_in, dataset, rejected, reasons (rows per reason), groups
          (kept / below_threshold / not_embedded per language group), thresholds, embeddings_rows, npy.
          The job fails (FilterError) before writing anything when the embeddings table holds a
          sample_id twice, and after writing when dataset + rejected rows differ from the images rows.
"""

from __future__ import annotations

import logging

from pyspark.sql import functions as F
from pyspark.sql import types as T

from laion_spark import schemas as S
from laion_spark.config import ConfigError
from laion_spark.export import npy as N
from laion_spark.filter.transform import (
    BELOW_THRESHOLD,
    NOT_EMBEDDED,
    check_columns,
    dataset_schema,
    duplicate_embedding_ids,
    filter_images,
    kept_vectors,
    language_group_column,
    rejected_schema,
)
from laion_spark.io import check_output, exists, fsspec_uri, overlap, write_table

log = logging.getLogger(__name__)

USAGE = "laion-spark filter input=<images> embeddings=<embeddings> output=<dataset>"


class FilterError(RuntimeError):
    """The inputs cannot give a correct split (duplicate embeddings), or the written tables do not
    account for every images row."""


def rejected_uri(cfg) -> str:
    return cfg.filter.rejected_output or cfg.output.rstrip("/") + "_rejected"


def npy_uri(cfg) -> str:
    return cfg.filter.npy_output or cfg.output.rstrip("/") + "_emb"


def prepare(cfg) -> None:
    """Checks that need no Spark: the images and embeddings tables exist; no output overlaps an input
    or another output; rejected (and the .npy folder) are free unless mode=overwrite (the CLI checks
    the main output)."""
    f = cfg.filter
    if not f.embeddings:
        raise ConfigError(f"embeddings is required: {USAGE}")
    for name, uri in (("input", cfg.input), ("embeddings", f.embeddings)):
        if not exists(uri):
            raise ConfigError(f"{name} not found: {uri}")
    outputs = {"output": cfg.output, "filter.rejected_output": rejected_uri(cfg)}
    if f.npy:
        outputs["filter.npy_output"] = npy_uri(cfg)
    for key, out in outputs.items():
        for name, uri in (("input", cfg.input), ("embeddings", f.embeddings)):
            if overlap(out, uri):
                raise ConfigError(f"{key} {out} overlaps {name} {uri}; write elsewhere")
    keys = list(outputs)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if overlap(outputs[a], outputs[b]):
                raise ConfigError(f"{a} {outputs[a]} and {b} {outputs[b]} overlap; give them separate places")
    for key, out in outputs.items():
        if key != "output":
            check_output(out, cfg.mode)


def read_embeddings(spark, uri: str):
    """Embeddings table URI -> DataFrame with exactly EMBEDDINGS' columns and types; a missing column
    is an error (a schema-on-read would fill it with nulls and reject every row as not_embedded)."""
    raw = spark.read.parquet(uri)
    missing = [c for c in S.EMBEDDINGS.fieldNames() if c not in raw.columns]
    if missing:
        raise ConfigError(f"embeddings {uri} lacks column(s) {missing}; it must be the embed stage's output")
    columns = []
    for f in S.EMBEDDINGS.fields:
        # array<float> elements are read nullable; a cast to non-null elements is one Spark refuses
        typ = T.ArrayType(f.dataType.elementType, True) if isinstance(f.dataType, T.ArrayType) else f.dataType
        have = raw.schema[f.name].dataType
        same = have.simpleString() == typ.simpleString()
        columns.append(F.col(f.name) if same else F.col(f.name).cast(typ).alias(f.name))
    return raw.select(*columns)


def check_duplicates(embeddings, uri: str) -> int:
    """embeddings -> its row count; raise FilterError when a sample_id has more than one row (two embed
    runs written into one folder, a union of tables): which row counts would be a guess, and the join
    would repeat the images row."""
    per_id = duplicate_embedding_ids(embeddings, keep_all=True)
    totals = per_id.agg(F.sum("rows").alias("rows"), F.count(F.when(F.col("rows") > 1, 1)).alias("dups")).first()
    if totals["dups"]:
        examples = per_id.filter(F.col("rows") > 1).orderBy(S.SAMPLE_ID).limit(5).collect()
        shown = ", ".join(f"{r[S.SAMPLE_ID]} ({r['rows']} rows)" for r in examples)
        raise FilterError(f"embeddings {uri}: {totals['dups']} sample_id(s) have more than one row, e.g. {shown}; "
                          "re-run embed into an empty output (or mode=overwrite); nothing was written")
    return int(totals["rows"] or 0)


def check_counts(rows_in: int, kept: int, rejected: int) -> None:
    """Raise FilterError unless every images row is in exactly one output."""
    if kept + rejected != rows_in:
        raise FilterError(f"row accounting failed: {rows_in} images rows but {kept} dataset + {rejected} "
                          f"rejected = {kept + rejected}; the written outputs are wrong")


def _group_counts(spark, cfg) -> tuple[dict, dict, dict]:
    """The written tables -> (kept rows per group, rejected rows per reason, rejected rows per (group, reason))."""
    group = language_group_column(F.col(S.LANGUAGE)).alias("group")
    kept = {r["group"]: r["n"] for r in spark.read.parquet(cfg.output).groupBy(group)
            .agg(F.count(F.lit(1)).alias("n")).collect()}
    pairs = {(r["group"], r[S.REASON]): r["n"] for r in spark.read.parquet(rejected_uri(cfg))
             .groupBy(group, S.REASON).agg(F.count(F.lit(1)).alias("n")).collect()}
    reasons: dict[str, int] = {}
    for (_, reason), n in pairs.items():
        reasons[reason] = reasons.get(reason, 0) + n
    return kept, dict(sorted(reasons.items())), pairs


def _remove_stale_npy(cfg) -> int:
    """mode=overwrite without filter.npy: shards an earlier run wrote at npy_uri(cfg) describe a dataset
    that is now replaced (an index built from them would point at rows that may be gone), so the shard
    files go -> how many; other files in that folder stay."""
    folder = fsspec_uri(npy_uri(cfg))
    if not exists(folder):
        return 0
    removed = N.remove_files(folder)
    if removed:
        log.warning("filter: removed %d .npy shard files of an earlier run from %s (filter.npy=false now)",
                    removed, folder)
    return removed


def write_npy(spark, cfg, embeddings) -> dict:
    """The written dataset + embeddings -> .npy shards of the kept rows at npy_uri(cfg) -> summary."""
    from laion_spark.export.emb import NpyError, write_spaces

    f = cfg.filter
    dataset = spark.read.parquet(cfg.output)
    per_model = {r[S.CLIP_MODEL]: r["n"] for r in dataset.groupBy(S.CLIP_MODEL)
                 .agg(F.count(F.lit(1)).alias("n")).collect()}
    try:
        return write_spaces(kept_vectors(dataset, embeddings), per_model, fsspec_uri(npy_uri(cfg)), f.npy_dtype,
                            f.npy_rows_per_shard, cfg.mode)
    except NpyError as exc:
        raise FilterError(str(exc)) from None


def run(spark, cfg) -> dict:
    f = cfg.filter
    images = spark.read.parquet(cfg.input)
    embeddings = read_embeddings(spark, f.embeddings)
    try:
        check_columns(images)
        if f.npy:
            missing = [c for c in (S.URL, S.TEXT) if c not in images.columns]
            if missing:
                raise ValueError(f"filter.npy=true writes url and text as metadata; missing column(s) {missing}")
    except ValueError as exc:
        raise ConfigError(f"input {cfg.input}: {exc}") from None
    embeddings_rows = check_duplicates(embeddings, f.embeddings)
    rows_in = images.count()
    result = filter_images(images, embeddings, f)
    write_table(result.dataset, cfg.output, dataset_schema(images.schema), "dataset", cfg.mode)
    write_table(result.rejected, rejected_uri(cfg), rejected_schema(images.schema), "rejected", cfg.mode)
    kept, reasons, pairs = _group_counts(spark, cfg)
    kept_rows, rejected_rows = sum(kept.values()), sum(reasons.values())
    check_counts(rows_in, kept_rows, rejected_rows)
    groups = {g: {"kept": kept.get(g, 0), BELOW_THRESHOLD: pairs.get((g, BELOW_THRESHOLD), 0),
                  NOT_EMBEDDED: pairs.get((g, NOT_EMBEDDED), 0)} for g in S.LANGUAGE_GROUPS}
    summary = {
        "rows_in": rows_in,
        "dataset": kept_rows,
        "rejected": rejected_rows,
        "reasons": reasons,
        "groups": groups,
        "thresholds": {g: getattr(f.threshold, g) for g in S.LANGUAGE_GROUPS},
        "embeddings_rows": embeddings_rows,
        "rejected_output": rejected_uri(cfg),
        "npy": write_npy(spark, cfg, embeddings) if f.npy else None,
    }
    if not f.npy and cfg.mode == "overwrite":
        summary["stale_npy_removed"] = _remove_stale_npy(cfg)
    log.info("filter: %s rows -> %s kept, %s rejected (%s)", rows_in, kept_rows, rejected_rows, reasons)
    return summary


def format_report(summary: dict) -> str:
    """Summary dict -> the text the CLI prints."""
    t = summary["thresholds"]
    lines = [f"filter: {summary['rows_in']} rows -> {summary['dataset']} kept, {summary['rejected']} rejected "
             f"(thresholds en {t['en']}, multi {t['multi']}, nolang {t['nolang']})"]
    for reason, rows in summary["reasons"].items():
        lines.append(f"  {reason:<28} {rows}")
    for group, counts in summary["groups"].items():
        lines.append(f"  {group:<7} kept {counts['kept']}, below_threshold {counts[BELOW_THRESHOLD]}, "
                     f"not_embedded {counts[NOT_EMBEDDED]}")
    npy = summary.get("npy")
    if npy:
        lines.append(f"  .npy: {npy['rows']} rows in {npy['shards']} shards ({npy['dtype']}) at {npy['folder']}")
    return "\n".join(lines)
