"""No copy of a listed row in the report or in evaluate's baselines (issue 26), and the two rewrites a
takedown calls on them (report.job.remove_samples, evaluate.job.remove_from_outputs).

A small run directory is written here with pyarrow: six downloaded images, four kept by the filter and two
rejected below the threshold, an image_sha256 blocklist on disk matching one kept row (2) and one rejected
row (5), and export's outputs as export writes them for that list (row 2 in export_removed, the release
holding 1, 3, 4, the list in export's marker). Row 5 never reached export: only the list itself reaches it.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from laion_spark import cli
from laion_spark.config import load_config

COLOURS = {1: (200, 30, 30), 2: (30, 200, 30), 3: (30, 30, 200), 4: (200, 200, 30), 5: (30, 200, 200),
           6: (200, 30, 200)}
KEPT, REJECTED = (1, 2, 3, 4), (5, 6)
LISTED = (2, 5)  # their images are on the list


def _png(rgb) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), rgb).save(out, "PNG")
    return out.getvalue()


IMAGES = {i: _png(rgb) for i, rgb in COLOURS.items()}


def _rows(ids) -> dict:
    return {
        "sample_id": pa.array(list(ids), pa.int64()),
        "url": [f"http://example.com/{i}.png" for i in ids],
        "text": [f"caption number {i}" for i in ids],
        "language": ["en"] * len(ids),
        "status": ["success"] * len(ids),
        "image": pa.array([IMAGES[i] for i in ids], pa.binary()),
        "image_format": ["png"] * len(ids),
        "width": pa.array([32] * len(ids), pa.int32()),
        "height": pa.array([32] * len(ids), pa.int32()),
        "sha256": [hashlib.sha256(IMAGES[i]).hexdigest() for i in ids],
        "md5": [hashlib.md5(IMAGES[i]).hexdigest() for i in ids],
        "sha1": [hashlib.sha1(IMAGES[i]).hexdigest() for i in ids],
    }


def _table(path: Path, columns: dict) -> None:
    path.mkdir(parents=True)
    pq.write_table(pa.table(columns), path / "part-00000.parquet")


def make_run(root: Path) -> Path:
    run = root / "run"
    blocklist = root / "known-images.txt"
    blocklist.write_text("".join(hashlib.sha256(IMAGES[i]).hexdigest() + "\n" for i in LISTED))
    _table(run / "images", _rows(COLOURS))
    scored = {"similarity": pa.array([0.3] * 4, pa.float32()), "clip_model": ["toy"] * 4}
    _table(run / "dataset", {**_rows(KEPT), **scored})
    _table(run / "dataset_rejected", {**_rows(REJECTED), "similarity": pa.array([0.1] * 2, pa.float32()),
                                      "clip_model": ["toy"] * 2, "reason": ["below_threshold"] * 2})
    released = [i for i in KEPT if i not in LISTED]
    _table(run / "export" / "laion", {"SAMPLE_ID": pa.array(released, pa.int64()),
                                      "URL": [f"http://example.com/{i}.png" for i in released]})
    removed = {k: v for k, v in _rows([2]).items() if k != "image"}
    _table(run / "export_removed", {**removed, "reason": ["blocklisted:known-images"]})
    (run / "export" / "_summary.json").write_text(json.dumps({
        "format": "release", "released": len(released), "removed": 1, "reasons": {"blocklisted:known-images": 1},
        "blocklists": [{"name": "known-images", "kind": "image_sha256", "uri": str(blocklist)}]}))
    return run


def _report(spark, run: Path, out: Path) -> Path:
    cfg, module = cli.prepare("report", [], [f"run_dir={run}", f"output={out}"])
    cli.run("report", cfg, module, spark)
    return out


def _thumbnail_bytes() -> dict[int, bytes]:
    from laion_spark.report.job import _thumbnail

    return {i: _thumbnail(data) for i, data in IMAGES.items()}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_report_shows_no_listed_sample_kept_or_rejected(spark, tmp_path) -> None:
    from laion_spark.report.job import thumbnail_name

    run = make_run(tmp_path)
    out = _report(spark, run, tmp_path / "report")
    samples = {p.name for p in (out / "samples").iterdir()}
    want = {thumbnail_name("kept", i).split("/")[1] for i in (1, 3, 4)} | {thumbnail_name("rejected", 6)
                                                                           .split("/")[1]}
    assert samples == want
    thumbs = _thumbnail_bytes()
    on_disk = list(_files(out).values())
    assert len({thumbs[i] for i in COLOURS}) == len(COLOURS)  # each image's thumbnail is its own
    for i in LISTED:
        assert thumbs[i] not in on_disk, i
    page = (out / "index.html").read_text()
    for i in LISTED:
        assert f"caption number {i}<" not in page and f'data-sample="{i}"' not in page
    for i in (1, 3, 4, 6):
        assert f"caption number {i}<" in page


def test_remove_samples_takes_a_sample_off_the_page_and_leaves_the_rest(spark, tmp_path) -> None:
    from laion_spark.report.job import remove_samples, thumbnail_name

    out = _report(spark, make_run(tmp_path), tmp_path / "report")
    before = _files(out)
    done = remove_samples(str(out), [3, 6, 999])
    assert sorted(done, key=lambda d: d["file"]) == sorted([
        {"file": str(out / thumbnail_name("kept", 3)), "removed": 1},
        {"file": str(out / thumbnail_name("rejected", 6)), "removed": 1},
        {"file": str(out / "index.html"), "removed": 2}], key=lambda d: d["file"])
    after = _files(out)
    assert set(before) - set(after) == {thumbnail_name("kept", 3), thumbnail_name("rejected", 6)}
    for name, data in after.items():
        if name != "index.html":
            assert data == before[name], name
    page = after["index.html"].decode()
    assert "caption number 3<" not in page and "caption number 6<" not in page
    assert thumbnail_name("kept", 3) not in page and thumbnail_name("rejected", 6) not in page
    assert "caption number 1<" in page and "caption number 4<" in page
    # the rejected grid had one card: it now says so, as a page without samples does
    assert page.count('data-kind="rejected"') == 0 and page.count('<p class="muted">None.</p>') == 1
    # the rest of the page is as it was: the old page less those two cards (each up to its end)
    expected = before["index.html"].decode()
    for kind, i in (("kept", 3), ("rejected", 6)):
        start = expected.index(f'<div class="card" data-kind="{kind}" data-sample="{i}">')
        expected = expected[:start] + expected[expected.index("</div></div>", start) + len("</div></div>"):]
    assert page == expected.replace('<div class="grid"></div>', '<p class="muted">None.</p>')
    assert remove_samples(str(out), [3, 6]) == [] and _files(out) == after


def test_a_page_written_before_cards_had_ids_loses_the_card_by_its_thumbnail() -> None:
    from laion_spark.report import page
    from laion_spark.report.job import thumbnail_name

    rows = [{"sample_id": -5, "text": "a <b>", "similarity": 0.25, "language": "de"},
            {"sample_id": 7, "text": "other", "similarity": 0.3, "language": "en"}]
    thumbs = {f"kept:{r['sample_id']}": thumbnail_name("kept", r["sample_id"]) for r in rows}
    html = page._cards(rows, thumbs, "kept")
    old = html.replace(' data-sample="-5"', "").replace(' data-sample="7"', "")
    for text in (html, old):
        out, removed = page.without_samples(text, {-5}, {thumbnail_name("kept", -5)})
        assert removed == 1 and "a &lt;b&gt;" not in out and "other" in out
        first = text.index('<div class="card"')
        assert out == text[:first] + text[text.index('<div class="card"', first + 1):]


def _evaluate_cfg(run: Path):
    return load_config([], [f"input={run}", "evaluate.subsets=all", "export.samples_per_shard=2"], stage="evaluate")


def _shard_ids(folder: Path) -> list[int]:
    return sorted(i for p in folder.glob("*.parquet") for i in pq.read_table(p)["sample_id"].to_pylist())


def test_evaluate_baselines_hold_no_listed_image_filtered_or_not(spark, tmp_path) -> None:
    from laion_spark.evaluate import subsets
    from laion_spark.evaluate.job import remove_from_outputs

    run = make_run(tmp_path)
    out = tmp_path / "evaluate"
    sets = subsets.build(spark, str(run), _evaluate_cfg(run), str(out / "shards"), tmp_path / "work")
    shards = out / "shards" / "all"
    assert sets["all"].samples == 4 and _shard_ids(shards) == [1, 3, 4, 6]
    tars = b"".join(p.read_bytes() for p in shards.glob("*.tar"))
    for i in COLOURS:
        assert (IMAGES[i] in tars) == (i not in LISTED), i

    # a takedown of 3 afterwards: the shard holding it rewritten, the other shards as they were
    before = _files(shards)
    done = remove_from_outputs(str(out), [3])
    assert [d["removed"] for d in done] == [1] and _shard_ids(shards) == [1, 4, 6]
    after = _files(shards)
    changed = {name for name in before if after.get(name) != before[name]}
    stem = Path(done[0]["file"]).name[: -len(".tar")]
    assert changed == {f"{stem}.tar", f"{stem}.parquet", f"{stem}_stats.json"}
    assert IMAGES[3] not in after[f"{stem}.tar"]
    assert subsets.count_samples(str(shards / f"{stem}.tar")) == json.loads(after[f"{stem}_stats.json"])["successes"]
    assert remove_from_outputs(str(out), [3]) == [] and _files(shards) == after


def test_a_recorded_takedown_still_applies_once_its_list_file_is_gone(spark, tmp_path) -> None:
    from laion_spark.evaluate.subsets import run_lists, without_listed
    from laion_spark.export.blocked import BlockList
    from laion_spark.takedown import journal

    run = make_run(tmp_path)
    request = tmp_path / "request.txt"
    request.write_text("http://example.com/6.png\n")
    journal.start(spark, str(run), BlockList("request", "url", str(request)), "x" * 64, [6], "2024-01-01T00:00:00Z")
    request.unlink()
    (tmp_path / "known-images.txt").unlink()  # export's list is gone too: export_removed still holds its row 2
    assert [bl.kind for bl in run_lists(str(run))] == ["url_sha256", "sample_id"]
    rows = without_listed(spark, str(run), spark.read.parquet(str(run / "images")))
    assert sorted(r["sample_id"] for r in rows.select("sample_id").collect()) == [1, 3, 4, 5]
