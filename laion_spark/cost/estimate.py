"""What a run measured + the assumptions (plan.*) + a target -> the plan: plain arithmetic, no I/O.

INPUT  -> Measured (measured.py), PlanConfig, the cores the measured run had
OUTPUT -> a JSON-ready dict: the target, the funnel at the target, per step core-hours / wall time / bytes read
          and written, per table bytes, the index plan and its memory, every assumption with where it comes
          from, LAION's reported figures beside ours, notes

The model, stated so a reader can check it:
- The funnel: candidates -> pairs (dedupe keep rate) -> downloaded images (success rate) -> dataset (filter
  keep rate) -> released (export's keep rate); each rate is this run's unless a plan.* key sets it.
- A step's cost grows with the rows it works on (its driver: download with pairs, embed with downloaded
  images, index with released rows, ...): core-seconds per driver row in this run x the driver's rows at the
  target. Core-seconds are the step's wall seconds (less plan.step_overhead_s) x the run's cores: the
  manifest records no CPU time, so a step that waited (network, a small run's start-up) is counted busy.
- A table's bytes grow with the rows it holds: its bytes on disk x (its rows at the target / its rows here).
- Wall time on the cluster: core-hours over all its cores (perfectly spread); download takes the longer of
  that and its bytes over the workers' bandwidth; embed with GPUs takes images / (GPUs x images per second).
"""

from __future__ import annotations

import re

from laion_spark.cost.measured import Measured, PlanError
from laion_spark.index.plan import IndexPlanError, format_bytes, parse_bytes, plan_index

# LAION's figures as reported (LAION-5B, arXiv 2210.08402, and the issue that asked for this plan)
LAION5B_CANDIDATES = 50_000_000_000  # "about 50B" image-text candidates from Common Crawl
LAION5B_PAIRS = 5_850_000_000  # kept after CLIP filtering
LAION_WORKERS = 300
LAION_VCPUS = 2
LAION_MBPS = 10.0
LAION_LINKS_PER_WORKER = 10_000  # downloaded by one worker in 10 - 15 minutes
LAION_MINUTES = (10, 15)
LAION_INDEX_DIM = 768
LAION_INDEX_BYTES = "800G"  # "800 GB" for the 5.85B x 768 index

# the rows a step's work grows with, by stage (see the module docstring)
DRIVER = {"extract": "candidates", "dedupe": "candidates", "download": "pairs", "embed": "success",
          "filter": "pairs", "tag": "pairs", "export": "dataset", "index": "released"}
# the rows a table holds, by pipeline/plan.py's table name; a table not named here grows as its writer's driver
TABLE_ROWS = {"archives": "candidates", "candidates": "candidates", "candidates_errors": "candidates",
              "pairs": "pairs", "images": "pairs", "embeddings": "success", "dataset": "dataset",
              "dataset_rejected": "rejected", "tags": "pairs", "export": "released", "release": "released",
              "export_removed": "removed", "index_image": "released", "index_text": "released"}
SMALL_RUN = 10_000  # candidates: below this, fixed per-step costs dominate what is scaled
_DECIMAL = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


def parse_target(text: str) -> tuple[str, str, float | None]:
    """'laion5b' | 'cc-snapshot' | '2e9' / '500M' / '10k' / '50B' -> (file name, kind, candidates or None)."""
    t = str(text).strip().lower()
    if t in ("laion5b", "laion-5b"):
        return "laion5b", "laion5b", float(LAION5B_CANDIDATES)
    if t in ("cc-snapshot", "cc_snapshot", "ccsnapshot"):
        return "cc-snapshot", "cc-snapshot", None
    m = re.fullmatch(r"(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmbgt]?)", t)
    if not m:
        raise PlanError(f"target={text!r}: give laion5b, cc-snapshot or a number of candidates (2e9, 500M, 10k)")
    n = float(m.group(1)) * _DECIMAL[m.group(2).upper()]
    if n < 1:
        raise PlanError(f"target={text!r}: at least one candidate")
    return f"n{int(n)}", "candidates", n


def _rate(given: float, num: int | None, den: int | None, key: str) -> tuple[float | None, str]:
    if given >= 0:
        return given, f"{key} (given)"
    if num is None or not den:
        return None, "not measured by this run"
    return num / den, "this run"


def _hours(seconds: float | None) -> float | None:
    return None if seconds is None else seconds / 3600


def _round(value):
    """-> the value to 7 significant digits (a plan is an estimate; JSON need not carry float noise)."""
    return None if value is None else float(f"{value:.7g}")


