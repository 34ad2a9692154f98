"""A finished run directory -> what it measured: per step seconds and counts, the funnel's rows, each table's
bytes on disk, the input archives' bytes and the index's dimension. Files only: no Spark.

INPUT  -> run_dir (a URI) holding manifest.json (pipeline/manifest.py), its tables and index/*/index_infos.json
OUTPUT -> Measured, or PlanError (a ConfigError: the CLI's exit 2) naming what is missing

Which tables a step reads and writes comes from the pipeline's own wiring (pipeline/plan.py's steps and the
stage registry's inputs and outputs), not from a second list here. A table's bytes are what its files hold
on disk (fsspec's du); the run this reads is a pilot whose tables are a few files each, and the listing
happens once per table.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

from laion_spark.config import ConfigError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
INDEX_INFOS = "index_infos.json"
NOT_PLANNED = ("report",)  # describes a run: a page and counts, not work that grows with the rows


class PlanError(ConfigError):
    """A run directory the plan cannot read (no manifest, no step that ran), or a bad target."""


@dataclass(frozen=True)
class StepRun:
    """One step of the manifest (index twice: index:image, index:text)."""

    name: str
    stage: str
    action: str  # run, skipped (its seconds are those of the run that completed it), failed
    seconds: float | None
    counts: dict
    reads: tuple[str, ...]  # table names (keys of Measured.tables)
    writes: tuple[str, ...]


@dataclass(frozen=True)
class TableOnDisk:
    name: str  # pipeline/plan.py's table names (candidates, index_image, release, ...), or archives
    uri: str
    bytes: int | None  # None: not on disk, or not measurable (a *.paths.gz input lists remote files)
    written_by: str  # the step that writes it ("" for the input archives)
    part_of: str = ""  # a table inside another one (export's release in export/laion): not counted twice


@dataclass(frozen=True)
class Measured:
    run_dir: str
    status: str  # the manifest's: complete, running, failed, ...
    steps: dict[str, StepRun]  # in the pipeline's order
    tables: dict[str, TableOnDisk]
    funnel: dict[str, int | None]  # candidates, pairs, success, dataset, released, rejected, removed
    files: int | None  # input files extract read
    fetched: int | None  # rows download fetched (reused ones left out)
    bytes_downloaded: int | None
    index: dict[str, dict] = field(default_factory=dict)  # field (image, text) -> index_infos.json


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _count(steps: dict[str, StepRun], step: str, *path: str) -> int | None:
    value = steps[step].counts if step in steps else None
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return _int(value)


def _first(*values: int | None) -> int | None:
    return next((v for v in values if v is not None), None)


def _fs(uri: str):
    import fsspec

    from laion_spark.io import fsspec_uri

    return fsspec.core.url_to_fs(fsspec_uri(uri))


def size_on_disk(uri: str) -> int | None:
    """A file, folder or glob -> the bytes its files hold; None when nothing is there or it lists other files
    (a *.paths / *.paths.gz input names remote archives, whose sizes a listing does not give)."""
    if not uri or uri.endswith((".paths", ".paths.gz")):
        return None
    fs, path = _fs(uri)
    try:
        if any(c in path for c in "*?["):
            found = fs.glob(path)
            return sum(int(fs.du(p)) for p in found) if found else None
        if not fs.exists(path):
            return None
        return int(fs.du(path))
    except OSError as exc:
        log.warning("plan: cannot measure %s: %s", uri, exc)
        return None


def _resolve_input(entry: str, recorded_run_dir: str, run_dir: str) -> str:
    """An input the manifest recorded (relative to where the run was started, e.g. demo-output/crawl/x.warc.gz)
    -> where it is now: as recorded if it is there, else at the same place under run_dir."""
    from laion_spark.io import exists

    old = recorded_run_dir.rstrip("/")
    if old and entry.startswith(old + "/") and not exists(entry):
        return run_dir.rstrip("/") + entry[len(old):]
    return entry


def read_manifest(run_dir: str) -> dict:
    """run_dir -> its manifest.json, or PlanError saying what plan needs."""
    from laion_spark.io import exists, read_json

    uri = f"{run_dir.rstrip('/')}/{MANIFEST}"
    if not exists(run_dir):
        raise PlanError(f"run_dir not found: {run_dir}")
    if not exists(uri):
        raise PlanError(f"run_dir {run_dir} has no {MANIFEST}: plan reads the measured seconds and counts of a "
                        "finished run of `laion-spark pipeline` or `laion-spark demo`")
    try:
        manifest = read_json(uri)
    except ValueError as exc:
        raise PlanError(f"{uri} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or not manifest.get("steps"):
        raise PlanError(f"{uri} lists no steps: the run stopped before its first stage")
    return manifest


def _wiring(run_dir: str, archives: str) -> tuple[dict[str, tuple[list[str], list[str]]], dict[str, str]]:
    """-> ({step: (URIs it reads, URIs it writes)}, {URI: table name}) from the pipeline's steps."""
    from laion_spark import marker, stages
    from laion_spark.config import JobConfig
    from laion_spark.pipeline import plan as pipeline_plan

    cfg = dataclasses.replace(JobConfig(), input=archives, output=run_dir)
    names = {uri: name for name, uri in pipeline_plan.table_uris(run_dir).items()}
    names[archives] = "archives"  # extract's input: every archive, comma-separated
    wiring = {}
    for step in pipeline_plan.steps(cfg):
        entry = stages.get(step.stage)
        reads = [uri for _, uri in marker.table_uris(entry, step.cfg, entry.inputs)]
        writes = [uri for _, uri in marker.table_uris(entry, step.cfg, entry.outputs)]
        wiring[step.name] = (reads, writes)
    return wiring, names


