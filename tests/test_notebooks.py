"""The Databricks notebooks (notebooks/*.py, source format) run on the local session, as a notebook would.

INPUT  -> a notebook's source, split into cells at `# COMMAND ----------`; the `%md` cells are skipped
OUTPUT -> the cells run in order in one namespace that holds `spark` (the session-scoped local[2]
          fixture), a `display` that records what it is shown, and a minimal `dbutils` whose widgets
          behave as on a Databricks job run: the test's values (a job's base_parameters) replace the
          defaults the notebook declares, and reading a widget no cell declared raises; so the notebook
          runs on generated inputs under tmp_path

Expectations come from the inputs, not from the library: the demo crawl's page specs (which pairs
LAION's rules keep, tests/test_demo.py's `kept_images`), what the demo image server answers for each
URL (`answer_kind`), whether an alt text is its toy scene's caption (the scene drawn again from
the URL with the toy world), and for the stage notebooks (tag, export, index, search, report,
takedown) the tables of one pipeline run, shared by the tests of this module, read back and counted
here.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
import traceback
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
STAGE_NOTEBOOKS = {"extract_dedupe.py", "download_embed_filter.py", "pipeline.py", "tag.py", "export.py", "index.py",
                   "search.py", "report.py", "takedown.py"}


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


class InputWidgetNotDefined(Exception):
    """What Databricks raises (com.databricks.dbutils_v1.InputWidgetNotDefined) on dbutils.widgets.get of a
    widget that no cell declared."""


class Widgets:
    """`dbutils.widgets`, as a job run has it: the run's parameters (strings, as a job's base_parameters)
    are the values of the widgets the notebook declares, in place of their defaults; a widget without
    one keeps its default. get() of a widget not declared raises, even one with a parameter (a job run
    would read it, but the notebook run by hand would not: every widget read must be declared)."""

    def __init__(self, parameters: dict[str, str]):
        for name, value in parameters.items():
            assert isinstance(name, str) and isinstance(value, str), f"job parameters are strings: {name}={value!r}"
        self.parameters = dict(parameters)
        self.values: dict[str, str] = {}
        self.kinds: dict[str, str] = {}  # name -> text, dropdown or combobox

    def _declare(self, kind: str, name, default, label, choices=None) -> None:
        if not all(isinstance(v, str) for v in (name, default, *([] if label is None else [label]))):
            raise TypeError(f"dbutils.widgets.{kind}: name, defaultValue and label are strings, got "
                            f"{name!r}, {default!r}, {label!r}")
        if choices is not None:
            choices = list(choices)
            if not choices or not all(isinstance(c, str) for c in choices):
                raise TypeError(f"dbutils.widgets.{kind}({name!r}): choices are a non-empty list of strings")
            if kind == "dropdown" and default not in choices:
                raise ValueError(f"dbutils.widgets.dropdown({name!r}): default {default!r} is not one of {choices}")
        if name in self.values:  # declared again (its cell run twice): the widget keeps its value
            return
        value = self.parameters.get(name, default)
        if kind == "dropdown" and value not in choices:
            raise ValueError(f"widget {name}: {value!r} is not one of its choices {choices}")
        self.values[name], self.kinds[name] = value, kind

    def text(self, name, defaultValue, label=None):  # Databricks' argument names
        self._declare("text", name, defaultValue, label)

    def dropdown(self, name, defaultValue, choices, label=None):
        self._declare("dropdown", name, defaultValue, label, choices)

    def combobox(self, name, defaultValue, choices, label=None):
        self._declare("combobox", name, defaultValue, label, choices)

    def get(self, name) -> str:
        if name not in self.values:
            raise InputWidgetNotDefined(f"No input widget named {name} is defined")
        return self.values[name]

    def getAll(self) -> dict[str, str]:
        return dict(self.values)

    def remove(self, name) -> None:
        if name not in self.values:
            raise InputWidgetNotDefined(f"No input widget named {name} is defined")
        del self.values[name], self.kinds[name]

    def removeAll(self) -> None:
        self.values.clear()
        self.kinds.clear()


class DBUtils:
    """The notebook global `dbutils`, its widgets only."""

    def __init__(self, parameters: dict[str, str]):
        self.widgets = Widgets(parameters)


def run_notebook(name: str, spark, widgets: dict[str, str] | None = None) -> tuple[dict, list[Shown]]:
    """notebooks/<name> + the job's widget values -> (the notebook's namespace, its display calls)."""
    path = NOTEBOOKS / name
    cells = code_cells(path)
    titled = [i for i, cell in enumerate(cells) if cell.startswith(PARAMETERS)]
    assert len(titled) == 1, f"{name}: one cell titled Parameters expected, found {len(titled)}"
    display, dbutils = Display(), DBUtils(widgets or {})
    namespace: dict = {"__name__": "__main__", "spark": spark, "display": display, "dbutils": dbutils}
    for i, cell in enumerate(cells):
        exec(compile(cell, f"{name} (code cell {i + 1})", "exec"), namespace)
        if i == titled[0]:  # a parameter of no widget would be ignored by the notebook
            unknown = sorted(set(widgets or {}) - set(dbutils.widgets.kinds))
            assert not unknown, f"{name}: the Parameters cell declares no widget {unknown}"
    return namespace, display.calls


DECLARE = {"text", "dropdown", "combobox"}


def widget_calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    """A cell's syntax tree -> (method, call) of each `dbutils.widgets.<method>(...)` in it."""
    out = []
    for node in ast.walk(tree):
        f = getattr(node, "func", None)
        if (isinstance(node, ast.Call) and isinstance(f, ast.Attribute) and isinstance(f.value, ast.Attribute)
                and f.value.attr == "widgets" and isinstance(f.value.value, ast.Name)
                and f.value.value.id == "dbutils"):
            out.append((f.attr, node))
    return out


