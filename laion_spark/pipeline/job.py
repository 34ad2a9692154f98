"""The pipeline job: web archives -> extract -> dedupe -> download -> embed -> filter -> tag -> export ->
index (image, text), every table under run_dir, a finished stage skipped on a rerun.

INPUT  -> JobConfig with input (archives, as extract takes them), output (run_dir, `run_dir=`), every
          stage's keys, and pipeline.from (rerun from this stage), pipeline.until (stop after it),
          pipeline.previous (earlier run directories whose pairs are not fetched again)
OUTPUT -> run_dir/<table> per stage (plan.table_uris), each with its completion marker;
          run_dir/manifest.json (manifest.py), rewritten after every step (atomically, with the
          takedowns on disk merged in); the summary dict

A step runs the stage as `laion-spark STAGE` does (its prepare, run, row check and marker, cli.run),
with mode=overwrite: a step that runs replaces what is there, so an interrupted one is redone whole and
leaves no duplicates. The published steps (export, index) are built beside (`<table>.building`) and
swapped in only once complete: a failed rebuild leaves the good release and index where they were, and
a running `serve` answers from them until it sees the new ones. The run directory is locked while the
pipeline runs (runlock.py): a takedown waits for it, and is never undone by its next export. Every
takedown recorded in run_dir (takedown/journal.py) is one of export's blocklists, by its recorded keys
and ids, whatever became of its list file. Progress: a log line as each step starts and ends, with its
counts and rate.
"""

from __future__ import annotations

import importlib
import json
import logging
import time

from laion_spark import progress
from laion_spark.config import ConfigError
from laion_spark.io import exists, remove, write_json
from laion_spark.pipeline import manifest as M
from laion_spark.pipeline import plan as P

log = logging.getLogger(__name__)

RESUMES = True  # cli: an existing run_dir is resumed, not an error


def prepare(cfg) -> None:
    p = cfg.pipeline
    for key, value in (("pipeline.from", p.rerun_from), ("pipeline.until", p.until)):
        if value and value not in P.ORDER:
            raise ConfigError(f"{key}={value}: not a pipeline stage; valid: {', '.join(P.ORDER)}")
    if p.rerun_from and p.until and P.ORDER.index(p.rerun_from) > P.ORDER.index(p.until):
        raise ConfigError(f"pipeline.from={p.rerun_from} comes after pipeline.until={p.until}")
    P.check(cfg)
    if cfg.output:
        from laion_spark import runlock

        runlock.check(cfg.output)  # a takedown (or another pipeline) is changing this run directory
        from laion_spark.takedown import journal as J

        unfinished = [e["dir"] for e in J.entries(cfg.output) if e.get("status") != "complete"]
        if unfinished:
            raise ConfigError(f"a takedown on {cfg.output} did not finish ({', '.join(unfinished)}): run the same "
                              "`laion-spark takedown run_dir=... list=...` again to complete it, then the pipeline")
    if not cfg.input:
        raise ConfigError("input=<archives> is required: laion-spark pipeline input=<WARC/WAT files> run_dir=<dir>")


BESIDE = ".building"  # where a published step builds before it is swapped in
REPLACED = ".replaced-"  # where the table it replaces waits while the new one moves in
PUBLISHED = {"export": "export.removed_output", "index": "index.rejected_output"}  # and the table beside each


def _swap(built: str, final: str) -> None:
    """Move a finished build over the table it replaces (the old one moved aside, then removed)."""
    import fsspec

    from laion_spark.io import fsspec_uri

    fs, new = fsspec.core.url_to_fs(fsspec_uri(built))
    old = fsspec.core.url_to_fs(fsspec_uri(final))[1].rstrip("/")
    aside = f"{old}{REPLACED}{int(time.time() * 1000)}"
    if fs.exists(old):
        fs.mv(old, aside, recursive=True)
    try:
        fs.mv(new.rstrip("/"), old, recursive=True)
    except BaseException:
        if fs.exists(aside) and not fs.exists(old):  # the good table back where it was
            fs.mv(aside, old, recursive=True)
        raise
    if fs.exists(aside):
        fs.rm(aside, recursive=True)


def _restore_aside(final: str) -> None:
    """A swap killed between its two moves left the old table aside and none in place -> put it back;
    asides of finished swaps (their removal killed) -> removed."""
    import fsspec

    from laion_spark.io import fsspec_uri

    fs, path = fsspec.core.url_to_fs(fsspec_uri(final))
    path = path.rstrip("/")
    asides = sorted(fs.glob(f"{path}{REPLACED}*"))
    if asides and not fs.exists(path):
        log.warning("pipeline: %s was moved aside by a swap that did not finish; restored", final)
        fs.mv(asides.pop(), path, recursive=True)
    for aside in asides:
        fs.rm(aside, recursive=True)


