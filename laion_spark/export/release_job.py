"""The export job, format=release: dataset + tags (+ embeddings) -> a LAION-style release, blocklists applied.

INPUT  -> JobConfig with input (filter's dataset), export.tags (tags=), export.embeddings (embeddings=),
          export.outputs (laion, webdataset, emb), export.columns (laion5b / laion400m), export.where,
          export.subsets.*, export.blocklist.* and the shard sizes
OUTPUT -> under `output`:
            laion/              the release: one parquet table in LAION's columns and types (schemas.RELEASES)
            subsets/<name>/     one table per non-empty export.subsets.<name>, the release's rows it holds
            webdataset/         shards of the released rows (img2dataset's layout; scores in each json)
            emb/<clip_model>/   clip-retrieval img_emb / text_emb .npy shards + metadata of the released rows
            README.md           the dataset card (export/card.py)
          `<output>_removed` (export.removed_output): every dataset row not released, with its reason
          (blocklisted:<list>, excluded:<where>) and without its image bytes; and the summary dict.
          Rows of the dataset = rows released + rows removed, checked before the marker (ExportError).

Order: every check that needs no rows (layout, subsets' and where's expressions against the schemas,
the lists' lines) runs before anything is written; the release is written once and read back, so the
subsets, shards and .npy files are all cut from the same rows.

The decisions (tags joined, blocklists matched, the duplicate window, export.where, LAION's hash) are
made once, on the dataset's columns without its image bytes, and written to `<output>/_decisions`
(removed at the end): the removed table, the release, the counts and the shards all read them, so no
blocklist join or UDF runs twice. Each row keeps its place in the dataset's files (`_metadata`'s
file_path and row_index), by which the shards take their image bytes back: both sides partitioned by
the shards' own key, so the bytes cross the network once, into their shard.
"""

from __future__ import annotations

import logging

from pyspark.sql import functions as F
from pyspark.sql import types as T

from laion_spark import schemas as S
from laion_spark.config import ConfigError
from laion_spark.export import blocked as B
from laion_spark.export import release as R
from laion_spark.export.blocklist import BlocklistError
from laion_spark.export.job import ExportError, shard_count, write_shards
from laion_spark.export.transform import REQUIRED_COLUMNS, shard_key
from laion_spark.io import exists, fsspec_uri, overlap, remove, write_table

log = logging.getLogger(__name__)

OUTPUTS = ("laion", "webdataset", "emb")
SUBSETS = ("en", "multi", "nolang", "high_resolution", "aesthetic", "research_safe")
ROW_FILE, ROW_INDEX = "_row_file", "_row_index"  # a dataset row's place: _metadata.file_path / row_index
DECISIONS = "_decisions"
USAGE = "laion-spark export input=<dataset> tags=<tags> [embeddings=<embeddings>] output=<dir>"


def removed_uri(cfg) -> str:
    return cfg.export.removed_output or cfg.output.rstrip("/") + "_removed"


def outputs_of(cfg) -> tuple[str, ...]:
    """export.outputs -> what this run writes (empty: laion and webdataset, and emb where embeddings are given)."""
    e = cfg.export
    if not e.outputs:
        return ("laion", "webdataset", *(("emb",) if e.embeddings else ()))
    bad = [o for o in e.outputs if o not in OUTPUTS]
    if bad:
        raise ConfigError(f"export.outputs: {bad} unknown; valid values: {', '.join(OUTPUTS)}")
    if "emb" in e.outputs and not e.embeddings:
        raise ConfigError(f"export.outputs has emb, which needs the embeddings table: {USAGE}")
    return tuple(o for o in OUTPUTS if o in e.outputs)


def subsets_of(cfg) -> dict[str, str]:
    return {name: getattr(cfg.export.subsets, name) for name in SUBSETS if getattr(cfg.export.subsets, name).strip()}


