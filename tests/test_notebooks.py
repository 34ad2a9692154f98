"""The Databricks notebooks (notebooks/*.py, source format) run on the local session, as a notebook would.

INPUT  -> a notebook's source, split into cells at `# COMMAND ----------`; the `%md` cells are skipped
OUTPUT -> the cells run in order in one namespace that holds `spark` (the session-scoped local[2]
          fixture) and a `display` that records what it is shown; right after the cell titled
          Parameters (`# DBTITLE 1,Parameters`) the test assigns its own values, the way papermill
          injects parameters, so the notebook runs on generated inputs under tmp_path

Expectations come from the inputs, not from the library: the demo crawl's page specs (which pairs
LAION's rules keep, tests/test_demo.py's `kept_images`), what the demo image server answers for each
URL (`answer_kind`), and whether an alt text is its toy scene's caption (the scene drawn again from
the URL with the toy world).
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import DataFrame

from laion_spark import schemas as S

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
HEADER = "# Databricks notebook source"
SEPARATOR = "# COMMAND ----------"
PARAMETERS = "# DBTITLE 1,Parameters"


# --- running a notebook ----------------------------------------------------------------------------


def notebook_cells(path: Path) -> list[str]:
    """Source-format notebook -> its cells' text, in order (the header line dropped)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines and lines[0] == HEADER, f"{path.name} is not a Databricks source notebook"
    cells, current = [], []
    for line in lines[1:]:
        if line == SEPARATOR:
            cells.append("\n".join(current).strip("\n"))
            current = []
        else:
            current.append(line)
    cells.append("\n".join(current).strip("\n"))
    return cells


def magic_of(cell: str) -> str | None:
    """A cell -> its magic command ('%md', '%sql', ...) when it is a `# MAGIC` cell, else None."""
    lines = [line for line in cell.splitlines() if line.strip() and not line.startswith("# DBTITLE")]
    if not lines or not all(line.startswith("# MAGIC") for line in lines):
        return None
    return lines[0][len("# MAGIC"):].split()[0]


def code_cells(path: Path) -> list[str]:
    """The Python cells of a notebook; a magic other than %md cannot run here, so it is an error."""
    cells = []
    for cell in notebook_cells(path):
        magic = magic_of(cell)
        if magic is None:
            cells.append(cell)
        else:
            assert magic == "%md", f"{path.name}: a {magic} cell cannot run outside Databricks"
    return cells


@dataclass
class Shown:
    """One display() call: the object, and for a DataFrame its columns and collected rows."""

    value: object
    columns: list[str] | None = None
    rows: list | None = None


class Display:
    """The notebook global `display`: records each call (a DataFrame is collected, as Databricks shows it)."""

    def __init__(self):
        self.calls: list[Shown] = []

    def __call__(self, value, *args, **kwargs):
        if isinstance(value, DataFrame):
            self.calls.append(Shown(value, value.columns, value.collect()))
        else:
            self.calls.append(Shown(value))


def run_notebook(name: str, spark, parameters: dict) -> tuple[dict, list[Shown]]:
    """notebooks/<name> + the test's parameter values -> (the notebook's namespace, its display calls)."""
    path = NOTEBOOKS / name
    cells = code_cells(path)
    titled = [i for i, cell in enumerate(cells) if cell.startswith(PARAMETERS)]
    assert len(titled) == 1, f"{name}: one cell titled Parameters expected, found {len(titled)}"
    display = Display()
    namespace: dict = {"__name__": "__main__", "spark": spark, "display": display}
    for i, cell in enumerate(cells):
        exec(compile(cell, f"{name} (code cell {i + 1})", "exec"), namespace)
        if i == titled[0]:
            unknown = sorted(set(parameters) - set(namespace))
            assert not unknown, f"{name}: the Parameters cell has no {unknown}"
            namespace.update(parameters)
    return namespace, display.calls