def test_every_notebook_declares_its_widgets_in_the_parameters_cell_and_reads_only_those():
    notebooks = sorted(NOTEBOOKS.glob("*.py"))
    assert {p.name for p in notebooks} >= STAGE_NOTEBOOKS
    for path in notebooks:
        cells = code_cells(path)
        trees = [ast.parse(cell, f"{path.name} (code cell {i + 1})") for i, cell in enumerate(cells)]
        titled = [i for i, cell in enumerate(cells) if cell.startswith(PARAMETERS)]
        assert len(titled) == 1, path.name
        # the Parameters cell declares widgets and does nothing else
        for stmt in trees[titled[0]].body:
            calls = widget_calls(stmt)
            assert isinstance(stmt, ast.Expr) and calls and calls[0][1] is stmt.value, (path.name, ast.unparse(stmt))
        declared: dict[str, str] = {}
        read: set[str] = set()
        for i, tree in enumerate(trees):
            for method, call in widget_calls(tree):
                where = (path.name, f"code cell {i + 1}", ast.unparse(call))
                # a widget is named by a literal, so this test (and a reader) sees which ones the notebook uses
                first = call.args[0] if call.args else None
                assert isinstance(first, ast.Constant) and isinstance(first.value, str), where
                name = first.value
                if method in DECLARE:
                    assert i == titled[0] and name not in declared, where
                    declared[name] = method
                elif method == "get":
                    assert i > titled[0], where  # read after the widgets exist
                    read.add(name)
                else:  # removing widgets would drop a job's parameters
                    raise AssertionError(f"{where}: dbutils.widgets.{method}")
        assert "overrides" in declared, path.name
        assert read <= set(declared), f"{path.name} reads undeclared widgets {sorted(read - set(declared))}"
        assert set(declared) <= read, f"{path.name} declares widgets it never reads {sorted(set(declared) - read)}"


def test_the_widget_stand_in_behaves_as_databricks():
    widgets = DBUtils({"a": "given"}).widgets
    with pytest.raises(InputWidgetNotDefined, match="No input widget named a is defined"):
        widgets.get("a")  # a parameter alone is not a widget
    widgets.text("a", "default", "A")
    widgets.text("b", "default", "B")
    widgets.dropdown("c", "x", ["x", "y"], "C")
    widgets.combobox("d", "free", ["x"], "D")
    widgets.text("a", "another default")  # declared again: keeps its value
    assert widgets.getAll() == {"a": "given", "b": "default", "c": "x", "d": "free"}
    with pytest.raises(ValueError, match="not one of"):
        widgets.dropdown("e", "z", ["x", "y"])
    with pytest.raises(ValueError, match="not one of"):
        DBUtils({"c": "z"}).widgets.dropdown("c", "x", ["x", "y"])
    with pytest.raises(TypeError):
        widgets.text("f", 3)
    widgets.removeAll()
    with pytest.raises(InputWidgetNotDefined):
        widgets.get("b")


