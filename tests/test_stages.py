"""The stage registry (laion_spark/stages.py) is the one list: the CLI, config sections, jobs/ and the
usage lines follow it; the stages without an output table (search) and on a run directory (report) are
checked through the CLI against their documented usage."""

from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from laion_spark import cli, config, stages
from laion_spark.config import ConfigError, JobConfig

REPO = Path(__file__).resolve().parents[1]

# written from DESIGN.md's tables, not read from the registry: which stage writes which table
DESIGN_PRODUCERS = {
    "candidates": "extract", "candidates_errors": "extract", "pairs": "dedupe", "images": "download",
    "embeddings": "embed", "dataset": "filter", "dataset_rejected": "filter", "index": "index", "tags": "tag",
    "export": "export", "export_removed": "export",
}


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "laion_spark.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_every_stage_has_a_module_a_section_and_a_job_entry():
    sections = {f.name for f in dataclasses.fields(JobConfig)}
    for name, stage in stages.STAGES.items():
        module = importlib.import_module(stage.module)
        assert callable(module.prepare) and callable(module.run), name
        assert stage.section in sections, name
        assert (REPO / "jobs" / f"{name}.py").is_file(), name
    assert sorted(p.stem for p in (REPO / "jobs").glob("*.py")) == sorted(stages.STAGES)


def test_the_tables_form_the_design_graph():
    produced = stages.producers()
    for table, stage in DESIGN_PRODUCERS.items():
        assert produced[table] == stage, table
    # filter reads what download and embed write: the pipeline's edges come from here
    filter_inputs = {t.table for t in stages.get("filter").inputs}
    assert {produced[t] for t in filter_inputs} == {"download", "embed"}
    assert stages.get("filter").aliases == {"embeddings": "filter.embeddings"}
    # stage-specific table keys belong to their stage: index's dataset= is index.dataset, nobody else's
    assert stages.get("index").aliases == {"dataset": "index.dataset"}
    assert produced["index"] == "index" and {t.table for t in stages.get("index").inputs} == {"embeddings", "dataset"}
    # search's short keys (query=, k=) are its own: no other stage takes them
    assert stages.get("search").aliases == {"query": "search.query", "image": "search.image", "k": "search.k",
                                            "format": "search.format"}
    assert stages.get("tag").aliases == {"embeddings": "tag.embeddings", "dataset": "tag.dataset"}
    assert {produced[t] for t in (t.table for t in stages.get("tag").inputs)} == {"filter", "embed"}
    # export reads filter's dataset, tag's tags and embed's embeddings
    assert stages.get("export").aliases == {"tags": "export.tags", "embeddings": "export.embeddings"}
    assert {produced[t.table] for t in stages.get("export").inputs} == {"filter", "tag", "embed"}
    # the release export writes inside its folder is what index reads in a pipeline
    assert produced["release"] == "export"
    assert stages.get("pipeline").aliases == {"run_dir": "output", "from": "pipeline.rerun_from",
                                              "pipeline.from": "pipeline.rerun_from", "until": "pipeline.until",
                                              "previous": "pipeline.previous"}
    assert stages.get("report").aliases == {"run_dir": "input"}
    assert stages.get("takedown").aliases == {"run_dir": "input", "list": "takedown.list", "kind": "takedown.kind"}
    # evaluate reads a run directory, or shards given directly (train=), and writes run_dir/evaluate
    assert stages.get("evaluate").aliases == {"run_dir": "input", "train": "evaluate.train"}
    assert produced["evaluate"] == "evaluate"
    # plan reads a finished run directory (run_dir=) and a target (target=), and writes run_dir/plan
    assert stages.get("plan").aliases == {"run_dir": "input", "target": "plan.target"}
    assert produced["plan"] == "plan"
    assert all(not s.aliases for n, s in stages.STAGES.items()
               if n not in ("filter", "index", "search", "serve", "tag", "export", "pipeline", "report", "takedown",
                            "evaluate", "plan"))


def test_cli_usage_lists_the_registry_and_demo_is_a_stage():
    res = _cli("--help")
    assert res.returncode == 0
    listed = [line.split()[0] for line in res.stdout.splitlines()[2:] if line.strip()]
    assert listed == list(stages.STAGES)
    assert "demo" in listed
    res = _cli("nosuch")
    assert res.returncode == 2 and f"valid stages: {', '.join(stages.STAGES)}" in res.stderr


@pytest.mark.parametrize("args, message", [
    (("filter", "input=/x", "output=/y"), "embeddings is required: laion-spark filter input=<images> "
                                          "embeddings=<embeddings> output=<dataset>"),
    (("download", "output=/y"), "input is required: laion-spark download input=<pairs>"),
    (("demo",), "output is required: laion-spark demo output=<run_dir>"),
    (("download", "input=/x", "output=/y", "embeddings=/e"), "unknown key 'embeddings'"),
])
def test_required_keys_and_stage_owned_aliases(args, message):
    res = _cli(*args)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr


def test_help_shows_only_the_stage_section():
    res = _cli("filter", "--help")
    assert res.returncode == 0
    assert "usage: laion-spark filter input=<images> embeddings=<embeddings> output=<dataset>" in res.stdout
    assert "filter.threshold.en=0.28" in res.stdout and "download.threads" not in res.stdout


