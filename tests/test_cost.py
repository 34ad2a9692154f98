"""`laion-spark plan` (laion_spark/cost): a finished run's measured costs scaled to a target.

The run directory here is written by hand: a manifest.json in pipeline/manifest.py's shape with chosen
seconds and counts, and table folders holding files of chosen sizes. Every expected figure is computed in the
test from those numbers (sizes summed with os.walk, core-hours as seconds x cores x rows ratio / 3600), not read
back from the plan's own code. The last test does the same on the session's real demo run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from laion_spark import cli
from laion_spark.config import ConfigError

CORES = 2
CANDIDATES, PAIRS, SUCCESS, DATASET, RELEASED = 1000, 800, 600, 240, 200
BYTES_PER_FETCH = 50_000
SECONDS = {"extract": 100.0, "dedupe": 20.0, "download": 300.0, "embed": 600.0, "filter": 10.0, "tag": 30.0,
           "export": 40.0, "index:image": 12.0, "index:text": 8.0, "report": 50.0}
# the rows each step works on, as the plan's model states it (DESIGN: download fetches pairs, embed embeds the
# downloaded images, export releases dataset rows, index indexes the released ones)
STEP_ROWS = {"extract": CANDIDATES, "dedupe": CANDIDATES, "download": PAIRS, "embed": SUCCESS, "filter": PAIRS,
             "tag": PAIRS, "export": DATASET, "index:image": RELEASED, "index:text": RELEASED}
# table folder -> {file: bytes}
FILES = {
    "crawl": {"a.warc.wat.gz": 5000},
    "candidates": {"part-0.parquet": 1000},
    "candidates_errors": {"part-0.parquet": 100},
    "pairs": {"part-0.parquet": 800},
    "images": {"part-0.parquet": 40_000},
    "embeddings": {"part-0.parquet": 3000},
    "dataset": {"part-0.parquet": 9000},
    "dataset_rejected": {"part-0.parquet": 20_000},
    "tags": {"part-0.parquet": 500},
    "export": {"laion/part-0.parquet": 2000, "webdataset/00000.tar": 6000},
    "export_removed": {"part-0.parquet": 300},
    "index/image": {"knn.index": 700},
    "index/text": {"knn.index": 650},
}
DIM = 512


def _manifest(recorded_run_dir: str) -> dict:
    def step(name, counts):
        return {"step": name, "stage": name.split(":")[0], "action": "run", "why": "not run yet",
                "output": f"{recorded_run_dir}/{name.replace(':', '/')}", "seconds": SECONDS[name], "counts": counts}

    return {"run_dir": recorded_run_dir, "input": f"{recorded_run_dir}/crawl/a.warc.wat.gz", "status": "complete",
            "steps": [
                step("extract", {"candidates": CANDIDATES, "files": 1, "error_rows": 3}),
                step("dedupe", {"rows_in": CANDIDATES, "pairs": PAIRS, "duplicates_removed": CANDIDATES - PAIRS}),
                step("download", {"rows_in": PAIRS, "rows_out": PAIRS, "downloaded": PAIRS,
                                  "bytes_downloaded": PAIRS * BYTES_PER_FETCH,
                                  "statuses": {"success": SUCCESS, "http_error": PAIRS - SUCCESS}}),
                step("embed", {"rows_in": PAIRS, "rows_out": SUCCESS, "success_rows": SUCCESS}),
                step("filter", {"rows_in": PAIRS, "dataset": DATASET, "rejected": PAIRS - DATASET}),
                step("tag", {"rows_in": PAIRS, "tagged": PAIRS}),
                step("export", {"rows_in": DATASET, "released": RELEASED, "removed": DATASET - RELEASED}),
                step("index:image", {"rows_in": SUCCESS, "indexed": RELEASED}),
                step("index:text", {"rows_in": SUCCESS, "indexed": RELEASED}),
                step("report", {"funnel": {"candidates": CANDIDATES}}),
            ]}


@pytest.fixture
def run_dir(tmp_path):
    """A finished run, moved: its manifest names it 'elsewhere/run' (where it was made), as a demo's does."""
    root = tmp_path / "run"
    for folder, files in FILES.items():
        for name, size in files.items():
            path = root / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * size)
    for field in ("image", "text"):
        (root / "index" / field / "index_infos.json").write_text(json.dumps({"dimension": DIM, "clip_model": "m"}))
    (root / "manifest.json").write_text(json.dumps(_manifest("elsewhere/run")))
    return root