# the widgets whose emptiness is an error, per notebook
REQUIRED_WIDGETS = {
    "extract_dedupe.py": ("input", "output"),
    "download_embed_filter.py": ("input", "run_dir"),
    "pipeline.py": ("input", "run_dir"),
    "tag.py": ("input", "embeddings", "output"),
    "export.py": ("input", "output"),
    "index.py": ("input", "output"),
    "search.py": ("input",),
    "report.py": ("run_dir",),
    "takedown.py": ("run_dir", "list"),
}


def test_the_required_widgets_cover_every_notebook():
    assert set(REQUIRED_WIDGETS) == {p.name for p in NOTEBOOKS.glob("*.py")}


@pytest.mark.parametrize(("name", "widget"), [(n, w) for n, ws in REQUIRED_WIDGETS.items() for w in ws])
def test_a_notebook_with_an_empty_required_widget_fails_naming_it_before_any_work(spark, name, widget):
    # the other widgets keep their defaults (dbfs:/ and s3:// locations this machine cannot read): the
    # error must come from the cell right after the Parameters cell, before anything is read
    with pytest.raises(ValueError, match=rf"(^|\W){widget}(\W|$)") as raised:
        run_notebook(name, spark, {widget: ""})
    cells = code_cells(NOTEBOOKS / name)
    parameters = next(i for i, cell in enumerate(cells) if cell.startswith(PARAMETERS))
    failed = {frame.filename for frame in traceback.extract_tb(raised.tb) if frame.filename.startswith(name)}
    assert failed == {f"{name} (code cell {parameters + 2})"}, (failed, str(raised.value))


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
        "input": f"{crawl}/*.warc.gz", "output": pairs_uri, "max_files": "",
        "overrides": shlex.join([f"extract.errors_output={errors_uri}"]),
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
            "input": pairs_uri,
            "run_dir": run_uri,
            "model": checkpoint.model,
            "pretrained": checkpoint.checkpoint,
            "device": "cpu",
            "overrides": shlex.join([
                f"embed.model_config={checkpoint.model_config}",
                *(f"filter.threshold.{group}={threshold}" for group in S.LANGUAGE_GROUPS),
                # every http URL goes to the image server, https to a refused port: nothing leaves 127.0.0.1
                "download.allowed_networks=127.0.0.1/32",
                f"download.connect_to=*:80=127.0.0.1:{server.port},*:443=127.0.0.1:{server.closed_port}",
                "download.retry_backoff_s=0.05",
            ]),
            "shown_rows": "5",
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


# --- pipeline, and the stage notebooks on its run --------------------------------------------------------


@dataclass
class PipelineRun:
    """The pipeline notebook's run of the demo crawl: its run directory, display calls and toy models."""

    run_dir: Path
    files: list[str]
    shown: list[Shown]
    heads: object  # laion_spark.toy.heads' heads: their tag overrides


@pytest.fixture(scope="module")
def pipeline_run(spark, tmp_path_factory) -> PipelineRun:
    """The whole pipeline on the demo crawl, run once from the notebook; the stage notebooks' tests read
    its tables (never write them: each writes under its own tmp_path, or into a copy)."""
    from laion_spark.demo.crawl import write_demo_crawl
    from laion_spark.demo.images import DemoImageServer
    from laion_spark.demo.job import toy_threshold
    from laion_spark.toy.heads import ensure_heads
    from laion_spark.toy.train import ensure_checkpoint

    root = tmp_path_factory.mktemp("pipeline_notebook")
    files = write_demo_crawl(str(root / "crawl"), seed=0)
    checkpoint, heads = ensure_checkpoint(), ensure_heads()
    threshold = toy_threshold(checkpoint)
    run_dir = root / "run"
    with DemoImageServer() as server:
        _, shown = run_notebook("pipeline.py", spark, {
            "input": ",".join(files), "run_dir": str(run_dir),
            "overrides": shlex.join([
                "download.allowed_networks=127.0.0.1/32",
                f"download.connect_to=*:80=127.0.0.1:{server.port},*:443=127.0.0.1:{server.closed_port}",
                f"embed.model={checkpoint.model}", f"embed.pretrained={checkpoint.checkpoint}",
                f"embed.model_config={checkpoint.model_config}", "index.candidates=1", *heads.overrides(),
                *(f"filter.threshold.{g}={threshold}" for g in S.LANGUAGE_GROUPS)])})
    return PipelineRun(run_dir, files, shown, heads)


