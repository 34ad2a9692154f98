"""The plan (estimate.py's dict) -> the table `laion-spark plan` prints.

INPUT  -> the plan dict, with `json` (where it was written) when the job wrote it
OUTPUT -> text: the target and cluster, the funnel, per step core-hours / wall time / bytes, per table bytes,
          the index plans, every assumption with its source and LAION's reported figure, notes
"""

from __future__ import annotations

from laion_spark.index.plan import format_bytes


def count(x) -> str:
    """A row count -> '50.0B' / '36.0M' / '12.3K' / '136' (decimal units); '-' when unknown."""
    if x is None:
        return "-"
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.3g}{unit}"
    return f"{x:.3g}" if isinstance(x, float) and x != int(x) else f"{int(x)}"


def size(x) -> str:
    return "-" if x is None else format_bytes(x)


def hours(x) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    """Columns padded to their widest cell; the first `left` columns left-aligned, the rest right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for r in [header, *rows]:
        cells = [str(c).ljust(w) if i < left else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        out.append("  " + "  ".join(cells).rstrip())
    return out


def render(plan: dict) -> str:
    t, run, cl = plan["target"], plan["run"], plan["cluster"]
    what = {"laion5b": "LAION-5B's input as reported", "cc-snapshot": "one Common Crawl snapshot's WAT files",
            "candidates": "candidates"}[t["kind"]]
    lines = [f"plan: {t['name']} = {count(t['candidates'])} candidates ({what}), from {run['run_dir']} "
             f"({count(run['candidates'])} candidates on {run['cores']} cores)",
             f"cluster: {cl['executors']} workers x {cl['cores_per_executor']} cores = {cl['cores']} cores, "
             f"{cl['download_mbps_per_worker']:g} Mbit/s each; embed on "
             + (f"{cl['gpus']} GPUs" if cl["gpus"] else "the CPUs"), ""]

    lines.append("funnel (rows)")
    lines += _table(["rows", "this run", "at target", "x"],
                    [[r["rows"], count(r["this_run"]), count(r["at_target"]), count(r["factor"])]
                     for r in plan["funnel"]])
    lines.append("")

    lines.append("steps (core-hours = this run's wall seconds x its cores, scaled by the rows each step works on)")
    rows = []
    for s in plan["steps"]:
        wall = hours(s["wall_hours"]) + (f" ({s['bound']})" if s["bound"] != "cpu" else "")
        rows.append([s["step"], s["rows_of"] or "-", count(s["rows_per_core_second"]), count(s["target_rows"]),
                     hours(s["core_hours"]), hours(s["gpu_hours"]) if s["gpu_hours"] is not None else "",
                     wall, size(s["bytes_read"]), size(s["bytes_written"])])
    tot = plan["totals"]
    rows.append(["total", "", "", "", hours(tot["core_hours"]), hours(tot["gpu_hours"]) if tot["gpu_hours"] else "",
                 hours(tot["wall_hours"]), size(tot["bytes_read"]), size(tot["bytes_written"])])
    lines += _table(["step", "rows of", "rows/core-s", "target rows", "core-h", "GPU-h", "wall h", "read",
                     "written"], rows)
    for s in plan["steps"]:
        if s.get("laion_rate_wall_hours"):
            fast, slow = s["laion_rate_wall_hours"]
            lines.append(f"  {s['step']}: bandwidth alone {hours(s['network_hours'])} h for "
                         f"{size(s.get('bytes_fetched'))}; at LAION's reported rate (10,000 links per worker in "
                         f"10-15 min) these workers take {hours(fast)} - {hours(slow)} h")
    lines.append("")

    lines.append("tables (bytes on disk; K/M/G/T = 2^10/2^20/2^30/2^40)")
    rows = [[tb["table"] + (f" (in {tb['part_of']})" if tb["part_of"] else ""), tb["written_by"], tb["rows_of"],
             size(tb["run_bytes"]), count(tb["bytes_per_row"]), count(tb["target_rows"]), size(tb["target_bytes"])]
            for tb in plan["tables"]]
    lines += _table(["table", "written by", "rows of", "this run", "bytes/row", "target rows", "at target"], rows,
                    left=3)
    lines.append("")

    lines.append("index (index/plan.py's choice; one per field)")
    for ix in plan["index"]:
        head = f"  {ix['label']}: {count(ix['nb_vectors'])} x {ix['dimension']} under {ix['budget']}"
        if "error" in ix:
            lines.append(f"{head}: {ix['error']}")
        else:
            lines.append(f"{head}: {ix['index_key']}, {size(ix['memory_bytes'])} to search, trained on "
                         f"{count(ix['train_size'])} vectors ({size(ix['train_memory_bytes'])})")
    lines.append("")

    lines.append("assumptions")
    rows = [[a["what"], count(a["value"]) if isinstance(a["value"], int | float) else str(a["value"]),
             a["source"] + (f" [{a['key']}]" if a["key"] else ""), a["laion_reported"] or ""]
            for a in plan["assumptions"]]
    lines += _table(["what", "value", "from [key that sets it]", "LAION (reported)"], rows, left=4)
    lr = plan["laion_reported"]
    lines += ["", "LAION (reported)",
              f"  LAION-5B: ~{count(lr['candidates'])} candidates -> {count(lr['pairs'])} pairs after CLIP "
              f"filtering ({lr['keep_rate']:.1%})",
              f"  download: {lr['download']}", f"  index: {lr['index']}"]
    if plan["notes"]:
        lines += ["", "notes"] + [f"  - {n}" for n in plan["notes"]]
    if plan.get("json"):
        lines += ["", f"written: {plan['json']}"]
    return "\n".join(lines)