def _du(path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _plan(run_dir, *overrides):
    cfg, module = cli.prepare("plan", [], [f"run_dir={run_dir}", f"plan.run_cores={CORES}", *overrides])
    return cli.run("plan", cfg, module)


def _steps(plan) -> dict:
    return {s["step"]: s for s in plan["steps"]}


def _tables(plan) -> dict:
    return {t["table"]: t for t in plan["tables"]}


def test_ten_times_the_run_costs_ten_times_its_core_hours_and_bytes(run_dir):
    res = subprocess.run([sys.executable, "-m", "laion_spark.cli", "plan", f"run_dir={run_dir}",
                          f"target={10 * CANDIDATES}", f"plan.run_cores={CORES}"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    written = run_dir / "plan" / f"n{10 * CANDIDATES}.json"
    assert f"written: {written}" in res.stdout
    plan = json.loads(written.read_text())
    steps = _steps(plan)
    assert set(steps) == set(STEP_ROWS)  # report is not planned
    for name, rows in STEP_ROWS.items():
        s = steps[name]
        assert s["core_hours"] == pytest.approx(SECONDS[name] * CORES * 10 / 3600, rel=1e-6), name
        assert s["target_rows"] == pytest.approx(10 * rows), name
        assert s["rows_per_core_second"] == pytest.approx(rows / (SECONDS[name] * CORES), rel=1e-3), name
    planned = sum(v for k, v in SECONDS.items() if k != "report")
    assert plan["totals"]["core_hours"] == pytest.approx(planned * CORES * 10 / 3600, rel=1e-6)
    # bytes: every table 10x what it holds on disk; export once (its release inside it is not counted twice)
    tables = _tables(plan)
    folders = {"archives": "crawl/a.warc.wat.gz", "candidates": "candidates", "candidates_errors": "candidates_errors",
               "pairs": "pairs", "images": "images", "embeddings": "embeddings", "dataset": "dataset",
               "dataset_rejected": "dataset_rejected", "tags": "tags", "export": "export",
               "export_removed": "export_removed", "release": "export/laion", "index_image": "index/image",
               "index_text": "index/text"}
    assert set(tables) == set(folders)
    for table, folder in folders.items():
        assert tables[table]["run_bytes"] == _du(run_dir / folder), table
        assert tables[table]["target_bytes"] == pytest.approx(10 * _du(run_dir / folder), abs=1), table
    assert tables["release"]["part_of"] == "export"
    written_all = sum(_du(run_dir / f) for t, f in folders.items() if t not in ("archives", "release"))
    assert plan["totals"]["bytes_written"] == pytest.approx(10 * written_all, abs=1)
    assert steps["export"]["bytes_written"] == pytest.approx(10 * (_du(run_dir / "export")
                                                                   + _du(run_dir / "export_removed")), abs=1)
    assert steps["filter"]["bytes_read"] == pytest.approx(10 * (_du(run_dir / "images")
                                                                + _du(run_dir / "embeddings")), abs=1)
    assert steps["extract"]["bytes_read"] == pytest.approx(10 * 5000, abs=1)
    # wall time on the default cluster (LAION's: 300 workers x 2 cores), CPU-bound at this size
    assert steps["embed"]["wall_hours"] == pytest.approx(SECONDS["embed"] * CORES * 10 / 3600 / 600, rel=1e-3)
    # the index at the target: the released rows, the run's dimension
    assert plan["index"][0]["nb_vectors"] == 10 * RELEASED and plan["index"][0]["dimension"] == DIM
    # the printed table shows the same figures
    assert "extract" in res.stdout and f"{SECONDS['embed'] * CORES * 10 / 3600:.3g}" in res.stdout


def test_an_assumption_given_on_the_command_line_moves_its_figures(run_dir):
    target = f"target={10 * CANDIDATES}"
    base = _plan(run_dir, target)
    # half the run's download success rate: half the images to embed, half the embeddings and dataset;
    # what comes before the download does not change
    half = _plan(run_dir, target, f"plan.download_success_rate={SUCCESS / PAIRS / 2}")
    b, h = _steps(base), _steps(half)
    assert h["embed"]["core_hours"] == pytest.approx(b["embed"]["core_hours"] / 2, rel=1e-6)
    assert h["embed"]["target_rows"] == pytest.approx(10 * SUCCESS / 2)
    assert h["download"]["core_hours"] == pytest.approx(b["download"]["core_hours"], rel=1e-9)
    assert h["export"]["target_rows"] == pytest.approx(10 * DATASET / 2)
    assert _tables(half)["embeddings"]["target_bytes"] == pytest.approx(10 * _du(run_dir / "embeddings") / 2, abs=1)
    rate = next(a for a in half["assumptions"] if a["key"] == "plan.download_success_rate")
    assert rate["value"] == pytest.approx(SUCCESS / PAIRS / 2) and "given" in rate["source"]

    # bandwidth: 1 Mbit/s on 300 workers makes download network-bound; twice the bandwidth, half the time
    slow = _steps(_plan(run_dir, target, "plan.download_mbps_per_worker=0.01"))["download"]
    expected_s = 10 * PAIRS * BYTES_PER_FETCH * 8 / (300 * 0.01e6)
    assert slow["bound"] == "network" and slow["wall_hours"] == pytest.approx(expected_s / 3600, rel=1e-3)
    faster = _steps(_plan(run_dir, target, "plan.download_mbps_per_worker=0.02"))["download"]
    assert faster["wall_hours"] == pytest.approx(expected_s / 2 / 3600, rel=1e-3)

    # a smaller cluster: the same core-hours over 10 x 4 cores
    small = _steps(_plan(run_dir, target, "plan.executors=10", "plan.cores_per_executor=4"))
    assert small["filter"]["wall_hours"] == pytest.approx(SECONDS["filter"] * CORES * 10 / 3600 / 40, rel=1e-3)
    assert small["filter"]["core_hours"] == pytest.approx(b["filter"]["core_hours"], rel=1e-9)

    # GPUs: embed takes downloaded images / (GPUs x images per second per GPU)
    gpu = _steps(_plan(run_dir, target, "plan.gpus=4", "plan.embed_images_per_s_per_gpu=100"))["embed"]
    assert gpu["bound"] == "gpu" and gpu["core_hours"] is None
    assert gpu["wall_hours"] == pytest.approx(10 * SUCCESS / (4 * 100) / 3600, rel=1e-3)
    assert gpu["gpu_hours"] == pytest.approx(4 * 10 * SUCCESS / (4 * 100) / 3600, rel=1e-3)

    # the run's cores and each step's fixed start-up
    more = _steps(_plan(run_dir, target, "plan.run_cores=8", "plan.step_overhead_s=4"))
    assert more["tag"]["core_hours"] == pytest.approx((SECONDS["tag"] - 4) * 8 * 10 / 3600, rel=1e-6)


def test_laion5b_and_a_common_crawl_snapshot(run_dir):
    plan = _plan(run_dir)  # target=laion5b by default: about 50B candidates, as LAION reported
    assert plan["target"]["candidates"] == 50e9
    steps = _steps(plan)
    assert steps["dedupe"]["core_hours"] == pytest.approx(SECONDS["dedupe"] * CORES * (50e9 / CANDIDATES) / 3600,
                                                          rel=1e-6)
    planned, laion = plan["index"][0], plan["index"][-1]
    assert planned["nb_vectors"] == round(50e9 * RELEASED / CANDIDATES) and planned["dimension"] == DIM
    assert planned["memory_bytes"] <= 800 * 2**30 and "IVF" in planned["index_key"]
    assert (laion["nb_vectors"], laion["dimension"]) == (5_850_000_000, 768)
    assert laion["memory_bytes"] <= 800 * 2**30
    assert (run_dir / "plan" / "laion5b.json").is_file()

    # one snapshot: WAT files x bytes each x this run's candidates per input byte (5000 bytes -> 1000)
    cc = _plan(run_dir, "target=cc-snapshot", "plan.wat_files=1000", "plan.wat_file_bytes=1M")
    assert cc["target"]["candidates"] == pytest.approx(1000 * 2**20 * CANDIDATES / 5000, rel=1e-6)
    assert _tables(cc)["archives"]["target_bytes"] == 1000 * 2**20
    given = _plan(run_dir, "target=cc-snapshot", "plan.wat_files=1000", "plan.candidates_per_wat_file=7")
    assert given["target"]["candidates"] == 7000
    assert _steps(given)["extract"]["core_hours"] == pytest.approx(SECONDS["extract"] * CORES * 7 / 3600, rel=1e-6)


def test_without_a_manifest_or_with_bad_values_it_says_what_is_wrong(tmp_path, run_dir):
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    res = subprocess.run([sys.executable, "-m", "laion_spark.cli", "plan", f"run_dir={empty}"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2
    assert f"run_dir {empty} has no manifest.json" in res.stderr and "Traceback" not in res.stderr
    with pytest.raises(ConfigError, match="run_dir not found"):
        cli.prepare("plan", [], [f"run_dir={tmp_path / 'missing'}"])
    with pytest.raises(ConfigError, match="run_dir is required"):
        cli.prepare("plan", [], ["target=laion5b"])
    with pytest.raises(ConfigError, match="target='five': give laion5b, cc-snapshot or a number"):
        cli.prepare("plan", [], [f"run_dir={run_dir}", "target=five"])
    with pytest.raises(ConfigError, match="plan.filter_keep_rate"):
        cli.prepare("plan", [], [f"run_dir={run_dir}", "plan.filter_keep_rate=1.5"])
    (empty / "manifest.json").write_text(json.dumps({"status": "running", "steps": []}))
    with pytest.raises(ConfigError, match="lists no steps"):
        cli.prepare("plan", [], [f"run_dir={empty}"])


@pytest.mark.slow
def test_plan_of_the_demo_run(demo_run, tmp_path):
    """The session's demo run (a real manifest and real tables): 10x its candidates costs 10x each step's
    seconds x cores and 10x each table's bytes, read here from the manifest and the files themselves."""
    output = demo_run[0]
    manifest = json.loads((output / "manifest.json").read_text())
    by_step = {s["step"]: s for s in manifest["steps"]}
    candidates = by_step["extract"]["counts"]["candidates"]
    cfg, module = cli.prepare("plan", [], [f"run_dir={output}", f"target={10 * candidates}", "plan.run_cores=3",
                                           f"output={tmp_path / 'plan'}"])
    plan = module.run(None, cfg)  # the run directory is shared: the plan goes to tmp_path
    for s in plan["steps"]:
        assert s["core_hours"] == pytest.approx(by_step[s["step"]]["seconds"] * 3 * 10 / 3600, rel=1e-6), s["step"]
    tables = _tables(plan)
    for name, folder in (("candidates", "candidates"), ("images", "images"), ("dataset", "dataset"),
                         ("index_image", "index/image")):
        assert tables[name]["target_bytes"] == pytest.approx(10 * _du(output / folder), abs=1), name
    assert plan["index"][0]["dimension"] == json.loads((output / "index" / "image" / "index_infos.json")
                                                       .read_text())["dimension"]
    assert (tmp_path / "plan" / f"n{10 * candidates}.json").is_file()
