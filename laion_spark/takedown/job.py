"""The takedown job: a finished run + a list of URLs, hashes or sample ids -> those rows gone from every
output of the run, in place, recorded first and re-applied by every later pipeline run.

INPUT  -> JobConfig with input (the run directory, `run_dir=`), takedown.list (`list=`: a file as
          export's blocklists take them) and takedown.kind (url, url_md5, url_sha256, image_md5,
          image_sha1, image_sha256, sample_id)
OUTPUT -> in this order, under the run directory's lock (runlock.py: never beside a running pipeline):
          1. the rows the list matches in what could hold them (images, every downloaded row; else the
             dataset), not only in the release, recorded in run_dir/takedowns/<NNNN>-<name>/ (journal.py:
             the list's keys as digests and the sample ids) before anything is rewritten;
          2. tombstones.npy in every index folder (index_files.py): from then on search and serve never
             answer with the rows, whatever an index file still holds;
          3. the released rows appended to export_removed (reason takedown:<list name>); the rows removed
             from export/laion, export/subsets/*, export/webdataset, export/emb, dataset_emb (filter.npy),
             every index folder (merged, sharded, on-disk lists, one per model), report/samples and
             evaluate's shards; their image bytes blanked in images, dataset and dataset_rejected and their
             vectors in embeddings (the rows stay there: the stages' row accounting);
          4. export's and the indices' _summary.json counts and the dataset card counted again;
          5. the journal entry marked complete, and the takedown in run_dir/manifest.json.
          Every file that holds none of the rows stays byte for byte as it was. A takedown killed at any
          point resumes from its journal when run again; a rerun of a completed one is a no-op that says so.

Scale: the files that hold the rows are found by Spark (locate.py: every table's id column read with its
_metadata.file_path, joined with the journal's ids, in one job); the driver receives the matching (file,
sample_id) pairs, as many as the rows removed, and rewrites those files alone (rewrite.py, index_files.py:
each a part file, a shard or an index file; an index through a memory map, list by list). Counts are
taken again by Spark (the footers, the shards' stats). What the driver holds grows with the takedown
(its ids, the pairs, the files rewritten), never with the run.
"""

from __future__ import annotations

import logging

from pyspark.sql import functions as F

from laion_spark import schemas as S
from laion_spark.config import ConfigError

log = logging.getLogger(__name__)

RESUMES = True  # it changes a finished run in place; no output folder of its own


def prepare(cfg) -> None:
    """Every check before anything is rewritten: the list, the run's tables, and every index folder the
    takedown must reach (a layout it could not finish is refused here, not half-way)."""
    from laion_spark import runlock
    from laion_spark.export.blocklist import KINDS
    from laion_spark.io import exists
    from laion_spark.pipeline.plan import table_uris
    from laion_spark.takedown import index_files as I
    from laion_spark.takedown.rewrite import TakedownError

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
    runlock.check(cfg.input)  # a pipeline running there would undo it
    for folder in I.folders(cfg.input):
        try:
            I.check(folder)
        except TakedownError as exc:
            raise ConfigError(f"takedown cannot complete on {folder}, so nothing was changed: {exc}") from None


def _append_removed(spark, u: dict, dataset, tags, wanted, reason: str) -> int:
    """The released rows among wanted (a DataFrame of sample ids) not yet in export_removed under this
    reason, as export writes its removed rows (no image bytes), appended to export_removed -> how many."""
    from pyspark.sql import types as T

    from laion_spark.export import release as R
    from laion_spark.io import exists

    released = (spark.read.parquet(u["release"]).select(F.col("SAMPLE_ID").cast("long").alias(S.SAMPLE_ID))
                .join(wanted, S.SAMPLE_ID, "left_semi"))
    if exists(u["export_removed"]):
        done = spark.read.parquet(u["export_removed"]).where(F.col(S.REASON) == reason).select(S.SAMPLE_ID)
        released = released.join(done, S.SAMPLE_ID, "left_anti")  # a resumed takedown appends once
    # collected (as many as the takedown's rows) before the append: export_removed is read above
    todo = sorted(r[S.SAMPLE_ID] for r in released.collect())
    if not todo:
        return 0
    todo_df = spark.createDataFrame([(i,) for i in todo], f"{S.SAMPLE_ID} long")
    rows = (R.scored(dataset.join(todo_df, S.SAMPLE_ID, "left_semi"), tags)
            .withColumn(S.REASON, F.lit(reason)))
    if exists(u["export_removed"]):
        target = spark.read.parquet(u["export_removed"]).schema
        rows = rows.select(*[(F.col(f"`{f.name}`") if f.name in rows.columns else F.lit(None)).cast(f.dataType)
                             .alias(f.name) for f in target.fields])
    else:
        rows = rows.select(*[f.name for f in rows.schema.fields
                             if not isinstance(f.dataType, T.BinaryType) and f.name != R.UNTAGGED])
    rows.write.mode("append").parquet(u["export_removed"])
    return len(todo)