def test_stages_module_answers_spark_submit():
    out = subprocess.run([sys.executable, "-m", "laion_spark.stages", "names"], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == list(stages.STAGES)
    assert subprocess.run([sys.executable, "-m", "laion_spark.stages", "has", "demo"]).returncode == 0
    assert subprocess.run([sys.executable, "-m", "laion_spark.stages", "has", "nosuch"]).returncode == 1


# written from search/job.py's and report/job.py's docstrings (search: an index folder -> results, no table
# written; report: `run_dir=` -> <run_dir>/report by default), not read from the registry
SEARCH_USAGE = "laion-spark search input=<index> [key=value ...]"
REPORT_USAGE = "laion-spark report run_dir=<run_dir> [output=<report>] [key=value ...]"


@pytest.mark.parametrize("stage, args, message", [
    ("search", [], f"input is required: {SEARCH_USAGE}"),
    ("search", ["input={missing}", "query=x"], "input not found: {missing}"),
    ("search", ["input={tmp}"], "give one of query=TEXT or image=FILE"),
    ("search", ["input={tmp}", "query=x", "image={tmp}/x.png"], "give one of query=TEXT or image=FILE"),
    ("report", [], f"run_dir is required: {REPORT_USAGE}"),
    ("report", ["output={tmp}/r"], f"run_dir is required: {REPORT_USAGE}"),
    ("report", ["run_dir={missing}"], "run_dir not found: {missing}"),
], ids=["search-nothing", "search-missing-index", "search-no-query", "search-query-and-image", "report-nothing",
        "report-output-only", "report-missing-run-dir"])
def test_search_and_report_refuse_what_they_cannot_run(tmp_path, stage, args, message):
    where = {"tmp": tmp_path, "missing": tmp_path / "missing"}
    with pytest.raises(ConfigError) as err:
        cli.prepare(stage, [], [a.format(**where) for a in args])
    assert message.format(**where) in str(err.value)


@pytest.mark.parametrize("stage, usage, key", [("search", SEARCH_USAGE, "search.query="),
                                               ("report", REPORT_USAGE, "report.samples=")], ids=["search", "report"])
def test_search_and_report_help_shows_their_usage(stage, usage, key):
    res = _cli(stage, "--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == f"usage: {usage}"
    assert key in res.stdout and "download.threads" not in res.stdout


def test_search_needs_no_output_and_leaves_its_index_as_it_was(tmp_path, monkeypatch):
    # a folder that looks like a finished index (its marker) but holds none: search fails, and neither
    # clears that marker (mode=overwrite clears a stage's own outputs' markers) nor writes _FAILED.json
    index = tmp_path / "index"
    index.mkdir()
    marker_text = json.dumps({"stage": "index", "rows_out": 3})
    (index / "_summary.json").write_text(marker_text)
    cfg, module = cli.prepare("search", [], [f"input={index}", "query=a red circle", "k=3", "mode=overwrite"])
    assert (cfg.output, cfg.search.query, cfg.search.k) == ("", "a red circle", 3)
    def no_session():
        raise AssertionError("search started a Spark session")

    monkeypatch.setattr("laion_spark.session.get_spark", no_session)  # a tripwire: search runs without Spark
    with pytest.raises(FileNotFoundError, match="holds no index"):
        cli.run("search", cfg, module)
    assert [p.name for p in index.iterdir()] == ["_summary.json"]
    assert (index / "_summary.json").read_text() == marker_text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_report_reads_a_run_directory_and_writes_into_it_again(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "report").mkdir(parents=True)  # a report written before: rewritten, not an error
    cfg, module = cli.prepare("report", [], [f"run_dir={run_dir}"])
    assert (cfg.input, cfg.output) == (str(run_dir), f"{run_dir}/report")
    assert module.__name__ == "laion_spark.report.job"
    cfg, _ = cli.prepare("report", [], [f"run_dir={run_dir}", f"output={tmp_path / 'elsewhere'}"])
    assert (cfg.input, cfg.output) == (str(run_dir), str(tmp_path / "elsewhere"))


def test_output_hash_ignores_how_a_stage_runs_but_not_what_it_writes(tmp_path):
    from laion_spark.marker import file_hash, output_hash

    filt = stages.get("filter")
    base = config.load_config([], ["input=/a", "output=/b", "embeddings=/e"], stage="filter")
    same = config.load_config([], ["input=/a", "output=/other", "embeddings=/e", "mode=overwrite",
                                   "filter.rejected_output=/r"], stage="filter")
    other = config.load_config([], ["input=/a", "output=/b", "embeddings=/e", "filter.threshold.en=0.3"],
                               stage="filter")
    assert output_hash(filt, base)[0] == output_hash(filt, same)[0]
    assert output_hash(filt, base)[0] != output_hash(filt, other)[0]
    embed = stages.get("embed")
    runs = [config.load_config([], ["input=/a", "output=/b", *extra], stage="embed") for extra in
            ([], ["embed.device=cpu", "embed.model_batch_size=8", "embed.cpu_threads=3", "embed.partitions=9"])]
    assert output_hash(embed, runs[0])[0] == output_hash(embed, runs[1])[0]
    # checkpoints by content: two different epoch_latest.pt are two models, one file copied is one
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    (tmp_path / "a" / "epoch_latest.pt").write_bytes(b"weights one")
    (tmp_path / "b" / "epoch_latest.pt").write_bytes(b"weights two")
    (tmp_path / "c" / "copy.pt").write_bytes(b"weights one")
    hashes = [output_hash(embed, config.load_config([], ["input=/a", "output=/b", f"embed.pretrained={p}"],
                                                    stage="embed"))
              for p in (tmp_path / "a" / "epoch_latest.pt", tmp_path / "b" / "epoch_latest.pt",
                        tmp_path / "c" / "copy.pt")]
    assert hashes[0][0] != hashes[1][0] and hashes[0][0] == hashes[2][0]
    assert hashes[0][1]["embed.pretrained"] == "sha256:" + file_hash(str(tmp_path / "c" / "copy.pt"))
    hub = output_hash(embed, runs[0])[1]
    assert hub["embed.pretrained"] == "laion2b_s34b_b79k"  # a hub tag is no file: kept as the name