@pytest.mark.slow
def test_pipeline_notebook_runs_every_stage_and_shows_the_steps(spark, pipeline_run):
    # the whole pipeline on the demo crawl from the notebook; the pairs are the crawl's own (its page
    # specs), the release is the dataset, and the steps table is the manifest's
    from tests.test_demo import expected_candidates

    run_dir = pipeline_run.run_dir
    pairs = spark.read.parquet(str(run_dir / "pairs")).collect()
    assert sorted((r[S.URL], r[S.TEXT]) for r in pairs) == sorted({(u, t) for u, t, _ in expected_candidates(0)})
    dataset = sorted(r[S.SAMPLE_ID] for r in spark.read.parquet(str(run_dir / "dataset")).collect())
    steps, release = pipeline_run.shown
    assert [r["step"] for r in steps.rows] == ["extract", "dedupe", "download", "embed", "filter", "tag", "export",
                                               "index:image", "index:text", "report"]
    assert {r["action"] for r in steps.rows} == {"run"}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [json.loads(r["counts"]) for r in steps.rows] == [s["counts"] for s in manifest["steps"]]
    assert release.columns[:3] == ["SAMPLE_ID", "URL", "TEXT"]
    released = sorted(r["SAMPLE_ID"] for r in spark.read.parquet(str(run_dir / "export" / "laion")).collect())
    assert released == dataset and len(release.rows) == min(20, len(dataset))


def read_rows(spark, uri) -> list:
    return spark.read.parquet(str(uri)).collect()


def index_ntotal(folder: Path) -> int:
    """An index folder -> the vectors its faiss index holds (read with faiss, not through the library)."""
    import faiss

    return faiss.read_index(str(folder / "knn.index")).ntotal


@pytest.mark.slow
def test_tag_notebook_tags_every_dataset_row_and_shows_the_histograms(spark, pipeline_run, tmp_path):
    run, out = pipeline_run.run_dir, tmp_path / "tags"
    _, shown = run_notebook("tag.py", spark, {
        "input": str(run / "dataset"), "embeddings": str(run / "embeddings"), "output": str(out),
        "overrides": shlex.join(pipeline_run.heads.overrides())})

    # one tags row per dataset row, every score given; the pipeline tagged the images (a superset of the
    # dataset) with the same heads and embeddings, so each row has the scores it gave there
    tags = {r[S.SAMPLE_ID]: r for r in read_rows(spark, out)}
    dataset = [r[S.SAMPLE_ID] for r in spark.read.parquet(str(run / "dataset")).select(S.SAMPLE_ID).collect()]
    assert sorted(tags) == sorted(dataset) and len(dataset) == len(set(dataset))
    before = {r[S.SAMPLE_ID]: r for r in read_rows(spark, run / "tags")}
    scores = ("punsafe", "pwatermark", "aesthetic_score")
    for sample_id, row in tags.items():
        for column in scores:
            assert row[column] is not None and row[column] == pytest.approx(before[sample_id][column], abs=1e-4)
        assert row["nsfw_zero_shot"] == before[sample_id]["nsfw_zero_shot"]
        assert row["taggers"] == before[sample_id]["taggers"] and set(row["taggers"]) == {*scores, "nsfw_zero_shot"}

    # display: the first 20 rows by sample_id, each score's histogram (20 bins), the zero-shot categories
    head, histograms, categories = shown
    assert head.columns == S.TAGS.fieldNames()
    assert [r[S.SAMPLE_ID] for r in head.rows] == sorted(tags)[:20]
    assert histograms.columns == ["score", "low", "high", "rows"]
    for column, high in (("punsafe", 1.0), ("pwatermark", 1.0), ("aesthetic_score", 10.0)):
        values = np.clip([r[column] for r in tags.values()], 0.0, high)  # outside the range: the end bins
        expected, edges = np.histogram(values, bins=20, range=(0.0, high))
        bins = [r for r in histograms.rows if r["score"] == column]
        assert [r["rows"] for r in bins] == expected.tolist(), column
        assert [r["low"] for r in bins] == pytest.approx(edges[:-1].tolist())
    assert dict(categories.rows) == dict(Counter(r["nsfw_zero_shot"] for r in tags.values()))


