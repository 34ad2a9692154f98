"""The pipeline job: web archives -> extract -> dedupe -> download -> embed -> filter -> tag -> export ->
index (image, text), every table under run_dir, a finished stage skipped on a rerun.

INPUT  -> JobConfig with input (archives, as extract takes them), output (run_dir, `run_dir=`), every
          stage's keys, and pipeline.from (rerun from this stage), pipeline.until (stop after it),
          pipeline.previous (earlier run directories whose pairs are not fetched again)
OUTPUT -> run_dir/<table> per stage (plan.table_uris), each with its completion marker;
          run_dir/manifest.json (manifest.py), rewritten after every step; the summary dict

A step runs the stage as `laion-spark STAGE` does (its prepare, run, row check and marker, cli.run),
with mode=overwrite: a step that runs replaces what is there, so an interrupted one is redone whole and
leaves no duplicates. Progress: a log line as each step starts and ends, with its counts and rate.
"""

from __future__ import annotations

import importlib
import logging
import time

from laion_spark import progress
from laion_spark.config import ConfigError
from laion_spark.io import remove, write_json
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
    if not cfg.input:
        raise ConfigError("input=<archives> is required: laion-spark pipeline input=<WARC/WAT files> run_dir=<dir>")


def _run_step(spark, step: P.Step) -> dict:
    from laion_spark import cli
    from laion_spark.stages import get

    module = importlib.import_module(get(step.stage).module)
    module.prepare(step.cfg)
    return cli.run(step.stage, step.cfg, module, spark, label=f"pipeline {step.name}")


def _line(entry: dict) -> str:
    c = entry["counts"]
    shown = {k: v for k, v in c.items() if not isinstance(v, dict)}
    rate = f", {entry['rows_in_per_s']} rows/s" if entry.get("rows_in_per_s") else ""
    return f"{entry['step']} {entry['action']} in {entry['seconds'] or 0:.1f}s{rate}: {shown}"


def _with_takedowns(cfg, takedowns: list[dict]):
    """The lists `laion-spark takedown` applied to this run -> added to export's blocklists, so that a
    rerun of export (a new threshold, say) cannot release those rows again."""
    import dataclasses

    blocklist = cfg.export.blocklist
    for t in takedowns:
        have = getattr(blocklist, t["kind"])
        if t["list"] not in have:
            blocklist = dataclasses.replace(blocklist, **{t["kind"]: (*have, t["list"])})
    return dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, blocklist=blocklist))


def run(spark, cfg) -> dict:
    from laion_spark.io import exists, read_json

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
    write_json(uris["manifest"], doc)
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
                write_json(uris["manifest"], doc)
                raise
            entry = M.step_entry(step, "run", why, started, summary)
            ran.append(step.name)
        summaries[step.name] = summary or {}
        log.info("pipeline [%d/%d] %s", i, len(todo), _line(entry))
        doc["steps"].append(entry)
        write_json(uris["manifest"], doc)
    doc.update(status="complete", ended=M.now())
    write_json(uris["manifest"], doc)
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