def prepare(cfg) -> None:
    """Checks without Spark: the tables and lists exist, the outputs overlap no input, outputs and names are valid."""
    e = cfg.export
    outputs_of(cfg)
    tables = {"input": cfg.input, "tags": e.tags, "embeddings": e.embeddings}
    for name, uri in tables.items():
        if uri and not exists(uri):
            raise ConfigError(f"{name} not found: {uri}")
    try:
        lists = B.lists_of(e.blocklist)
    except BlocklistError as exc:
        raise ConfigError(f"export.blocklist: {exc}") from None
    for bl in lists:
        if not exists(bl.uri):
            raise ConfigError(f"export.blocklist.{bl.kind}: {bl.uri} not found")
    for out in (cfg.output, removed_uri(cfg)):
        for name, uri in tables.items():
            if uri and overlap(out, uri):
                raise ConfigError(f"output {out} overlaps {name} {uri}; write elsewhere")
    if overlap(cfg.output, removed_uri(cfg)):
        raise ConfigError(f"export.removed_output {removed_uri(cfg)} overlaps output {cfg.output}")


def _check_expressions(spark, cfg, rows) -> None:
    """export.where against the dataset's columns and each subset against the release's: a typo is a
    ConfigError naming the key before anything is written."""
    from pyspark.errors import PySparkException

    e = cfg.export
    if e.where:
        try:
            rows.where(F.expr(e.where)).schema  # noqa: B018 - analysing the plan is the check
        except PySparkException as exc:
            raise ConfigError(f"export.where={e.where!r}: {str(exc).splitlines()[0]}") from None
    empty = spark.createDataFrame([], S.nullable(S.RELEASES[e.columns]))
    for name, expr in subsets_of(cfg).items():
        try:
            empty.where(F.expr(expr)).schema  # noqa: B018
        except PySparkException as exc:
            raise ConfigError(f"export.subsets.{name}={expr!r} does not apply to the {e.columns} release's columns "
                              f"({', '.join(S.RELEASES[e.columns].fieldNames())}); set it to '' to leave it out: "
                              f"{str(exc).splitlines()[0]}") from None


def _clear(output_uri: str, mode: str) -> None:
    """mode=overwrite: what an earlier export wrote under output goes (a subset or shard it wrote that this
    run does not would describe other rows); nothing else there is touched."""
    import fsspec

    fs, folder = fsspec.core.url_to_fs(output_uri)
    if mode == "overwrite":
        for name in ("laion", "subsets", "webdataset", "emb", "README.md", DECISIONS):
            if fs.exists(f"{folder}/{name}"):
                fs.rm(f"{folder}/{name}", recursive=True)
    fs.makedirs(folder, exist_ok=True)


def _counts(df, column: str) -> dict:
    return {r[column]: r["n"] for r in df.groupBy(column).agg(F.count(F.lit(1)).alias("n")).collect()}


def _taggers(tags) -> dict[str, list[str]]:
    if tags is None or "taggers" not in tags.columns:
        return {}
    rows = tags.select(F.explode("taggers").alias("tag", "tagger")).distinct().collect()
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r["tag"], []).append(r["tagger"])
    return {k: sorted(v) for k, v in sorted(out.items())}


def _binary(df) -> list[str]:
    return [f.name for f in df.schema.fields if isinstance(f.dataType, T.BinaryType)]