def plan_for(m: Measured, p, run_cores: int) -> dict:
    """Measured + PlanConfig + the run's cores -> the plan dict (see the module docstring)."""
    name, kind, candidates_t = parse_target(p.target)
    f = m.funnel
    notes: list[str] = []
    assumptions: list[dict] = []

    def assume(what: str, value, source: str, laion: str = "", key: str = "") -> None:
        assumptions.append({"what": what, "value": value, "source": source, "laion_reported": laion, "key": key})

    # --- the target in candidates
    archives = m.tables.get("archives")
    archive_bytes_t = None
    if kind == "cc-snapshot":
        wat_bytes = parse_bytes(p.wat_file_bytes)
        archive_bytes_t = p.wat_files * wat_bytes
        assume("WAT files in one Common Crawl snapshot", p.wat_files, "assumption", key="plan.wat_files")
        assume("compressed bytes per WAT file", format_bytes(wat_bytes), "assumption", key="plan.wat_file_bytes")
        if p.candidates_per_wat_file:
            per_file = float(p.candidates_per_wat_file)
            assume("candidates per WAT file", per_file, "plan.candidates_per_wat_file (given)",
                   key="plan.candidates_per_wat_file")
        elif archives and archives.bytes and f["candidates"]:
            per_byte = f["candidates"] / archives.bytes
            per_file = per_byte * wat_bytes
            assume("candidates per WAT file", round(per_file, 1),
                   f"this run: {f['candidates']} candidates from {format_bytes(archives.bytes)} of input archives "
                   f"x plan.wat_file_bytes (a pilot on real WAT files gives the right density)",
                   key="plan.candidates_per_wat_file")
        else:
            raise PlanError("target=cc-snapshot: this run's input archives could not be measured (a *.paths.gz "
                            "input, or moved files): set plan.candidates_per_wat_file")
        candidates_t = per_file * p.wat_files
    elif kind == "laion5b":
        assume("candidates", LAION5B_CANDIDATES, "LAION (reported): about 50B image-text candidates",
               laion="~50B candidates -> 5.85B pairs", key="target")
    else:
        assume("candidates", candidates_t, "target (given)", key="target")

    # --- the funnel at the target
    dedupe, dedupe_src = _rate(p.dedupe_keep_rate, f["pairs"], f["candidates"], "plan.dedupe_keep_rate")
    success, success_src = _rate(p.download_success_rate, f["success"], f["pairs"], "plan.download_success_rate")
    keep, keep_src = _rate(p.filter_keep_rate, f["dataset"], f["success"], "plan.filter_keep_rate")
    release, release_src = _rate(-1, f["released"], f["dataset"], "")
    overall_run = f["dataset"] / f["candidates"] if f["dataset"] is not None and f["candidates"] else None
    laion_keep = LAION5B_PAIRS / LAION5B_CANDIDATES
    assume("dedupe keep rate (pairs per candidate)", _round(dedupe), dedupe_src, key="plan.dedupe_keep_rate")
    assume("download success rate (images per pair)", _round(success), success_src,
           key="plan.download_success_rate")
    assume("CLIP filter keep rate (dataset rows per image)", _round(keep), keep_src, key="plan.filter_keep_rate")
    assume("export keep rate (released per dataset row)", _round(release), release_src)
    assume("dataset rows per candidate (all of the above)", _round(overall_run), "this run",
           laion=f"{laion_keep:.4f} (5.85B of ~50B, after CLIP filtering)")

    t: dict[str, float | None] = {"candidates": candidates_t}
    t["pairs"] = None if dedupe is None else candidates_t * dedupe
    t["success"] = None if success is None or t["pairs"] is None else t["pairs"] * success
    t["dataset"] = None if keep is None or t["success"] is None else t["success"] * keep
    t["released"] = None if release is None or t["dataset"] is None else t["dataset"] * release
    t["rejected"] = None if t["pairs"] is None or t["dataset"] is None else t["pairs"] - t["dataset"]
    t["removed"] = None if t["dataset"] is None or t["released"] is None else t["dataset"] - t["released"]

    def factor(q: str) -> float | None:
        run, target = f.get(q), t.get(q)
        return None if not run or target is None else target / run

    funnel = [{"rows": q, "this_run": f.get(q), "at_target": _round(t.get(q)), "factor": _round(factor(q))}
              for q in ("candidates", "pairs", "success", "dataset", "released", "rejected", "removed")]

    # --- tables: bytes on disk -> bytes at the target
    tables = []
    target_bytes: dict[str, float | None] = {}
    for tb in m.tables.values():
        writer = m.steps.get(tb.written_by)
        q = TABLE_ROWS.get(tb.name) or (DRIVER.get(writer.stage) if writer else None) or "candidates"
        if tb.name == "archives" and archive_bytes_t is not None:
            size_t = float(archive_bytes_t)
        else:
            fq = factor(q)
            size_t = None if tb.bytes is None or fq is None else tb.bytes * fq
        target_bytes[tb.name] = size_t
        rows = f.get(q)
        tables.append({"table": tb.name, "uri": tb.uri, "written_by": tb.written_by or "(input)", "part_of": tb.part_of,
                       "rows_of": q, "run_rows": rows, "run_bytes": tb.bytes,
                       "bytes_per_row": _round(tb.bytes / rows) if tb.bytes is not None and rows else None,
                       "target_rows": _round(t.get(q)), "target_bytes": _round(size_t)})

    # --- steps
    cores = p.executors * p.cores_per_executor
    steps = []
    for s in m.steps.values():
        q = DRIVER.get(s.stage)
        rows = f.get(q) if q else None
        fq = factor(q) if q else None
        core_s = None if s.seconds is None else max(0.0, s.seconds - p.step_overhead_s) * run_cores
        core_h = None if core_s is None or fq is None else core_s * fq / 3600
        row = {"step": s.name, "stage": s.stage, "action": s.action, "rows_of": q, "run_rows": rows,
               "run_seconds": s.seconds, "run_core_seconds": _round(core_s),
               "rows_per_core_second": _round(rows / core_s) if rows and core_s else None,
               "target_rows": _round(t.get(q)) if q else None, "core_hours": _round(core_h),
               "gpu_hours": None, "bound": "cpu", "network_hours": None,
               "wall_hours": _round(core_h / cores) if core_h is not None else None,
               "reads": list(s.reads), "writes": list(s.writes),
               "bytes_read": _sum(target_bytes.get(n) for n in s.reads),
               "bytes_written": _sum(target_bytes.get(n) for n in s.writes
                                     if not (m.tables.get(n) and m.tables[n].part_of))}
        if s.stage == "download" and t["pairs"] is not None:
            per_fetch, src = (float(p.bytes_per_download), "plan.bytes_per_download (given)") if p.bytes_per_download \
                else ((m.bytes_downloaded / m.fetched, "this run: bytes_downloaded / rows fetched")
                      if m.bytes_downloaded is not None and m.fetched else (None, ""))
            if per_fetch is not None:
                assume("bytes fetched per download", round(per_fetch), src, key="plan.bytes_per_download")
                net_s = per_fetch * t["pairs"] * 8 / (p.executors * p.download_mbps_per_worker * 1e6)
                row["network_hours"] = _round(_hours(net_s))
                row["bytes_fetched"] = _round(per_fetch * t["pairs"])
                if row["wall_hours"] is None or net_s / 3600 > row["wall_hours"]:
                    row["wall_hours"], row["bound"] = _round(_hours(net_s)), "network"
            # LAION's rate on this cluster's workers: 10,000 links in 10 minutes (fast) to 15 (slow)
            per_s = [LAION_LINKS_PER_WORKER / (mins * 60) for mins in LAION_MINUTES]
            row["laion_rate_wall_hours"] = [_round(t["pairs"] / (p.executors * r) / 3600) for r in per_s]
            if rows and core_s:
                assume("images downloaded per second per core", round(rows / core_s, 3), "this run",
                       laion=f"{per_s[1]:.1f} - {per_s[0]:.1f} links/s per {LAION_VCPUS}-vCPU worker "
                             f"({LAION_LINKS_PER_WORKER:,} links in {LAION_MINUTES[0]}-{LAION_MINUTES[1]} min)")
        if s.stage == "embed":
            if rows and core_s:
                assume("images embedded per second per core (CPU)", round(rows / core_s, 3), "this run")
            if p.gpus and t["success"] is not None:
                gpu_s = t["success"] / (p.gpus * p.embed_images_per_s_per_gpu)
                row.update(gpu_hours=_round(_hours(gpu_s) * p.gpus), core_hours=None, bound="gpu",
                           wall_hours=_round(_hours(gpu_s)))
                assume("images embedded per second per GPU", p.embed_images_per_s_per_gpu, "assumption",
                       key="plan.embed_images_per_s_per_gpu")
        steps.append(row)

    # --- the index at the target
    index = _index_plans(m, p, t, kind, notes)

    # --- notes
    missing = [s for s in DRIVER if not any(st.stage == s for st in m.steps.values())]
    if missing:
        notes.append(f"not measured (no such step in the manifest): {', '.join(missing)}")
    if m.status and m.status != "complete":
        notes.append(f"the manifest's status is {m.status!r}: steps it did not finish are left out")
    if f["candidates"] is not None and f["candidates"] < SMALL_RUN:
        notes.append(f"this run had {f['candidates']} candidates: fixed costs per step (Spark jobs, model loading) "
                     "are scaled as if they were per row, so core-hours are overstated; a pilot of 100k+ "
                     "candidates, or plan.step_overhead_s, gives better figures")
    notes.append(f"core-hours = measured wall seconds x {run_cores} cores of the run (plan.run_cores), not CPU "
                 "time: the manifest records no CPU seconds")
    notes.append("index: scaled like the others; its training (train_size vectors) runs on one machine, only "
                 "adding vectors spreads over the cluster")
    if m.steps.get("report") is None:
        notes.append("report is not planned: it draws one page from counts and a few samples")

    totals = {
        "core_hours": _round(_sum(s["core_hours"] for s in steps)),
        "gpu_hours": _round(_sum(s["gpu_hours"] for s in steps)),
        "wall_hours": _round(_sum(s["wall_hours"] for s in steps)),
        "bytes_written": _round(_sum(v for n, v in target_bytes.items()
                                     if n != "archives" and not m.tables[n].part_of)),
        "bytes_read": _round(_sum(s["bytes_read"] for s in steps)),
    }
    return {
        "target": {"name": name, "kind": kind, "candidates": _round(candidates_t),
                   "archive_bytes": archive_bytes_t, "spelled": p.target},
        "run": {"run_dir": m.run_dir, "status": m.status, "cores": run_cores, "candidates": f["candidates"],
                "files": m.files},
        "cluster": {"executors": p.executors, "cores_per_executor": p.cores_per_executor, "cores": cores,
                    "gpus": p.gpus, "download_mbps_per_worker": p.download_mbps_per_worker,
                    "embed": "gpu" if p.gpus else "cpu"},
        "funnel": funnel, "steps": steps, "tables": tables, "index": index, "totals": totals,
        "assumptions": assumptions,
        "laion_reported": {
            "candidates": LAION5B_CANDIDATES, "pairs": LAION5B_PAIRS, "keep_rate": round(laion_keep, 4),
            "download": f"{LAION_WORKERS} workers x {LAION_VCPUS} vCPU x {LAION_MBPS:g} Mbit/s; "
                        f"{LAION_LINKS_PER_WORKER:,} links per worker in {LAION_MINUTES[0]}-{LAION_MINUTES[1]} min",
            "index": f"{LAION5B_PAIRS / 1e9:.2f}B x {LAION_INDEX_DIM} in 800 GB"},
        "notes": notes,
    }