def _inside(uri: str, others) -> str:
    """-> the URI among others that holds uri (export/laion inside export), or ''."""
    return next((o for o in others if o != uri and uri.startswith(o.rstrip("/") + "/")), "")


def read_run(run_dir: str) -> Measured:
    """run_dir -> Measured (see the module docstring)."""
    from laion_spark.io import exists, read_json

    run_dir = run_dir.rstrip("/")
    manifest = read_manifest(run_dir)
    recorded = str(manifest.get("run_dir") or "")
    archives = ",".join(_resolve_input(e.strip(), recorded, run_dir)
                        for e in str(manifest.get("input") or "").split(",") if e.strip())
    wiring, names = _wiring(run_dir, archives)

    def name_of(uri: str) -> str:
        if uri in names:
            return names[uri]
        return uri[len(run_dir) + 1:] if uri.startswith(run_dir + "/") else uri

    entries = {e.get("step"): e for e in manifest["steps"] if isinstance(e, dict) and e.get("step")}
    steps: dict[str, StepRun] = {}
    tables: dict[str, TableOnDisk] = {}
    for step_name, (reads, writes) in wiring.items():
        if step_name in NOT_PLANNED or step_name not in entries:
            continue
        e = entries[step_name]
        seconds = e.get("seconds") if isinstance(e.get("seconds"), int | float) else None
        if archives in reads and "archives" not in tables:  # extract's input: listed first, as it is read first
            sizes = [size_on_disk(u.strip()) for u in archives.split(",") if u.strip()]
            tables["archives"] = TableOnDisk("archives", archives, None if not sizes or None in sizes else sum(sizes),
                                             "")
        written = []
        for uri in writes:
            if uri in tables or not exists(uri):  # an optional output this run did not write
                continue
            holder = _inside(uri, writes)
            table = TableOnDisk(name_of(uri), uri, size_on_disk(uri), step_name, part_of=name_of(holder) if holder
                                else "")
            tables[table.name] = table
            written.append(table.name)
        read = [name_of(u) for u in reads]
        steps[step_name] = StepRun(step_name, str(e.get("stage") or step_name.split(":")[0]),
                                   str(e.get("action") or ""), seconds, dict(e.get("counts") or {}),
                                   tuple(dict.fromkeys(read)), tuple(written))
    if not steps:
        raise PlanError(f"{run_dir}/{MANIFEST} holds no step plan can scale (extract ... index)")
    funnel = {
        "candidates": _first(_count(steps, "extract", "candidates"), _count(steps, "dedupe", "rows_in")),
        "pairs": _first(_count(steps, "dedupe", "pairs"), _count(steps, "download", "rows_in")),
        "success": _first(_count(steps, "download", "statuses", "success"), _count(steps, "embed", "success_rows")),
        "dataset": _count(steps, "filter", "dataset"),
        "rejected": _count(steps, "filter", "rejected"),
        "released": _count(steps, "export", "released"),
        "removed": _count(steps, "export", "removed"),
    }
    index = {}
    for name, uri in ((n, t.uri) for n, t in tables.items() if n.startswith("index_")):
        infos_uri = f"{uri.rstrip('/')}/{INDEX_INFOS}"
        if exists(infos_uri):
            try:
                index[name[len("index_"):]] = read_json(infos_uri)
            except ValueError as exc:
                log.warning("plan: %s is not valid JSON: %s", infos_uri, exc)
    return Measured(
        run_dir=run_dir, status=str(manifest.get("status") or ""), steps=steps, tables=tables, funnel=funnel,
        files=_count(steps, "extract", "files"), fetched=_count(steps, "download", "downloaded"),
        bytes_downloaded=_count(steps, "download", "bytes_downloaded"), index=index)