def test_every_notebook_has_one_parameters_cell_of_plain_assignments():
    notebooks = sorted(NOTEBOOKS.glob("*.py"))
    assert {p.name for p in notebooks} >= {"extract_dedupe.py", "download_embed_filter.py"}
    for path in notebooks:
        cells = code_cells(path)
        for i, cell in enumerate(cells):
            compile(cell, f"{path.name} (code cell {i + 1})", "exec")
        parameters = [cell for cell in cells if cell.startswith(PARAMETERS)]
        assert len(parameters) == 1, path.name
        # values assigned after the cell replace these names; a value computed from another
        # parameter, or any other statement, would keep the notebook's default instead
        statements = ast.parse(parameters[0]).body
        assert statements, f"{path.name}: the parameters cell sets nothing"
        for stmt in statements:
            assert isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets), (
                path.name, ast.unparse(stmt))
            assert not any(isinstance(node, ast.Name) for node in ast.walk(stmt.value)), (path.name, ast.unparse(stmt))


# --- extract_dedupe ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_extract_dedupe_notebook_writes_the_pairs_of_the_crawl(spark, tmp_path):
    from laion_spark.demo.crawl import TRUNCATED_FILE, WARC_FILES, crawl_plan, write_demo_crawl
    from laion_spark.io import read_table
    from tests.test_demo import kept_images

    crawl = tmp_path / "crawl"
    write_demo_crawl(str(crawl), seed=3)
    pairs_uri, errors_uri = str(tmp_path / "pairs"), str(tmp_path / "extract_errors")
    _, shown = run_notebook("extract_dedupe.py", spark, {
        "overrides": [f"input={crawl}/*.warc.gz", f"output={pairs_uri}", f"extract.errors_output={errors_uri}"],
        "max_files": None,
    })

    # every (url, alt) that LAION's rules keep on a page of the WARC files, once
    plan = crawl_plan(seed=3)
    expected = {pair for name in WARC_FILES for page in plan[name] if page.is_html for pair in kept_images(page)}
    pairs = read_table(spark, pairs_uri, S.PAIRS).collect()
    assert Counter((r[S.URL], r[S.TEXT]) for r in pairs) == Counter(dict.fromkeys(expected, 1))
    assert len({r[S.SAMPLE_ID] for r in pairs}) == len(pairs)
    # the cut file gives error rows, and only it
    errors = read_table(spark, errors_uri, S.EXTRACT_ERRORS).collect()
    assert errors and {Path(r[S.SOURCE_URI]).name for r in errors} == {TRUNCATED_FILE}

    # display: 20 of the pairs, then the errors
    assert len(shown) == 2
    assert shown[0].columns == S.PAIRS.fieldNames() and len(shown[0].rows) == min(20, len(pairs))
    assert {tuple(r) for r in shown[0].rows} <= {tuple(r) for r in pairs}
    assert shown[1].columns == S.EXTRACT_ERRORS.fieldNames() and Counter(shown[1].rows) == Counter(errors)


# --- download_embed_filter ---------------------------------------------------------------------------

TOY_URL = re.compile(r"^http://toys\.example\.com/toy/(\d+)/(\d+)\.png$")
# what the demo image server answers -> the images row's status (a download that works as specified)
STATUS_OF_ANSWER = {"image": "success", "toy": "success", "404": "http_error", "503": "http_error",
                    "html": "not_image", "tiny": "too_small"}


def other_urls() -> list[str]:
    """Image URLs off the toy shop: one per kind of answer of the demo image server, and an https URL
    (the demo has no TLS server: the connection is refused)."""
    from laion_spark.demo.images import answer_kind

    by_kind: dict[str, str] = {}
    for i in range(1000):
        by_kind.setdefault(answer_kind("photos.example.net", f"/p/{i}.jpg"), f"http://photos.example.net/p/{i}.jpg")
    assert set(by_kind) == {"image", "404", "503", "html", "tiny"}
    return [*sorted(by_kind.values()), "https://photos.example.net/p/secure.jpg"]


def expected_status(url: str) -> str:
    from urllib.parse import urlsplit

    from laion_spark.demo.images import answer_kind

    parts = urlsplit(url)
    if parts.scheme == "https":
        return "connect_error"
    return STATUS_OF_ANSWER[answer_kind(parts.hostname, parts.path)]