@pytest.mark.slow
def test_export_notebook_releases_the_dataset_minus_the_blocklist(spark, pipeline_run, tmp_path, capsys):
    run, out = pipeline_run.run_dir, tmp_path / "export"
    dataset = {r[S.SAMPLE_ID]: r for r in read_rows(spark, run / "dataset")}
    # two URLs of the dataset on a URL list: every dataset row with one of them is removed
    blocked_urls = sorted({r[S.URL] for r in dataset.values()})[:2]
    (tmp_path / "takedowns.txt").write_text("".join(f"{url}\n" for url in blocked_urls))
    blocked = {i for i, r in dataset.items() if r[S.URL] in blocked_urls}
    _, shown = run_notebook("export.py", spark, {
        "input": str(run / "dataset"), "tags": str(run / "tags"), "embeddings": str(run / "embeddings"),
        "output": str(out), "overrides": shlex.join([f"export.blocklist.url={tmp_path / 'takedowns.txt'}"])})

    release = {r["SAMPLE_ID"]: r for r in read_rows(spark, out / "laion")}
    assert sorted(release) == sorted(set(dataset) - blocked) and blocked
    removed = read_rows(spark, f"{out}_removed")
    assert sorted(r[S.SAMPLE_ID] for r in removed) == sorted(blocked)
    assert {r[S.REASON] for r in removed} == {"blocklisted:takedowns"}
    # each released row is its dataset row, with its tags' scores
    tags = {r[S.SAMPLE_ID]: r for r in read_rows(spark, run / "tags")}
    for sample_id, row in release.items():
        assert (row["URL"], row["TEXT"]) == (dataset[sample_id][S.URL], dataset[sample_id][S.TEXT])
        assert row["punsafe"] == pytest.approx(tags[sample_id]["punsafe"], abs=1e-6)
    assert (out / "README.md").is_file() and f"dataset card: {out / 'README.md'}" in capsys.readouterr().out

    # display: the first 20 released rows, the rows per subset, the removed rows per reason
    first, subsets, reasons = shown
    assert first.columns == S.RELEASES["laion5b"].fieldNames()
    assert [r["SAMPLE_ID"] for r in first.rows] == sorted(release)[:20]
    by_subset = {r["subset"]: r["rows"] for r in subsets.rows}
    assert by_subset == {name: spark.read.parquet(str(path)).count() for name, path in
                         ((p.name, p) for p in (out / "subsets").iterdir())}
    languages = Counter(r["LANGUAGE"] for r in release.values())
    assert by_subset["en"] == languages["en"] and by_subset["nolang"] == languages["nolang"] + languages[None]
    assert by_subset["en"] + by_subset["multi"] + by_subset["nolang"] == len(release)
    assert dict(reasons.rows) == {"blocklisted:takedowns": len(blocked)}