def _retarget(uri: str, built: str, final: str) -> None:
    """A moved table's markers name where it was built -> the place it lies now."""
    import fsspec

    from laion_spark.io import fsspec_uri
    from laion_spark.takedown.rewrite import _replace

    fs, root = fsspec.core.url_to_fs(fsspec_uri(uri))
    paths = fs.glob(root.rstrip("/") + "/**/_summary.json") + fs.glob(root.rstrip("/") + "/_summary.json")
    for path in [*paths, *fs.glob(root.rstrip("/") + "/README.md")]:  # the dataset card names the tables
        with fs.open(path, "r") as fh:
            text = fh.read()
        if built in text:
            _replace(fs, path, text.replace(built, final).encode())


def _carry_tombstones(old: str, new: str) -> None:
    """A takedown's tombstones in the index being replaced -> into the new one (its rows are not in the
    release it was built from; the tombstones keep every reader refusing them all the same)."""
    import fsspec

    from laion_spark.io import fsspec_uri

    fs, src = fsspec.core.url_to_fs(fsspec_uri(old))
    dst = fsspec.core.url_to_fs(fsspec_uri(new))[1].rstrip("/")
    src = src.rstrip("/")
    for path in fs.glob(src + "/tombstones.npy") + fs.glob(src + "/*/tombstones.npy"):
        target = dst + path[len(src):]
        if fs.exists(target.rsplit("/", 1)[0]) and not fs.exists(target):
            fs.copy(path, target)


def _run_step(spark, step: P.Step) -> dict:
    import dataclasses

    from laion_spark import cli
    from laion_spark.stages import get

    module = importlib.import_module(get(step.stage).module)
    if step.stage not in PUBLISHED:
        module.prepare(step.cfg)
        return cli.run(step.stage, step.cfg, module, spark, label=f"pipeline {step.name}")
    section, key = PUBLISHED[step.stage].split(".")
    final = step.cfg.output.rstrip("/")
    pairs = [(final + BESIDE, final), (final + BESIDE + "_" + key.split("_")[0], final + "_" + key.split("_")[0])]
    for built, target in pairs:
        _restore_aside(target)
        remove(built)  # what a killed build left
    cfg = dataclasses.replace(step.cfg, output=pairs[0][0], **{section: dataclasses.replace(
        getattr(step.cfg, section), **{key: pairs[1][0]})})
    module.prepare(cfg)
    summary = cli.run(step.stage, cfg, module, spark, label=f"pipeline {step.name}")
    if step.stage == "index":
        _carry_tombstones(final, pairs[0][0])
    for built, target in pairs:
        if exists(built):
            _swap(built, target)
            _retarget(target, built, target)
    return json.loads(json.dumps(summary, default=str).replace(pairs[0][0], final))


def _line(entry: dict) -> str:
    c = entry["counts"]
    shown = {k: v for k, v in c.items() if not isinstance(v, dict)}
    rate = f", {entry['rows_in_per_s']} rows/s" if entry.get("rows_in_per_s") else ""
    return f"{entry['step']} {entry['action']} in {entry['seconds'] or 0:.1f}s{rate}: {shown}"


def _with_takedowns(cfg, takedowns: list[dict]):
    """The takedowns applied to this run -> added to export's blocklists, so that a rerun of export (a new
    threshold, say) cannot release those rows again: each by what it recorded in run_dir (its keys as
    digests and its sample ids: journal.py), whatever became of its list file since. A takedown from
    before the journal (manifest entry only) is re-applied by its list file where it still exists."""
    import dataclasses

    from laion_spark.takedown import journal as J

    blocklist = cfg.export.blocklist
    recorded = J.recorded(cfg.output)
    for t in takedowns:
        if t.get("journal") or t["kind"] not in dataclasses.asdict(blocklist):
            continue
        if exists(t["list"]):
            recorded.append((t["kind"], t["list"]))
        else:
            log.warning("pipeline: the takedown of %s (%s) has no journal and its file is gone: its %d rows stay out "
                        "only while the release is not rebuilt", t["list"], t["at"], t.get("removed", 0))
    for kind, uri in recorded:
        have = getattr(blocklist, kind)
        if uri not in have:
            blocklist = dataclasses.replace(blocklist, **{kind: (*have, uri)})
    return dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, blocklist=blocklist))


# the run's own tables a rerun of these stages writes again, with image bytes or vectors in them
_REFILLED = {"download": ("images",), "embed": ("embeddings",), "filter": ("dataset", "dataset_rejected")}


def _blank_taken_down(step: P.Step) -> None:
    """A rerun download, embed or filter wrote the taken-down rows' image bytes or vectors again (their
    URLs are still in pairs) -> blanked as the takedown left them; export's recorded lists keep them out
    of the release."""
    from laion_spark.takedown import journal as J
    from laion_spark.takedown import rewrite as W

    if step.stage not in _REFILLED:
        return
    run_dir = step.cfg.output.rstrip("/").rsplit("/", 1)[0]
    ids = J.removed_ids(run_dir)
    if not ids:
        return
    uris = P.table_uris(run_dir)
    for table in _REFILLED[step.stage]:
        blank = W.is_vector if table == "embeddings" else W.is_binary
        done = W.null_columns(uris[table], ids, "sample_id", blank=blank)
        if done:
            log.info("pipeline: %s: the image bytes or vectors of %d taken-down rows blanked again", table,
                     sum(d["removed"] for d in done))