def write_pairs(spark, uri: str) -> list[tuple[str, str]]:
    """A pairs table of the toy shop's images (true and one-attribute mismatched alt texts) and a few
    other URLs -> its (url, text) rows."""
    from datetime import UTC, datetime

    from laion_spark.demo.toyshop import toy_images

    rows = [(toy.url, toy.alt) for toy in toy_images(seed=0)]
    rows += [(url, "A photograph of a harbour at dawn with fishing boats") for url in other_urls()]
    when = datetime(2024, 5, 18, tzinfo=UTC)
    table = [(i + 1, url, text, "http://shop.example/", "en", 0.99, None, when, "crawl.warc.gz", 100 * i, 100)
             for i, (url, text) in enumerate(rows)]
    spark.createDataFrame(table, S.PAIRS).coalesce(1).write.parquet(uri)
    return rows


def toy_caption_is_true(url: str, text: str) -> bool | None:
    """A toy-shop URL + its alt -> whether the alt is the caption of the scene the URL names (the scene
    drawn again with the toy world); None for any other URL."""
    from laion_spark.toy import world

    match = TOY_URL.match(url)
    return None if match is None else world.sample(int(match[1]), int(match[2])).caption == text


@pytest.mark.slow
def test_download_embed_filter_notebook_keeps_true_captions_and_rejects_the_rest(spark, tmp_path):
    from laion_spark.demo.images import DemoImageServer
    from laion_spark.embed.job import ARROW_BATCH_CONF
    from laion_spark.toy.train import ensure_checkpoint

    pairs_uri, run_uri = str(tmp_path / "pairs"), str(tmp_path / "run")
    pairs = write_pairs(spark, pairs_uri)
    checkpoint = ensure_checkpoint()  # the committed toy CLIP
    threshold = json.loads(Path(checkpoint.checkpoint).with_suffix(".json").read_text())["validation"]["threshold"]
    arrow_batch_before = spark.conf.get(ARROW_BATCH_CONF, None)
    with DemoImageServer() as server:
        _, shown = run_notebook("download_embed_filter.py", spark, {
            "pairs_uri": pairs_uri,
            "run_uri": run_uri,
            "overrides": [
                f"embed.model={checkpoint.model}", f"embed.pretrained={checkpoint.checkpoint}",
                f"embed.model_config={checkpoint.model_config}", "embed.device=cpu",
                *(f"filter.threshold.{group}={threshold}" for group in S.LANGUAGE_GROUPS),
                # every http URL goes to the image server, https to a refused port: nothing leaves 127.0.0.1
                "download.allowed_networks=127.0.0.1/32",
                f"download.connect_to=*:80=127.0.0.1:{server.port},*:443=127.0.0.1:{server.closed_port}",
                "download.retry_backoff_s=0.05",
            ],
            "shown_rows": 5,
        })
    assert spark.conf.get(ARROW_BATCH_CONF, None) == arrow_batch_before  # the notebook leaves the session as it was

    images = spark.read.parquet(f"{run_uri}/images").collect()
    dataset = {r[S.SAMPLE_ID]: r for r in spark.read.parquet(f"{run_uri}/dataset").collect()}
    rejected = {r[S.SAMPLE_ID]: r for r in spark.read.parquet(f"{run_uri}/dataset_rejected").collect()}

    # download: one images row per pair, each with the status the server's answer implies
    assert sorted((r[S.URL], r[S.TEXT]) for r in images) == sorted(pairs)
    for row in images:
        assert row[S.STATUS] == expected_status(row[S.URL]), (row[S.URL], row[S.ERROR_MESSAGE])

    # filter: every images row in exactly one table; failures rejected with their status
    assert len(images) == len(dataset) + len(rejected) and not set(dataset) & set(rejected)
    assert set(dataset) | set(rejected) == {r[S.SAMPLE_ID] for r in images}
    assert any(row[S.STATUS] != "success" for row in images)  # the loop below has failures to check
    for row in images:
        if row[S.STATUS] != "success":
            assert rejected[row[S.SAMPLE_ID]][S.REASON] == f"download_failed:{row[S.STATUS]}"
    assert all(r[S.SIMILARITY] >= np.float32(threshold) for r in dataset.values())

    # the toy shop: true captions kept, one-attribute mismatches rejected as below_threshold
    truth = {r[S.SAMPLE_ID]: toy_caption_is_true(r[S.URL], r[S.TEXT]) for r in images}
    true_ids = [i for i, true in truth.items() if true]
    wrong_ids = [i for i, true in truth.items() if true is False]
    assert len(true_ids) + len(wrong_ids) == 40 and wrong_ids
    kept_true = sum(i in dataset for i in true_ids)
    dropped_wrong = sum(i in rejected and rejected[i][S.REASON] == "below_threshold" for i in wrong_ids)
    assert kept_true >= 0.9 * len(true_ids), (kept_true, len(true_ids))
    assert dropped_wrong >= 0.9 * len(wrong_ids), (dropped_wrong, len(wrong_ids))

    # display: the download statuses, the kept rows of highest similarity, the rejected rows per reason
    assert len(shown) == 3
    statuses, best, reasons = shown
    assert statuses.columns == [S.STATUS, "count"]
    assert dict(statuses.rows) == dict(Counter(expected_status(url) for url, _ in pairs))
    assert best.columns == [S.URL, S.TEXT, S.SIMILARITY, "width", "height", S.CLIP_MODEL]
    assert len(best.rows) == min(5, len(dataset))
    similarities = sorted((r[S.SIMILARITY] for r in dataset.values()), reverse=True)
    assert [r[S.SIMILARITY] for r in best.rows] == similarities[:5]
    assert all((r[S.URL], r[S.TEXT]) in {(d[S.URL], d[S.TEXT]) for d in dataset.values()} for r in best.rows)
    assert reasons.columns == [S.REASON, "count"]
    assert dict(reasons.rows) == dict(Counter(r[S.REASON] for r in rejected.values()))
    failed = [expected_status(url) for url, _ in pairs if expected_status(url) != "success"]
    failures = Counter(f"download_failed:{status}" for status in failed)
    assert {k: v for k, v in dict(reasons.rows).items() if k.startswith("download_failed:")} == failures


