"""The report job: a run directory -> run_dir/report/ (index.html, plots/*.png, samples/*.jpg).

INPUT  -> JobConfig with input (the run directory, `run_dir=`) and output (default <run_dir>/report)
OUTPUT -> the report folder, written afresh each time (it only describes the tables), and a summary:
          the funnel's rows per table and the files written
"""

from __future__ import annotations

import io
import logging

from laion_spark.config import ConfigError

log = logging.getLogger(__name__)

RESUMES = True  # the report describes a run; it is rewritten whole each time, not an error to redo
THUMBNAIL = 200
SAMPLE_KINDS = ("kept", "rejected")


def thumbnail_name(kind: str, sample_id: int) -> str:
    """A sample's kind (kept / rejected) and id -> its thumbnail's path in the report folder."""
    return f"samples/{kind}_{int(sample_id) & 0xFFFFFFFFFFFFFFFF:016x}.jpg"


def default_output(cfg) -> str:
    return cfg.input.rstrip("/") + "/report"


def prepare(cfg) -> None:
    from laion_spark.io import exists

    if not exists(cfg.input):
        raise ConfigError(f"run_dir not found: {cfg.input}")


def _thumbnail(data: bytes) -> bytes | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.thumbnail((THUMBNAIL, THUMBNAIL))
            out = io.BytesIO()
            im.convert("RGB").save(out, "JPEG", quality=85)
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def run(spark, cfg) -> dict:
    import fsspec

    from laion_spark.io import fsspec_uri
    from laion_spark.report import data as D
    from laion_spark.report import page, plots

    gathered = D.gather(spark, cfg.input, cfg.report.samples)
    fs, folder = fsspec.core.url_to_fs(fsspec_uri(cfg.output))
    if fs.exists(folder):
        fs.rm(folder, recursive=True)
    fs.makedirs(f"{folder}/plots", exist_ok=True)
    fs.makedirs(f"{folder}/samples", exist_ok=True)
    files = {}
    for name, png in plots.draw(gathered).items():
        with fs.open(f"{folder}/plots/{name}.png", "wb") as fh:
            fh.write(png)
        files[name] = f"plots/{name}.png"
    thumbs = {}
    for kind in SAMPLE_KINDS:
        for row in gathered.get(kind) or []:
            jpeg = _thumbnail(row["image"])
            if jpeg is not None:
                name = thumbnail_name(kind, row["sample_id"])
                with fs.open(f"{folder}/{name}", "wb") as fh:
                    fh.write(jpeg)
                thumbs[f"{kind}:{row['sample_id']}"] = name
    with fs.open(f"{folder}/index.html", "w", encoding="utf-8") as fh:
        fh.write(page.render(gathered, files, thumbs))
    funnel = {s["table"]: s["rows"] for s in gathered["funnel"]}
    log.info("report: %s/index.html (%d plots, %d thumbnails)", cfg.output, len(files), len(thumbs))
    return {"report": cfg.output.rstrip("/") + "/index.html", "funnel": funnel, "plots": sorted(files),
            "thumbnails": len(thumbs)}


def remove_samples(report_uri: str, sample_ids) -> list[dict]:
    """A written report folder + sample_ids -> their thumbnails (samples/*.jpg) deleted and index.html
    rewritten without their cards (caption and image), the other files untouched byte for byte ->
    [{"file", "removed"}] per file changed (a thumbnail deleted: removed 1; the page: the cards it lost).
    No Spark. The plots and the funnel are counts over every row: they show no row of their own."""
    import fsspec

    from laion_spark.io import fsspec_uri
    from laion_spark.report import page
    from laion_spark.takedown.rewrite import _replace

    ids = {int(i) for i in sample_ids}
    fs, folder = fsspec.core.url_to_fs(fsspec_uri(report_uri))
    folder = folder.rstrip("/")
    done: list[dict] = []
    if not ids or not fs.isdir(folder):
        return done
    for sample_id in sorted(ids):
        for kind in SAMPLE_KINDS:
            path = f"{folder}/{thumbnail_name(kind, sample_id)}"
            if fs.exists(path):
                fs.rm(path)
                done.append({"file": path, "removed": 1})
    index = f"{folder}/index.html"
    if fs.exists(index):
        with fs.open(index, "r", encoding="utf-8") as fh:
            html = fh.read()
        thumbs = {thumbnail_name(kind, i) for i in ids for kind in SAMPLE_KINDS}
        rewritten, removed = page.without_samples(html, ids, thumbs)
        if removed:
            _replace(fs, index, rewritten.encode("utf-8"))
            done.append({"file": index, "removed": removed})
    return done


def format_report(summary: dict) -> str:
    lines = [f"report: {summary['report']} ({len(summary['plots'])} plots, {summary['thumbnails']} thumbnails)"]
    lines += [f"  {table:<16} {rows}" for table, rows in summary["funnel"].items()]
    return "\n".join(lines)
