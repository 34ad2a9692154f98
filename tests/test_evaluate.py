"""`laion-spark evaluate` on the shared demo run: the trainer reads the run's shards, the baselines hold the
pairs they should, the metrics are written; and the errors a user meets before anything trains.

The expected subset sizes are computed here from the run's tables with pandas (the release's rows, the
images table's successes less the rows export removed for a list), not by evaluate's own Spark code.
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("open_clip_train", reason="open_clip_torch >= 2.26.1 ships open_clip_train (evaluate extra)")

from laion_spark import cli
from laion_spark.config import ConfigError

RECIPE = ["evaluate.epochs=1", "evaluate.samples_per_epoch=32", "evaluate.batch_size=8", "evaluate.warmup=1",
          "evaluate.heldout_images=60"]


@pytest.fixture(scope="module")
def evaluated(spark, demo_run):
    run_dir = demo_run[0]
    cfg, module = cli.prepare("evaluate", [], [f"run_dir={run_dir}", *RECIPE])
    return run_dir, cli.run("evaluate", cfg, module, spark)


def _shard_urls(folder: Path) -> list[str]:
    urls = []
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    urls.append(json.loads(tar.extractfile(member).read())["url"])
    return urls


def _list_keys(uri: str) -> set[str]:
    lines = (line.split("#", 1)[0].strip() for line in Path(uri).read_text().splitlines())
    return {line.lower() if len(line) == 64 else line for line in lines if line}


def _expected_pool(run_dir: Path) -> pd.DataFrame:
    images = pd.read_parquet(run_dir / "images", columns=["sample_id", "url", "sha256", "status"])
    success = images[images["status"] == "success"]
    removed = pd.read_parquet(run_dir / "export_removed", columns=["sample_id", "url", "sha256", "reason"])
    listed = removed[removed["reason"].str.startswith(("blocklisted:", "takedown:"))]
    assert len(listed) > 0, "the demo's lists remove rows: the baselines must leave them out"
    pool = success[~success["sample_id"].isin(listed["sample_id"]) & ~success["url"].isin(listed["url"])
                   & ~success["sha256"].isin(listed["sha256"].dropna())]
    # the lists themselves reach every downloaded row, the ones the filter rejected too (the demo's: a URL
    # list and an image_sha256 list, entries as written)
    lists = json.loads((run_dir / "export" / "_summary.json").read_text())["blocklists"]
    column = {"url": "url", "image_sha256": "sha256"}
    assert lists and {b["kind"] for b in lists} <= set(column)
    for b in lists:
        pool = pool[~pool[column[b["kind"]]].isin(_list_keys(b["uri"]))]
    return pool


@pytest.mark.slow
def test_each_subset_holds_the_pairs_it_should(evaluated) -> None:
    run_dir, summary = evaluated
    subsets = summary["subsets"]
    assert list(subsets) == ["filtered", "all", "random"]
    released = len(pd.read_parquet(run_dir / "export" / "laion"))
    pool = _expected_pool(run_dir)
    assert subsets["filtered"]["pairs"] == released > 0
    assert subsets["all"]["pairs"] == len(pool) > released  # the filter dropped some downloaded pairs
    assert subsets["random"]["pairs"] == released
    out = run_dir / "evaluate"
    all_urls = _shard_urls(out / "shards" / "all")
    random_urls = _shard_urls(out / "shards" / "random")
    assert sorted(all_urls) == sorted(pool["url"])
    # a URL may come twice (one image, two captions): pairs are counted, not URLs
    assert len(random_urls) == released and not Counter(random_urls) - Counter(all_urls)
    # the random draw is not the release again: it draws from every downloaded pair
    assert set(random_urls) != set(_shard_urls(run_dir / "export" / "webdataset"))


@pytest.mark.slow
def test_every_subset_trained_the_same_recipe_and_was_measured(evaluated) -> None:
    run_dir, summary = evaluated
    out = run_dir / "evaluate"
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["subsets"] == summary["subsets"]
    assert summary["heldout"]["images"] == 60
    for name, r in summary["subsets"].items():
        assert r["steps"] == 32 // 8 and r["samples_seen"] == 32, name
        assert set(r["zero_shot"]) == {"colour", "shape", "count"}
        assert all(0 <= v <= 1 for v in [*r["zero_shot"].values(), *r["retrieval"].values()])
        assert r["retrieval"]["recall@1"] <= r["retrieval"]["recall@5"]
        log = (out / "train" / name / "out.log").read_text()
        assert "Train Epoch: 0 [32/32 (100%)]" in log
        assert not list((out / "train" / name / "checkpoints").glob("*.pt"))  # measured, then removed
    table = (out / "results.md").read_text()
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:]] == ["filtered", "all", "random", "chance"]


def test_evaluate_refuses_what_cannot_train_before_spark(tmp_path) -> None:
    with pytest.raises(ConfigError, match="run_dir= .* or evaluate.train="):
        cli.prepare("evaluate", [], [*RECIPE])
    with pytest.raises(ConfigError, match="run_dir not found"):
        cli.prepare("evaluate", [], [f"run_dir={tmp_path / 'nothing'}"])
    with pytest.raises(ConfigError, match="evaluate.subsets"):
        cli.prepare("evaluate", [], [f"run_dir={tmp_path}", "evaluate.subsets=filtered,best"])
    with pytest.raises(ConfigError, match="less than one batch"):
        cli.prepare("evaluate", [], [f"run_dir={tmp_path}", "evaluate.samples_per_epoch=4",
                                     "evaluate.batch_size=8"])
    with pytest.raises(ConfigError, match="no model 'ViT-Toy-99'"):
        cli.prepare("evaluate", [], [f"run_dir={tmp_path}", "evaluate.model=ViT-Toy-99"])
    with pytest.raises(ConfigError, match="no model config at"):
        cli.prepare("evaluate", [], [f"run_dir={tmp_path}", f"evaluate.model={tmp_path / 'missing.json'}"])
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            cli.prepare("evaluate", [], [f"run_dir={tmp_path}", "evaluate.device=cuda"])


def test_the_evaluation_crawl_conf_loads_for_both_commands() -> None:
    from laion_spark.config import load_config
    from laion_spark.demo.toyshop import Shop

    conf = str(Path(__file__).resolve().parents[1] / "conf" / "demo-evaluate.yaml")
    demo = load_config([conf], ["output=x"], stage="demo")
    evaluate = load_config([conf], ["input=x"], stage="evaluate")
    assert Shop.of(demo.demo) == Shop(images=3000, wrong=0.2, unrelated=0.3)
    assert evaluate.evaluate.epochs * (evaluate.evaluate.samples_per_epoch // evaluate.evaluate.batch_size) == 512


@pytest.mark.slow
def test_the_report_shows_the_results_as_written(spark, evaluated, tmp_path) -> None:
    import re

    run_dir, summary = evaluated
    cfg, module = cli.prepare("report", [], [f"run_dir={run_dir}", f"output={tmp_path / 'report'}"])
    cli.run("report", cfg, module, spark)
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Does the filter make a better dataset?" in page
    cells = {(m[1], m[2]): float(m[3]) for m in re.finditer(
        r'data-subset="([^"]+)" data-metric="([^"]+)">([0-9.]+)<', page)}
    for name, r in summary["subsets"].items():
        for group in ("zero_shot", "retrieval"):
            for metric, value in r[group].items():
                assert cells[(name, metric)] == pytest.approx(value, abs=5e-4), (name, metric)
    assert cells[("chance", "colour")] == pytest.approx(1 / 6, abs=5e-4)
    # the evaluate table's rows only: other tables on the page also start rows with a name cell
    rows = re.findall(r'<tr><td>([a-z]+)</td><td class="n">[^<]*</td><td class="n" data-subset=', page)
    assert rows == ["filtered", "all", "random", "chance"]


@pytest.mark.slow
def test_shards_given_directly_train_alone(spark, demo_run, tmp_path) -> None:
    """train=<a folder of shards> (from anywhere: here the demo's release shards), no run_dir, no baselines."""
    run_dir = demo_run[0]
    shards = run_dir / "export" / "webdataset"
    cfg, module = cli.prepare("evaluate", [], [f"train={shards}", f"output={tmp_path / 'out'}", *RECIPE])
    summary = cli.run("evaluate", cfg, module, spark)
    released = len(pd.read_parquet(run_dir / "export" / "laion"))
    assert list(summary["subsets"]) == ["given"]
    assert summary["subsets"]["given"]["pairs"] == released and summary["subsets"]["given"]["steps"] == 4
    assert json.loads((tmp_path / "out" / "results.json").read_text())["subsets"] == summary["subsets"]
    with pytest.raises(ConfigError, match="output="):
        cli.prepare("evaluate", [], [f"train={shards}", *RECIPE])
