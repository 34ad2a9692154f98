"""Completion markers: `<output>/_summary.json` is written last, only when a stage's check held; it
holds the output hash and its inputs' marker hashes; a failed check leaves nothing that looks complete."""

from __future__ import annotations

import json
import logging

import pytest
from spark_servers import dedupe_input_rows

from laion_spark import cli
from laion_spark import schemas as S
from laion_spark.checksum import content_hash


def _candidates(spark, path, marker: dict | None):
    spark.createDataFrame(dedupe_input_rows(), S.CANDIDATES).coalesce(1).write.parquet(str(path))
    if marker is not None:
        (path / "_summary.json").write_text(json.dumps(marker))


def _dedupe(spark, tmp_path, inp, out, *extra):
    cfg, module = cli.prepare("dedupe", [], [f"input={inp}", f"output={out}", *extra])
    return cli.run("dedupe", cfg, module, spark)


def test_marker_chains_inputs_and_hashes_output_keys(spark, tmp_path, caplog):
    cand = tmp_path / "candidates"
    _candidates(spark, cand, {"stage": "extract", "rows": 1})
    summary = _dedupe(spark, tmp_path, cand, tmp_path / "pairs")
    written = json.loads((tmp_path / "pairs" / "_summary.json").read_text())
    assert written == json.loads(json.dumps(summary, default=str))
    assert written["rows_in"] == 4 and written["pairs"] == 3  # the counts, from the stage's own check
    assert written["inputs"] == [{"key": "input", "table": "candidates", "uri": str(cand),
                                  "marker": content_hash(str(cand / "_summary.json"))}]
    assert written["output_config"]["dedupe.key"] == "url_text" and "mode" not in written["output_config"]
    # a changed upstream marker changes the downstream marker's inputs; the same keys the same hash
    (cand / "_summary.json").write_text(json.dumps({"stage": "extract", "rows": 2}))
    again = _dedupe(spark, tmp_path, cand, tmp_path / "pairs2")
    assert again["inputs"][0]["marker"] != written["inputs"][0]["marker"]
    assert again["output_hash"] == written["output_hash"]
    other = _dedupe(spark, tmp_path, cand, tmp_path / "pairs3", "dedupe.key=url")
    assert other["output_hash"] != written["output_hash"]
    # an input of ours without its marker: a warning, and the marker says so
    bare = tmp_path / "bare"
    _candidates(spark, bare, None)
    with caplog.at_level(logging.WARNING, logger="laion_spark.marker"):
        unmarked = _dedupe(spark, tmp_path, bare, tmp_path / "pairs4")
    assert unmarked["inputs"][0]["marker"] is None
    assert any("has no _summary.json: it is incomplete" in r.getMessage() and str(bare) in r.getMessage()
               for r in caplog.records)


def test_failed_row_check_leaves_no_marker_and_no_success_flag(spark, tmp_path, monkeypatch):
    from laion_spark.download import job as download_job
    from laion_spark.download import transform as download_transform

    pairs = tmp_path / "pairs"
    rows = [(i, f"not a url {i}", f"text {i}") for i in range(5)]  # invalid_url rows: no network needed
    spark.createDataFrame(rows, "sample_id long, url string, text string").write.parquet(str(pairs))
    real = download_transform.download_images

    def loses_a_row(df, cfg, partitions, *rest):  # a bug that drops one row between download and write
        return real(df, cfg, partitions, *rest).limit(4)

    monkeypatch.setattr(download_transform, "download_images", loses_a_row)
    out = tmp_path / "images"
    cfg, module = cli.prepare("download", [], [f"input={pairs}", f"output={out}"])
    with pytest.raises(download_job.DownloadError, match="row accounting failed"):
        cli.run("download", cfg, module, spark)
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert "_summary.json" not in names and "_SUCCESS" not in names
    failed = json.loads((out / "_FAILED.json").read_text())
    assert failed["stage"] == "download" and "row accounting failed" in failed["error"]
    # the same run without the bug: complete, and the failure note is gone
    monkeypatch.setattr(download_transform, "download_images", real)
    cfg, module = cli.prepare("download", [], [f"input={pairs}", f"output={out}", "mode=overwrite"])
    summary = cli.run("download", cfg, module, spark)
    assert summary["rows_out"] == 5
    assert (out / "_summary.json").is_file() and not (out / "_FAILED.json").exists()


def test_overwrite_drops_the_old_marker_before_the_run(spark, tmp_path, monkeypatch):
    # a rerun that dies half-way must not leave the earlier run's marker beside its own rows
    cand = tmp_path / "candidates"
    _candidates(spark, cand, {"stage": "extract"})
    out = tmp_path / "pairs"
    _dedupe(spark, tmp_path, cand, out)
    assert (out / "_summary.json").is_file()
    from laion_spark.dedupe import job as dedupe_job

    def dies(spark, cfg):
        assert not (out / "_summary.json").exists()  # gone before the stage does any work
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(dedupe_job, "run", dies)
    cfg, module = cli.prepare("dedupe", [], [f"input={cand}", f"output={out}", "mode=overwrite"])
    with pytest.raises(KeyboardInterrupt):
        cli.run("dedupe", cfg, module, spark)
    assert not (out / "_summary.json").exists() and (out / "_FAILED.json").is_file()