def _webdataset_rows(kept, dataset, num_shards: int):
    """Released rows (the decisions, without image bytes) + the dataset (with them) + shard count -> the
    images-like rows the shards take, in num_shards partitions by shard_key(): the scores beside them (in
    each sample's json), the bookkeeping columns gone, each row's bytes joined back by its place in the
    dataset's files. Both sides are partitioned by shard_key() and joined on it alone (the place is
    compared apart, so Spark does not ask for a partitioning on it too): the bytes are shuffled once."""
    binary = _binary(dataset)
    meta = (kept.drop(R.UNTAGGED, S.REASON).withColumn("_k", shard_key()).repartition(num_shards, "_k"))
    data = (dataset.select(F.col(ROW_FILE).alias("_f"), F.col(ROW_INDEX).alias("_r"), *binary,
                           shard_key().alias("_k2")).repartition(num_shards, "_k2"))
    # `a - b == 0` where both sides meet is no equi-join key: the partitioning on _k alone serves the join
    same_row = F.when(F.col(ROW_FILE) == F.col("_f"), F.col(ROW_INDEX) - F.col("_r")) == 0
    joined = meta.join(data, (F.col("_k") == F.col("_k2")) & same_row)
    order = [c for c in dataset.columns if c not in (*R.TAG_COLUMNS, R.HASH, R.UNTAGGED, ROW_FILE, ROW_INDEX)]
    return joined.select(*order, *R.TAG_COLUMNS, R.HASH)


def _emb(spark, cfg, kept, folder: str) -> dict:
    from laion_spark.export.emb import NpyError, write_spaces
    from laion_spark.filter.job import check_duplicates, read_embeddings

    e = cfg.export
    embeddings = read_embeddings(spark, e.embeddings)
    check_duplicates(embeddings, e.embeddings)
    vectors = (kept.select(S.SAMPLE_ID, S.URL, S.TEXT)
               .join(embeddings.select(S.SAMPLE_ID, S.CLIP_MODEL, S.IMAGE_EMBEDDING, S.TEXT_EMBEDDING), S.SAMPLE_ID)
               .where(F.col(S.IMAGE_EMBEDDING).isNotNull() & F.col(S.TEXT_EMBEDDING).isNotNull()))
    per_model = _counts(vectors, S.CLIP_MODEL)
    try:
        out = write_spaces(vectors, per_model, folder, e.npy_dtype, e.npy_rows_per_shard, "overwrite",
                           always_subfolder=True)
    except NpyError as exc:
        raise ExportError(str(exc)) from None
    out["released_without_embedding"] = kept.count() - out["rows"]
    return out