def _sum(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) if vals else None


def _one_index(label: str, n: float | None, d: int | None, budget: str, why: str) -> dict:
    row = {"label": label, "nb_vectors": None if n is None else int(round(n)), "dimension": d, "budget": budget,
           "why": why}
    if not n or not d or n < 1:
        row["error"] = "no vectors or no dimension to plan for"
        return row
    try:
        plan = plan_index(int(round(n)), d, budget)
    except IndexPlanError as exc:
        row["error"] = str(exc)
        return row
    row.update(index_key=plan.key, memory_bytes=plan.memory_bytes, code_bytes=plan.code_bytes, nlist=plan.nlist,
               train_size=plan.train_size, train_memory_bytes=plan.train_memory_bytes)
    return row


def _index_plans(m: Measured, p, t: dict, kind: str, notes: list[str]) -> list[dict]:
    infos = m.index.get("image") or next(iter(m.index.values()), {})
    d = p.dimension or infos.get("dimension")
    src = "plan.dimension" if p.dimension else (f"this run's index_infos.json ({infos.get('clip_model')})"
                                                if infos else "")
    if not d:
        notes.append("index: no dimension (the run has no index_infos.json): set plan.dimension")
    out = [_one_index("at the target (released rows)", t.get("released"), d, p.index_memory,
                      f"dimension from {src or 'nowhere'}; budget plan.index_memory")]
    if kind == "laion5b" and d:
        out.append(_one_index("LAION-5B's reported 5.85B pairs, this run's dimension", LAION5B_PAIRS, d,
                              p.index_memory, "n as LAION reported"))
    out.append(_one_index("LAION-5B's reported index: 5.85B x 768 (800 GB reported)", LAION5B_PAIRS, LAION_INDEX_DIM,
                          p.index_memory, "this planner beside LAION's reported size"))
    fields = sorted(m.index) or ["image"]
    for row in out:
        row["indices"] = len(fields)  # one per field (image, text), each this size
    return out