def _matches(spark, u: dict, listed) -> list[int]:
    """The run's rows the list matches, in what could hold them: images (every downloaded row, with its
    digests) where the run kept it, else the dataset."""
    from laion_spark.export import blocked as B
    from laion_spark.export.blocklist import BlocklistError
    from laion_spark.index.transform import normalise_names
    from laion_spark.io import exists

    table = normalise_names(spark.read.parquet(u["images"] if exists(u["images"]) else u["dataset"]))
    rows = table.select(*[c for c in (S.SAMPLE_ID, S.URL, "md5", "sha1", "sha256") if c in table.columns])
    try:
        hits = B.blocked(spark, rows, [listed])
    except BlocklistError as exc:
        raise ConfigError(f"takedown.list: {exc}") from None
    return sorted({r[S.SAMPLE_ID] for r in hits.select(S.SAMPLE_ID).collect()})


def _clear_leftovers(run_dir: str) -> None:
    """What a killed pipeline left beside its tables (builds, old tables moved aside): copies of rows no
    takedown would reach; the pipeline, locked out while this runs, removes or redoes them anyway."""
    import fsspec

    from laion_spark.io import fsspec_uri
    from laion_spark.pipeline.job import BESIDE, REPLACED

    fs, root = fsspec.core.url_to_fs(fsspec_uri(run_dir))
    root = root.rstrip("/")
    for pattern in (f"{root}/*{BESIDE}*", f"{root}/index/*{BESIDE}*", f"{root}/*{REPLACED}*",
                    f"{root}/index/*{REPLACED}*"):
        for path in fs.glob(pattern):
            log.warning("takedown: removing %s, left by an interrupted pipeline", path)
            fs.rm(path, recursive=True)


def sources(run_dir: str, u: dict, folders: list[str]) -> list:
    """Every table and file set of the run a takedown rewrites, as locate.Sources named after what they
    are (release, subset:<name>, webdataset, emb, dataset_emb, images, ..., index:<folder>)."""
    import fsspec

    from laion_spark.io import fsspec_uri
    from laion_spark.takedown import locate as L

    out = [L.Source("release", u["release"], "SAMPLE_ID")]
    fs, subsets = fsspec.core.url_to_fs(fsspec_uri(u["export"] + "/subsets"))
    for sub in sorted(fs.ls(subsets, detail=False)) if fs.exists(subsets) else []:  # a handful of folders
        # by the run's own URI again: fs.ls drops the scheme of a remote store
        name = sub.rstrip("/").rsplit("/", 1)[-1]
        out.append(L.Source(f"subset:{name}", f"{u['export']}/subsets/{name}", "SAMPLE_ID"))
    out += [L.Source("webdataset", u["export"] + "/webdataset"),
            L.npy_metadata("emb", u["export"] + "/emb"),
            L.npy_metadata("dataset_emb", u["dataset"].rstrip("/") + "_emb"),  # filter.npy=true's copy
            *(L.Source(name, u[name]) for name in ("images", "dataset", "dataset_rejected", "embeddings")),
            *(L.Source(f"index:{folder}", f"{folder}/metadata") for folder in folders)]
    return out


def _apply(spark, run_dir: str, u: dict, ids: list[int], wanted, reason: str) -> tuple[list[dict], int]:
    """Steps 2 - 4 of the module docstring -> (files rewritten, released rows removed). wanted: the ids as
    a DataFrame (the journal's file, read by Spark)."""
    from laion_spark.evaluate.job import remove_from_outputs
    from laion_spark.index.transform import normalise_names
    from laion_spark.io import exists
    from laion_spark.report.job import remove_samples
    from laion_spark.takedown import index_files as I
    from laion_spark.takedown import locate as L
    from laion_spark.takedown import recount as C
    from laion_spark.takedown import rewrite as W

    _clear_leftovers(run_dir)
    folders = I.folders(run_dir)
    for folder in folders:  # first: the rows are unanswerable from here on
        I.tombstone(folder, ids)
    dataset = normalise_names(spark.read.parquet(u["dataset"]))
    tags = spark.read.parquet(u["tags"]) if exists(u["tags"]) else None
    released = _append_removed(spark, u, dataset, tags, wanted, reason)
    todo = sources(run_dir, u, folders)
    at = {s.name: s.uri for s in todo}
    found = L.locate(spark, todo, wanted)  # {source: {file: ids}}: the files to open, and only those
    files: list[dict] = []
    for s in todo:
        if s.name == "release" or s.name.startswith("subset:"):
            files += W.parquet_folder(s.uri, ids, "SAMPLE_ID", found[s.name])
    files += W.webdataset_shards(at["webdataset"], ids, found["webdataset"])
    files += W.npy_shards(at["emb"], ids, found["emb"])
    files += W.npy_shards(at["dataset_emb"], ids, found["dataset_emb"])
    for folder in folders:
        files += I.remove(folder, ids, found[f"index:{folder}"])
    files += remove_samples(u["report"], ids)
    files += remove_from_outputs(run_dir.rstrip("/") + "/evaluate", ids)
    for name in ("images", "dataset", "dataset_rejected"):
        files += W.null_columns(u[name], ids, S.SAMPLE_ID, W.is_binary, found[name])
    files += W.null_columns(u["embeddings"], ids, S.SAMPLE_ID, W.is_vector, found["embeddings"])
    files += C.export_marker(spark, u)
    prefix = run_dir.rstrip("/") + "/index/"
    for field in sorted({f[len(prefix):].split("/", 1)[0] for f in folders if f.startswith(prefix)}):
        files += C.index_marker(prefix + field)
    return files, released