def _write_manifest(uri: str, doc: dict) -> None:
    """The manifest, with the takedowns on disk merged in (one that ran since this run read them is kept,
    never erased by this write)."""
    from laion_spark.io import read_json

    try:
        on_disk = read_json(uri).get("takedowns", []) if exists(uri) else []
    except (OSError, ValueError):
        on_disk = []
    have = {json.dumps(t, sort_keys=True, default=str) for t in doc.get("takedowns", [])}
    merged = list(doc.get("takedowns", [])) + [t for t in on_disk if json.dumps(t, sort_keys=True, default=str)
                                               not in have]
    if merged:
        doc["takedowns"] = merged
    write_json(uri, doc)


def run(spark, cfg) -> dict:
    from laion_spark import runlock

    with runlock.held(cfg.output, "pipeline"):
        return _run(spark, cfg)


def _run(spark, cfg) -> dict:
    from laion_spark.io import read_json

    uris = P.table_uris(cfg.output)
    takedowns = read_json(uris["manifest"]).get("takedowns", []) if exists(uris["manifest"]) else []
    cfg = _with_takedowns(cfg, takedowns)
    progress.announce(spark)  # the Spark UI's address, first
    all_steps = P.steps(cfg)
    todo, forced = P.selected(all_steps, cfg.pipeline.rerun_from, cfg.pipeline.until)
    doc = {
        "run_dir": cfg.output, "input": cfg.input, "status": "running", "started": M.now(),
        "versions": M.versions(spark), "checkpoints_and_lists": M.content_keys(all_steps),
        "config": M.config_of(cfg), "steps": [], **({"takedowns": takedowns} if takedowns else {}),
    }
    _write_manifest(uris["manifest"], doc)
    stale = uris["dataset"].rstrip("/") + "_emb"
    if remove(stale):  # filter.npy's copy of every kept row, blocklisted ones too: export/emb replaces it
        log.info("pipeline: removed %s (the release's vectors are in export/emb)", stale)
    ran, summaries = [], {}
    for i, step in enumerate(todo, 1):
        go, why = P.decide(step, step.name in forced, cfg.output)
        if step.stage == "report" and ran:  # it reads every table, not one input whose marker would change
            go, why = True, "steps ran: " + ", ".join(ran)
        started = time.time()
        if step.stage == "index" and summaries.get("export", {}).get("released") == 0:
            # an incremental crawl with nothing new: no index of nothing (faiss cannot train on no rows)
            go, why = False, "the release has no rows: nothing to index"
            if remove(step.cfg.output):  # an index of an earlier release would serve rows released no more
                why += "; the earlier index removed"
            summary = None
            entry = M.step_entry(step, "empty", why, started, summary)
            log.info("pipeline [%d/%d] %s not built: %s", i, len(todo), step.name, why)
        elif not go:
            summary = P.read_marker(step.cfg.output)
            entry = M.step_entry(step, "skipped", why, started, summary)
            log.info("pipeline [%d/%d] %s skipped: %s", i, len(todo), step.name, why)
        else:
            log.info("pipeline [%d/%d] %s running: %s", i, len(todo), step.name, why)
            try:
                summary = _run_step(spark, step)
            except BaseException as exc:
                doc["steps"].append({**M.step_entry(step, "failed", why, started, None),
                                     "error": f"{type(exc).__name__}: {str(exc)[:2000]}"})
                doc.update(status="failed", ended=M.now())
                _write_manifest(uris["manifest"], doc)
                raise
            _blank_taken_down(step)
            entry = M.step_entry(step, "run", why, started, summary)
            ran.append(step.name)
        summaries[step.name] = summary or {}
        log.info("pipeline [%d/%d] %s", i, len(todo), _line(entry))
        doc["steps"].append(entry)
        _write_manifest(uris["manifest"], doc)
    doc.update(status="complete", ended=M.now())
    _write_manifest(uris["manifest"], doc)
    return {"run_dir": cfg.output, "manifest": uris["manifest"], "ran": ran,
            "skipped": [s["step"] for s in doc["steps"] if s["action"] != "run"],
            "steps": doc["steps"], "tables": {k: v for k, v in uris.items() if k != "manifest"}}


def format_report(summary: dict) -> str:
    lines = [f"pipeline: {len(summary['ran'])} steps run, {len(summary['skipped'])} skipped; run directory "
             f"{summary['run_dir']}"]
    for s in summary["steps"]:
        lines.append(f"  {s['step']:<12} {s['action']:<8} {s['why']}")
        shown = {k: v for k, v in s["counts"].items() if not isinstance(v, dict)}
        lines.append(f"  {'':<12} {'':<8} {shown}")
    lines.append(f"manifest: {summary['manifest']}")
    return "\n".join(lines)
