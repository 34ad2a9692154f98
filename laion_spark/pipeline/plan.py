"""The pipeline's plan (no Spark): a JobConfig -> the steps under run_dir, and whether each must run.

INPUT  -> the pipeline's JobConfig (input: archives; output: run_dir; every stage's keys; pipeline.*)
OUTPUT -> `steps`: one Step per stage run (index twice: image and text), each with the JobConfig that
          stage runs with (its tables at DESIGN.md's places under run_dir, mode=overwrite);
          `decide`: (run?, why) for one step from what its outputs' completion markers say

A step is skipped when its main output has its marker (`_summary.json`, written last by every stage),
that marker was taken over the same output-relevant keys (marker.output_hash: checkpoints and lists by
content) and the same inputs, each named with the hash of its own marker. So a stage that reran gives
its dependants a new input hash and they rerun too, along the registry's inputs, and nothing else
does: a new filter threshold reruns filter, export and index; a new hash list export and index.

tag reads `images` (every downloaded row: the embedding heads score the filter's rejects too, for the
report) and `dataset` (tag.dataset: the watermark detector classifies the rows that can be released,
not every download), so a new threshold reruns tag too; export joins the scores of the rows it
releases by sample_id.
"""

from __future__ import annotations

import dataclasses
import json
from typing import NamedTuple

from laion_spark import marker, stages

# the stages in the order they run; `index` is two steps (image, text)
ORDER = ("extract", "dedupe", "download", "embed", "filter", "tag", "export", "index", "report")
INDEX_FIELDS = ("image", "text")


class Step(NamedTuple):
    name: str  # "download", "index:image"
    stage: str  # the registry's stage
    cfg: object  # the JobConfig it runs with


def table_uris(run_dir: str) -> dict[str, str]:
    """run_dir -> where each table lives (DESIGN.md, "A run directory")."""
    root = run_dir.rstrip("/")
    names = ("candidates", "candidates_errors", "pairs", "images", "embeddings", "dataset", "dataset_rejected", "tags",
             "export", "export_removed", "report")
    uris = {name: f"{root}/{name}" for name in names}
    uris.update({f"index_{f}": f"{root}/index/{f}" for f in INDEX_FIELDS})
    uris["release"] = f"{uris['export']}/laion"
    uris["manifest"] = f"{root}/manifest.json"
    return uris


def _previous(cfg) -> str:
    """pipeline.previous (earlier run directories) + dedupe.previous (pairs tables) -> dedupe's list."""
    earlier = [f"{u.strip().rstrip('/')}/pairs" for u in cfg.pipeline.previous.split(",") if u.strip()]
    given = [u.strip() for u in cfg.dedupe.previous.split(",") if u.strip()]
    return ",".join(dict.fromkeys([*earlier, *given]))


def steps(cfg) -> list[Step]:
    """The pipeline's JobConfig -> its steps, from extract to the text index, each configured."""
    u = table_uris(cfg.output)
    base = dataclasses.replace(cfg, mode="overwrite")
    r = dataclasses.replace
    release = u["release"]  # never the dataset: nothing searchable that export did not release (prepare checks)
    out = [
        Step("extract", "extract", r(base, output=u["candidates"], extract=r(cfg.extract, errors_output=""))),
        Step("dedupe", "dedupe", r(base, input=u["candidates"], output=u["pairs"],
                                   dedupe=r(cfg.dedupe, previous=_previous(cfg)))),
        Step("download", "download", r(base, input=u["pairs"], output=u["images"])),
        Step("embed", "embed", r(base, input=u["images"], output=u["embeddings"])),
        # no filter.npy in a run: it would copy every kept row's vectors, blocklisted ones too, before
        # export applies the lists; export/emb holds the released rows' vectors in the same format
        Step("filter", "filter", r(base, input=u["images"], output=u["dataset"], filter=r(
            cfg.filter, embeddings=u["embeddings"], rejected_output="", npy_output="", npy=False))),
        # the heads score every images row (the report shows the rejects'); the watermark CNN the dataset's only
        Step("tag", "tag", r(base, input=u["images"], output=u["tags"],
                             tag=r(cfg.tag, embeddings=u["embeddings"], dataset=u["dataset"]))),
        Step("export", "export", r(base, input=u["dataset"], output=u["export"],
                                   export=r(cfg.export, format="release", tags=u["tags"], embeddings=u["embeddings"],
                                            removed_output=""))),
    ]
    for field in INDEX_FIELDS:
        out.append(Step(f"index:{field}", "index", r(base, input=u["embeddings"], output=u[f"index_{field}"],
                                                     index=r(cfg.index, dataset=release, field=field,
                                                             rejected_output=""))))
    out.append(Step("report", "report", r(base, input=cfg.output, output=u["report"])))
    return out