@pytest.mark.slow
def test_pipeline_notebook_runs_every_stage_and_shows_the_steps(spark, tmp_path):
    # the whole pipeline on the demo crawl from the notebook; the pairs are the crawl's own (its page
    # specs), the release is the dataset, and the steps table is the manifest's
    from laion_spark.demo.crawl import write_demo_crawl
    from laion_spark.demo.images import DemoImageServer
    from laion_spark.demo.job import toy_threshold
    from laion_spark.toy.heads import ensure_heads
    from laion_spark.toy.train import ensure_checkpoint
    from tests.test_demo import expected_candidates

    files = write_demo_crawl(str(tmp_path / "crawl"), seed=0)
    checkpoint, heads = ensure_checkpoint(), ensure_heads()
    threshold = toy_threshold(checkpoint)
    run_dir = tmp_path / "run"
    with DemoImageServer() as server:
        _, shown = run_notebook("pipeline.py", spark, {"overrides": [
            f"input={','.join(files)}", f"run_dir={run_dir}", "download.allowed_networks=127.0.0.1/32",
            f"download.connect_to=*:80=127.0.0.1:{server.port},*:443=127.0.0.1:{server.closed_port}",
            f"embed.model={checkpoint.model}", f"embed.pretrained={checkpoint.checkpoint}",
            f"embed.model_config={checkpoint.model_config}", "index.candidates=1", *heads.overrides(),
            *(f"filter.threshold.{g}={threshold}" for g in S.LANGUAGE_GROUPS)]})
    pairs = spark.read.parquet(str(run_dir / "pairs")).collect()
    assert sorted((r[S.URL], r[S.TEXT]) for r in pairs) == sorted({(u, t) for u, t, _ in expected_candidates(0)})
    dataset = sorted(r[S.SAMPLE_ID] for r in spark.read.parquet(str(run_dir / "dataset")).collect())
    steps, release = shown
    assert [r["step"] for r in steps.rows] == ["extract", "dedupe", "download", "embed", "filter", "tag", "export",
                                               "index:image", "index:text", "report"]
    assert {r["action"] for r in steps.rows} == {"run"}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [json.loads(r["counts"]) for r in steps.rows] == [s["counts"] for s in manifest["steps"]]
    assert release.columns[:3] == ["SAMPLE_ID", "URL", "TEXT"]
    released = sorted(r["SAMPLE_ID"] for r in spark.read.parquet(str(run_dir / "export" / "laion")).collect())
    assert released == dataset and len(release.rows) == min(20, len(dataset))