def run(spark, cfg) -> dict:
    from laion_spark import runlock
    from laion_spark.export import blocked as B
    from laion_spark.marker import file_hash
    from laion_spark.pipeline import manifest as M
    from laion_spark.pipeline.plan import table_uris
    from laion_spark.takedown import journal as J
    from laion_spark.takedown import locate as L

    t = cfg.takedown
    run_dir = cfg.input
    u = table_uris(run_dir)
    listed = B.BlockList(B._name(t.list), t.kind, t.list)
    list_sha256 = file_hash(t.list)
    with runlock.held(run_dir, "takedown"):
        J.clear_unrecorded(run_dir)
        entry = J.find(run_dir, t.kind, list_sha256)
        if entry and entry["status"] == "complete":
            ids = J.ids_of(entry)
            log.info("takedown: %s (%s) was applied to %s at %s (%d rows); nothing to do", t.list, t.kind, run_dir,
                     entry["at"], len(ids))
            return {"run_dir": run_dir, "list": t.list, "kind": t.kind, "reason": entry["reason"], "removed": 0,
                    "matched": len(ids), "sample_ids": ids, "files": [], "already_applied": entry["at"],
                    "journal": entry["dir"]}
        resumed = entry is not None
        if entry is None:
            entry = J.start(spark, run_dir, listed, list_sha256, _matches(spark, u, listed), M.now())
        ids = J.ids_of(entry)
        wanted = L.ids_frame(spark, J.ids_uri(entry))
        files, released = _apply(spark, run_dir, u, ids, wanted, entry["reason"]) if ids else ([], 0)
        record = {"removed": len(ids), "released_removed": released, "files": files, "completed_at": M.now()}
        entry = J.complete(entry, record)
        _record_in_manifest(u["manifest"], run_dir, entry, ids)
    log.info("takedown: %d rows of %s matched %s (%d released); %d files rewritten%s", len(ids), run_dir, t.list,
             released, len(files), " (resumed)" if resumed else "")
    return {"run_dir": run_dir, "list": t.list, "kind": t.kind, "reason": entry["reason"], "removed": len(ids),
            "matched": len(ids), "released_removed": released, "sample_ids": ids, "files": files,
            "resumed": resumed, "journal": entry["dir"]}


def _record_in_manifest(uri: str, run_dir: str, entry: dict, ids: list[int]) -> None:
    """The takedown, once, in manifest.json's "takedowns" (written atomically)."""
    from laion_spark.io import exists, read_json, write_json

    manifest = read_json(uri) if exists(uri) else {"run_dir": run_dir}
    done = manifest.setdefault("takedowns", [])
    if any(d.get("journal") == entry["dir"].rsplit("/", 1)[-1] for d in done):
        return
    done.append({"at": entry["at"], "completed_at": entry.get("completed_at"), "list": entry["list"],
                 "kind": entry["kind"], "list_sha256": entry["list_sha256"], "reason": entry["reason"],
                 "removed": len(ids), "sample_ids": ids, "files": entry.get("files", []),
                 "journal": entry["dir"].rsplit("/", 1)[-1]})
    write_json(uri, manifest)


def format_report(summary: dict) -> str:
    if summary.get("already_applied"):
        return (f"takedown: {summary['list']} ({summary['kind']}) was already applied to {summary['run_dir']} at "
                f"{summary['already_applied']} ({summary['matched']} rows); nothing to do, nothing rewritten")
    lines = [f"takedown: {summary['removed']} rows matched {summary['list']} ({summary['kind']}), "
             f"{summary.get('released_removed', 0)} of them released; removed (reason {summary['reason']}) from "
             f"{len(summary['files'])} files{' (resumed)' if summary.get('resumed') else ''}, every other file "
             "untouched"]
    lines += [f"  {f['file']}: -{f['removed']}" for f in summary["files"]]
    return "\n".join(lines)