def run(spark, cfg) -> dict:
    from laion_spark.export.card import write_card
    from laion_spark.index.transform import normalise_names

    e = cfg.export
    outputs = outputs_of(cfg)
    raw = spark.read.parquet(cfg.input)
    dataset = normalise_names(raw.select("*", F.col("_metadata.file_path").alias(ROW_FILE),
                                         F.col("_metadata.row_index").alias(ROW_INDEX)))
    missing = [c for c in (S.SAMPLE_ID, S.URL, S.TEXT) if c not in dataset.columns]
    if missing:
        raise ConfigError(f"input {cfg.input} lacks column(s) {missing} (sample_id, url, text or LAION's spellings)")
    if "webdataset" in outputs:
        lacking = [c for c in REQUIRED_COLUMNS if c not in dataset.columns]
        if lacking:
            raise ConfigError(f"webdataset shards need download's image columns, and input {cfg.input} lacks "
                              f"{lacking}; give the dataset filter wrote, or export.outputs=laion")
    tags = spark.read.parquet(e.tags) if e.tags else None
    narrow = dataset.drop(*_binary(dataset))  # the decisions need no image bytes
    try:
        rows = R.scored(narrow, tags)
    except ValueError as exc:
        raise ConfigError(f"tags {e.tags}: {exc}") from None
    _check_expressions(spark, cfg, rows)
    try:
        lists = B.lists_of(e.blocklist)
        blocked = B.blocked(spark, rows, lists)  # reads and checks every list before anything is written
    except BlocklistError as exc:
        raise ConfigError(f"export.blocklist: {exc}") from None
    output_uri = fsspec_uri(cfg.output)
    _clear(output_uri, cfg.mode)
    decisions_uri = f"{output_uri}/{DECISIONS}"
    R.decide(rows, blocked, e.where).write.mode("overwrite").parquet(decisions_uri)
    decided = spark.read.parquet(decisions_uri)
    # the removed rows keep everything but their image bytes: a blocklisted image is not kept anywhere
    removed = decided.where(F.col(S.REASON).isNotNull()).drop(R.UNTAGGED, ROW_FILE, ROW_INDEX)
    removed.write.mode("overwrite" if cfg.mode == "overwrite" else "error").parquet(removed_uri(cfg))

    release_uri = f"{output_uri}/laion"
    write_table(R.release_columns(decided, e.columns), release_uri, S.RELEASES[e.columns], "release", "overwrite")
    release = spark.read.parquet(release_uri)

    rows_in = dataset.count()
    released = release.count()
    reasons = dict(sorted(_counts(spark.read.parquet(removed_uri(cfg)), S.REASON).items()))
    removed_rows = sum(reasons.values())
    if released + removed_rows != rows_in:
        raise ExportError(f"row accounting failed: {rows_in} dataset rows but {released} released + {removed_rows} "
                          f"removed = {released + removed_rows}")
    subsets = {}
    for name, expr in subsets_of(cfg).items():
        uri = f"{output_uri}/subsets/{name}"
        write_table(release.where(F.expr(expr)), uri, S.RELEASES[e.columns], f"subset {name}", "overwrite")
        subsets[name] = {"rows": spark.read.parquet(uri).count(), "where": expr}

    kept = decided.where(F.col(S.REASON).isNull())
    summary: dict = {
        "format": "release", "columns": e.columns, "outputs": list(outputs), "rows_in": rows_in,
        "released": released, "removed": removed_rows, "reasons": reasons, "subsets": subsets,
        "untagged": kept.where(F.col(R.UNTAGGED)).count() if tags is not None else None,
        "blocklists": [{"name": bl.name, "kind": bl.kind, "uri": bl.uri} for bl in lists],
        "where": e.where, "release": release_uri, "removed_output": removed_uri(cfg),
        "taggers": _taggers(tags),
        "clip_models": sorted(m for m in _counts(dataset, S.CLIP_MODEL) if m) if S.CLIP_MODEL in dataset.columns
        else [],
    }
    if summary["untagged"]:
        log.warning("export: %d released rows have no row in tags %s: their scores are null", summary["untagged"],
                    e.tags)
    if "webdataset" in outputs:
        # at least one partition for the plan; with nothing released write_shards writes no shard from it
        shards = write_shards(_webdataset_rows(kept, dataset, max(1, shard_count(released, e))), e,
                              f"{output_uri}/webdataset", "overwrite", rows_in=released, partitioned=True)
        if shards["rows"] != released:
            raise ExportError(f"the webdataset shards hold {shards['rows']} rows, the release {released}")
        summary["webdataset"] = shards
    if "emb" in outputs:
        summary["emb"] = _emb(spark, cfg, kept, f"{output_uri}/emb")
    summary["card"] = write_card(spark, cfg, summary)
    remove(decisions_uri)  # every table is cut from them by now
    log.info("export: %s dataset rows -> %s released, %s removed %s; subsets %s", rows_in, released, removed_rows,
             reasons, {k: v["rows"] for k, v in subsets.items()})
    return summary


def format_report(summary: dict) -> str:
    """Summary dict -> the text the CLI prints."""
    lines = [f"export: {summary['rows_in']} dataset rows -> {summary['released']} released "
             f"({summary['columns']} columns) at {summary['release']}, {summary['removed']} removed"]
    for reason, n in summary["reasons"].items():
        lines.append(f"  removed  {reason:<40} {n}")
    for name, s in summary["subsets"].items():
        lines.append(f"  subset   {name:<40} {s['rows']}")
    if "webdataset" in summary:
        w = summary["webdataset"]
        lines.append(f"  webdataset: {w['shards']} shards, {w['successes']} samples, {w['tar_bytes'] / 1e6:.1f} MB")
    if "emb" in summary:
        lines.append(f"  emb: {summary['emb']['rows']} rows in {summary['emb']['shards']} .npy shards")
    return "\n".join(lines)