@pytest.mark.slow
def test_index_notebook_indexes_the_release_and_finds_a_text(spark, pipeline_run, tmp_path):
    run, out = pipeline_run.run_dir, tmp_path / "index"
    release = {r["SAMPLE_ID"]: r for r in read_rows(spark, run / "export" / "laion")}
    query = release[min(release)]["TEXT"]
    _, shown = run_notebook("index.py", spark, {
        "input": str(run / "embeddings"), "dataset": str(run / "export" / "laion"), "output": str(out),
        "query": query, "overrides": "index.candidates=1"})

    # an index per field, each holding the release's rows: its vectors, its metadata's sample_ids
    for field in ("image", "text"):
        assert index_ntotal(out / field) == len(release)
        assert sorted(r[S.SAMPLE_ID] for r in read_rows(spark, out / field / "metadata")) == sorted(release)
        assert json.loads((out / field / "index_infos.json").read_text())["field"] == field

    # display: each index's infos, then the query's results in each
    infos, found = shown
    assert [(r["field"], r["nb_vectors"]) for r in infos.rows] == [("image", len(release)), ("text", len(release))]
    assert all(0.0 <= r["recall_at_10"] <= 1.0 and r["folder"] == str(out / r["field"]) for r in infos.rows)
    for field in ("image", "text"):
        rows = [r for r in found.rows if r["field"] == field]
        assert 1 <= len(rows) <= 10 and [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
        assert all(r["sample_id"] in release for r in rows)
        similarities = [r["similarity"] for r in rows]
        assert similarities == sorted(similarities, reverse=True)
    # the text index holds the query's own text: its encoding is the query's, the best match
    assert [r for r in found.rows if r["field"] == "text"][0]["text"] == query


@pytest.mark.slow
def test_search_notebook_finds_an_image_by_its_own_bytes(spark, pipeline_run, tmp_path):
    run = pipeline_run.run_dir
    release = {r["SAMPLE_ID"] for r in read_rows(spark, run / "export" / "laion")}
    dataset = {r[S.SAMPLE_ID]: r for r in read_rows(spark, run / "dataset")}
    chosen = dataset[max(release)]
    image = tmp_path / "query.img"
    image.write_bytes(chosen[S.IMAGE])
    _, shown = run_notebook("search.py", spark, {
        "input": str(run / "index" / "image"), "query": "", "image": str(image), "k": "3"})
    (found,) = shown
    assert found.columns == ["index", "rank", "similarity", "sample_id", "url", "text"]
    assert 1 <= len(found.rows) <= 3 and all(r["sample_id"] in release for r in found.rows)
    # the stored image was embedded from these bytes: it is its own nearest neighbour
    assert (found.rows[0]["url"], found.rows[0]["similarity"]) == (chosen[S.URL], pytest.approx(1.0, abs=1e-3))


@pytest.mark.slow
def test_report_notebook_writes_the_page_with_its_files_and_shows_the_funnel(spark, pipeline_run, tmp_path, capsys):
    run, out = pipeline_run.run_dir, tmp_path / "report"
    _, shown = run_notebook("report.py", spark, {"run_dir": str(run), "output": str(out)})

    page = (out / "index.html").read_text(encoding="utf-8")
    files = re.findall(r'<img src="([^"]+)"', page)
    assert files and all((out / f).is_file() for f in files)
    assert any(f.startswith("plots/") for f in files) and any(f.startswith("samples/") for f in files)
    assert f"the report: {out / 'index.html'}" in capsys.readouterr().out

    # the funnel: rows of each table of the run, counted here
    images = spark.read.parquet(str(run / "images"))
    expected = {"candidates": spark.read.parquet(str(run / "candidates")).count(),
                "pairs": spark.read.parquet(str(run / "pairs")).count(),
                "images": images.where(images[S.STATUS] == "success").count(),
                "dataset": spark.read.parquet(str(run / "dataset")).count(),
                "export/laion": spark.read.parquet(str(run / "export" / "laion")).count(),
                "index/image": index_ntotal(run / "index" / "image"),
                "index/text": index_ntotal(run / "index" / "text")}
    (funnel,) = shown
    assert funnel.columns == ["table", "rows"] and dict(funnel.rows) == expected


@pytest.mark.slow
def test_takedown_notebook_removes_the_listed_rows_from_a_copy_of_the_run(spark, pipeline_run, tmp_path):
    original = pipeline_run.run_dir
    run = tmp_path / "run"
    shutil.copytree(original, run)
    release = {r["SAMPLE_ID"]: r for r in read_rows(spark, run / "export" / "laion")}
    urls = sorted({r["URL"] for r in release.values()})[-2:]
    (tmp_path / "removals.txt").write_text("".join(f"{url}\n" for url in urls))
    gone = {i for i, r in release.items() if r["URL"] in urls}
    _, shown = run_notebook("takedown.py", spark, {"run_dir": str(run), "list": str(tmp_path / "removals.txt")})

    kept = sorted(set(release) - gone)
    assert sorted(r["SAMPLE_ID"] for r in read_rows(spark, run / "export" / "laion")) == kept and gone
    assert index_ntotal(run / "index" / "image") == index_ntotal(run / "index" / "text") == len(kept)
    takedowns = json.loads((run / "manifest.json").read_text())["takedowns"]
    assert [t["sample_ids"] for t in takedowns] == [sorted(gone)]
    # the shared run is as it was
    assert sorted(r["SAMPLE_ID"] for r in read_rows(spark, original / "export" / "laion")) == sorted(release)

    # display: the files rewritten (the release's lost every row taken down), then the release now
    files, first = shown
    in_release = [r["removed"] for r in files.rows if r["file"].startswith(str(run / "export" / "laion") + "/")]
    assert sum(in_release) == len(gone)
    assert all(r["file"].startswith(str(run) + "/") for r in files.rows)
    assert [r["SAMPLE_ID"] for r in first.rows] == kept[:20]