def check(cfg) -> None:
    """ConfigError for a pipeline that would publish what export did not release: an index needs the
    release (export.outputs with laion), and filter.npy's vectors are export's emb in a run."""
    from laion_spark.config import ConfigError

    outputs = cfg.export.outputs
    until = cfg.pipeline.until
    if outputs and "laion" not in outputs and (not until or ORDER.index(until) >= ORDER.index("index")):
        raise ConfigError(f"export.outputs={','.join(outputs)} leaves out laion, the release the index is built "
                          "from (an index of the dataset would serve blocklisted and excluded rows); add laion, or "
                          "stop before the index with pipeline.until=export")
    if cfg.filter.npy and outputs and "emb" not in outputs:
        raise ConfigError("filter.npy=true in a pipeline: the release's .npy shards are export's emb output; add emb "
                          "to export.outputs (filter.npy would also hold rows export removes)")


def selected(all_steps: list[Step], rerun_from: str, until: str) -> tuple[list[Step], set[str]]:
    """-> (the steps up to pipeline.until, the names pipeline.from forces to rerun)."""
    names = [s.stage for s in all_steps]
    last = max(i for i, n in enumerate(names) if n == until) if until else len(all_steps) - 1
    kept = all_steps[: last + 1]
    forced = set()
    if rerun_from:
        first = names.index(rerun_from)
        forced = {s.name for s in kept[first:]}
    return kept, forced


def read_marker(uri: str) -> dict | None:
    from laion_spark.io import read_json

    try:
        return read_json(marker.marker_uri(uri))
    except (FileNotFoundError, OSError, ValueError):
        return None


def _inputs_key(entries: list[dict]) -> dict:
    return {(e["key"], e["uri"]): e.get("marker", e.get("content")) for e in entries}


def _moved(done: dict, output: str, run_dir: str | None):
    """A marker written before run_dir was moved or copied (its own output under another root) -> a
    function mapping its recorded URIs under the old root to the same place under run_dir."""
    old = str((done.get("config") or {}).get("output") or "").rstrip("/")
    root = (run_dir or "").rstrip("/")
    if not root or not output.startswith(root + "/") or old == output.rstrip("/"):
        return lambda uri: uri
    rel = output.rstrip("/")[len(root):]
    if not old.endswith(rel):
        return lambda uri: uri
    old_root = old[: -len(rel)]
    return lambda uri: root + uri[len(old_root):] if uri == old_root or uri.startswith(old_root + "/") else uri


def decide(step: Step, forced: bool = False, run_dir: str | None = None) -> tuple[bool, str]:
    """A step -> (whether it runs, why), from its main output's completion marker. The run directory may
    have been moved or copied since (its markers name the old place): an input is the same table when it
    sits at the same place under run_dir."""
    from laion_spark.io import exists

    if forced:
        return True, "pipeline.from asks for it"
    entry = stages.get(step.stage)
    done = read_marker(step.cfg.output)
    if done is None:
        return True, ("incomplete: its output has no completion marker" if exists(step.cfg.output)
                      else "not run yet")
    digest, values = marker.output_hash(entry, step.cfg)
    if done.get("output_hash") != digest:
        now = json.loads(json.dumps(values, default=str))
        before = done.get("output_config", {})
        changed = sorted(k for k in {*now, *before} if now.get(k) != before.get(k))
        return True, f"config changed: {', '.join(changed) or 'its output keys'}"
    now_inputs = _inputs_key(marker.inputs_of(entry, step.cfg, warn=False))
    moved = _moved(done, step.cfg.output, run_dir)
    before_inputs = _inputs_key([{**e, "uri": moved(e["uri"])} for e in done.get("inputs", [])])
    changed = sorted({k for k in {*now_inputs, *before_inputs} if now_inputs.get(k) != before_inputs.get(k)})
    if changed:
        return True, "input changed: " + ", ".join(f"{key}={uri}" for key, uri in changed)
    return False, "complete, with the same config and inputs"
