"""pipeline: the demo's generated crawl (real WARC/WAT files) and its loopback image server, the toy CLIP
and the toy heads, through every stage under one run_dir; then the same command again, and again after
changes, each time checking which steps ran against the dependencies written out here (which tables each
stage reads), not against the code's own plan. One shared sequence of runs; each test reads its part."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from laion_spark import cli
from laion_spark import schemas as S
from laion_spark.demo.crawl import write_demo_crawl
from laion_spark.demo.images import DemoImageServer
from laion_spark.demo.job import toy_threshold
from laion_spark.toy.heads import ensure_heads
from laion_spark.toy.train import ensure_checkpoint
from tests import test_serve_browser
from tests.spark_servers import connect_server

pytestmark = pytest.mark.slow
browser = test_serve_browser.browser  # the headless chromium fixture, shared

ALL = ["extract", "dedupe", "download", "embed", "filter", "tag", "export", "index:image", "index:text", "report"]
# who reads what (DESIGN.md's tables; tag reads images so that a threshold leaves its models alone):
# a step reruns when one of these changed
READS = {"extract": [], "dedupe": ["extract"], "download": ["dedupe"], "embed": ["download"],
         "filter": ["download", "embed"], "tag": ["download", "embed", "filter"], "export": ["filter", "tag", "embed"],
         "index:image": ["embed", "export"], "index:text": ["embed", "export"], "report": ALL[:-1]}


def downstream(changed: set[str]) -> list[str]:
    """Steps that rerun when `changed` rerun: themselves and, in order, every step reading a rerun one."""
    out = set(changed)
    for step in ALL:
        if any(r in out for r in READS[step]):
            out.add(step)
    return [s for s in ALL if s in out]


def ids(uri, column=S.SAMPLE_ID) -> list[int]:
    return sorted(pq.read_table(uri, columns=[column]).column(column).to_pylist())


def statuses(uri) -> dict[int, str]:
    rows = pq.read_table(uri, columns=[S.SAMPLE_ID, S.STATUS]).to_pylist()
    out = {r[S.SAMPLE_ID]: r[S.STATUS] for r in rows}
    assert len(out) == len(rows), "a sample_id twice"
    return out


def pipeline(spark, args: list[str]) -> dict:
    cfg, module = cli.prepare("pipeline", [], args)
    return cli.run("pipeline", cfg, module, spark)


def at(threshold: float) -> list[str]:
    return [f"filter.threshold.{g}={threshold}" for g in ("en", "multi", "nolang")]


@pytest.fixture(scope="module")
def crawl(tmp_path_factory):
    """The demo's crawl files, the toy CLIP, its threshold and the toy heads -> base_args(server)."""
    root = tmp_path_factory.mktemp("crawl")
    files = write_demo_crawl(str(root / "crawl"), seed=0)
    checkpoint, heads = ensure_checkpoint(), ensure_heads()
    threshold = toy_threshold(checkpoint)

    def base_args(server) -> list[str]:
        return [f"input={','.join(files)}", "download.allowed_networks=127.0.0.1/32",
                f"download.connect_to=*:80=127.0.0.1:{server.port},*:443=127.0.0.1:{server.closed_port}",
                f"embed.model={checkpoint.model}", f"embed.pretrained={checkpoint.checkpoint}",
                f"embed.model_config={checkpoint.model_config}", "index.candidates=1", *heads.overrides(),
                *at(threshold), "export.samples_per_shard=8", "export.npy_rows_per_shard=8"]

    return {"base_args": base_args, "threshold": threshold}


@pytest.fixture(scope="module")
def runs(spark, crawl, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    threshold = crawl["threshold"]
    run_dir = root / "run"
    out = {"run_dir": run_dir, "root": root}
    with DemoImageServer() as server:
        base = crawl["base_args"](server)
        first = [*base, f"run_dir={run_dir}"]
        out["first"] = pipeline(spark, first)
        out["first_release"] = ids(run_dir / "export" / "laion", "SAMPLE_ID")
        out["first_pairs"] = ids(run_dir / "pairs")
        similarity = pq.read_table(run_dir / "embeddings", columns=[S.SAMPLE_ID, S.SIMILARITY]).to_pylist()
        out["first_similarity"] = {r[S.SAMPLE_ID]: r[S.SIMILARITY] for r in similarity}
        out["first_statuses"] = statuses(run_dir / "images")
        out["first_dataset"] = ids(run_dir / "dataset")  # later runs lower the threshold: more rows
        out["again"] = pipeline(spark, first)
        changed = [*base, f"run_dir={run_dir}", *at(threshold - 0.02)]
        out["threshold"] = pipeline(spark, changed)
        release = pq.read_table(run_dir / "export" / "laion").to_pylist()
        blocked = sorted(release, key=lambda r: r["URL"])[0]
        (root / "takedowns.txt").write_text(f"# a removal request\n{blocked['URL']}\n")
        listed = [*changed, f"export.blocklist.url={root / 'takedowns.txt'}"]
        out["blocked"] = blocked
        out["blocklist"] = pipeline(spark, listed)
        out["listed_release"] = ids(run_dir / "export" / "laion", "SAMPLE_ID")
        out["only_tag"] = pipeline(spark, [*listed, "pipeline.from=tag", "until=tag"])
        (run_dir / "embeddings" / "_summary.json").unlink()  # as a run killed inside embed leaves it
        out["incomplete"] = pipeline(spark, listed)
        out["manifest"] = json.loads((run_dir / "manifest.json").read_text())
        out["incremental"] = pipeline(spark, [*[a for a in listed if not a.startswith("run_dir=")],
                                              f"run_dir={root / 'next'}", f"previous={run_dir}"])
    yield out
    shutil.rmtree(root, ignore_errors=True)


def ran(summary) -> list[str]:
    return [s["step"] for s in summary["steps"] if s["action"] == "run"]


def test_the_first_run_builds_every_table_and_a_manifest(runs):
    run_dir, first = runs["run_dir"], runs["first"]
    assert ran(first) == ALL
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert runs["manifest"]["status"] == "complete" and manifest["status"] == "complete"
    for table in ("candidates", "pairs", "images", "embeddings", "dataset", "dataset_rejected", "tags", "export",
                  "export_removed", "index/image", "index/text"):
        assert (run_dir / table / "_summary.json").is_file(), table
    versions = runs["manifest"]["versions"]
    assert versions["java"] and versions["spark"].startswith("4.") and versions["torch"] and versions["faiss"]
    checkpoints = runs["manifest"]["checkpoints_and_lists"]
    assert checkpoints["tag.punsafe.checkpoint"].startswith("sha256:")
    # nothing blocklisted in the first run: the release is the dataset; tag scored every images row;
    # both indices hold exactly the release
    assert runs["first_release"] and runs["first_release"] == runs["first_dataset"]
    steps = {s["step"]: s for s in first["steps"]}
    assert steps["tag"]["counts"]["tagged"] == steps["download"]["counts"]["rows_out"]
    assert steps["export"]["counts"]["released"] == len(runs["first_release"]) == steps["filter"]["counts"]["dataset"]
    assert all(s["seconds"] is not None and s["started"] <= s["ended"] for s in first["steps"])


def test_the_same_command_again_runs_nothing(runs):
    again = runs["again"]
    assert ran(again) == [] and [s["step"] for s in again["steps"]] == ALL
    assert all(s["action"] == "skipped" and s["why"].startswith("complete") for s in again["steps"])


def test_a_new_threshold_reruns_filter_and_what_reads_it(runs):
    # tag too: its watermark detector scores the dataset's rows (tag.dataset)
    want = ["filter", "tag", "export", "index:image", "index:text", "report"]
    assert ran(runs["threshold"]) == downstream({"filter"}) == want
    why = {s["step"]: s["why"] for s in runs["threshold"]["steps"]}
    assert why["filter"] == "config changed: filter.threshold.en, filter.threshold.multi, filter.threshold.nolang"


def test_a_new_hash_list_reruns_export_and_the_indices_only(runs):
    run_dir, blocked = runs["run_dir"], runs["blocked"]
    assert ran(runs["blocklist"]) == downstream({"export"}) == ["export", "index:image", "index:text", "report"]
    assert blocked["SAMPLE_ID"] not in runs["listed_release"]
    removed = pq.read_table(run_dir / "export_removed").to_pylist()
    assert [(r[S.SAMPLE_ID], r[S.REASON]) for r in removed] == [(blocked["SAMPLE_ID"], "blocklisted:takedowns")]


def test_from_and_until(runs):
    only = runs["only_tag"]
    assert [s["step"] for s in only["steps"]] == ALL[: ALL.index("tag") + 1]
    assert ran(only) == ["tag"]
    assert next(s for s in only["steps"] if s["step"] == "tag")["why"] == "pipeline.from asks for it"


def test_an_incomplete_stage_is_redone_with_what_depends_on_it(runs):
    run_dir, incomplete = runs["run_dir"], runs["incomplete"]
    assert ran(incomplete) == downstream({"embed"})
    assert next(s for s in incomplete["steps"] if s["step"] == "embed")["why"].startswith("incomplete")
    # the final tables are whole again: the indices hold exactly the release, which holds no blocked row
    release = ids(run_dir / "export" / "laion", "SAMPLE_ID")
    assert release == runs["listed_release"]
    for field in ("image", "text"):
        assert ids(run_dir / "index" / field / "metadata") == release, field
    embedded = ids(run_dir / "embeddings")
    assert len(embedded) == len(set(embedded))


def test_an_incremental_crawl_fetches_only_what_is_new(runs):
    nxt = runs["incremental"]
    steps = {s["step"]: s for s in nxt["steps"]}
    assert steps["dedupe"]["counts"]["removed_previous"] == len(runs["first_pairs"])
    assert steps["dedupe"]["counts"]["pairs"] == 0 and steps["download"]["counts"]["rows_in"] == 0
    assert steps["index:image"]["action"] == steps["index:text"]["action"] == "empty"
    assert (runs["root"] / "next" / "manifest.json").is_file()


def test_bad_pipeline_keys_are_clear_errors(tmp_path):
    from laion_spark.config import ConfigError

    for args, match in (([f"run_dir={tmp_path}", "input=x.warc.gz", "until=nope"], "pipeline.until=nope"),
                        ([f"run_dir={tmp_path}", "input=x.warc.gz", "from=index", "until=embed"], "comes after")):
        with pytest.raises(ConfigError, match=match):
            cli.prepare("pipeline", [], args)
    assert dataclasses.is_dataclass(cli.prepare("pipeline", [], [f"run_dir={tmp_path}", "input=x.warc.gz"])[0])


def count(uri, where=None) -> int:
    table = pq.read_table(uri)
    if where:
        return sum(1 for v in table.column(where[0]).to_pylist() if v == where[1])
    return table.num_rows


def test_the_report_page_loads_and_its_funnel_is_the_tables(runs, browser):
    # the report of the last run in run_dir, in headless chromium: every image (plots, thumbnails) loads,
    # and each funnel count is the row count of its table, counted here with pyarrow
    run_dir = runs["run_dir"]
    page = run_dir / "report" / "index.html"
    assert page.is_file()
    browser.get(page.as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
    assert len(images) >= 10
    assert all(complete and width > 0 for _, complete, width in images), images
    plots = {src for src, _, _ in images if src.startswith("plots/")}
    assert {"plots/funnel.png", "plots/similarity.png", "plots/statuses.png", "plots/punsafe.png",
            "plots/recall.png"} <= plots
    # each thumbnail names its row: a kept one is a released row, a rejected one a row the filter rejected,
    # never the blocklisted one
    shown_ids = {"kept": set(), "rejected": set()}
    for src, _, _ in images:
        match = re.fullmatch(r"samples/(kept|rejected)_([0-9a-f]{16})\.jpg", src)
        if match:
            shown_ids[match[1]].add(int.from_bytes(bytes.fromhex(match[2]), "big", signed=True))
    assert shown_ids["kept"] and shown_ids["rejected"], images
    assert shown_ids["kept"] <= set(ids(run_dir / "export" / "laion", "SAMPLE_ID"))
    assert shown_ids["rejected"] <= set(ids(run_dir / "dataset_rejected"))
    assert runs["blocked"]["SAMPLE_ID"] not in shown_ids["kept"] | shown_ids["rejected"]
    cells = browser.execute_script(
        "return Array.from(document.querySelectorAll('td[data-table]')).map(c => [c.dataset.table, c.dataset.rows,"
        " c.textContent])")
    shown = {t: int(n) for t, n, _ in cells}
    assert all(text.replace(",", "") == n for _, n, text in cells)
    want = {"candidates": count(run_dir / "candidates"), "pairs": count(run_dir / "pairs"),
            "images": count(run_dir / "images", (S.STATUS, S.SUCCESS)), "dataset": count(run_dir / "dataset"),
            "export/laion": count(run_dir / "export" / "laion"),
            "index/image": count(run_dir / "index" / "image" / "metadata"),
            "index/text": count(run_dir / "index" / "text" / "metadata")}
    assert shown == want
    # every rejection reason the filter wrote is on the page with its count
    reasons = {}
    for r in pq.read_table(run_dir / "dataset_rejected", columns=[S.REASON]).column(S.REASON).to_pylist():
        reasons[r] = reasons.get(r, 0) + 1
    text = browser.find_element("tag name", "body").text
    assert f"below_threshold {reasons['below_threshold']}" in text
    assert f"blocklisted:takedowns {1}" in text


def same_release(runs, crawl, release: list[int]) -> None:
    """A release built elsewhere (Connect, a cluster) -> the classic first run's, but for pairs whose
    similarity sits within float noise of the threshold (another batching may put them either side)."""
    first = set(runs["first_release"])
    differ = first ^ set(release)
    near = {sid for sid, sim in runs["first_similarity"].items() if abs(sim - crawl["threshold"]) < 1e-4}
    assert release and differ <= near, sorted(differ - near)


@pytest.fixture(scope="module")
def connect_url(tmp_path_factory):
    with connect_server(tmp_path_factory.mktemp("connect")) as url:
        yield url


def test_the_pipeline_through_spark_connect(runs, crawl, connect_url, tmp_path):
    # the whole pipeline in a Connect client (a subprocess), twice: the second run skips every step
    from tests.test_connect import STAGES_CLIENT, _run_client

    run_dir = tmp_path / "run"
    with DemoImageServer() as server:
        args = [*crawl["base_args"](server), f"run_dir={run_dir}"]
        res = _run_client(STAGES_CLIENT, connect_url, tmp_path, json.dumps([["pipeline", args],
                                                                              ["pipeline", args]]),
                          LAION_SPARK_PROGRESS="1")
    assert res.returncode == 0, res.stderr[-6000:]
    # progress from the Connect client's progress handler (the server's UI is not the client's to show)
    assert re.search(r"pipeline \S+: tasks \d+/\d+ \(\d+%\)", res.stderr), res.stderr[-6000:]
    first, second = json.loads(next(line for line in res.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert ran(first) == ALL and ran(second) == []
    release = ids(run_dir / "export" / "laion", "SAMPLE_ID")
    assert ids(run_dir / "pairs") == runs["first_pairs"]
    same_release(runs, crawl, release)
    assert ids(run_dir / "index" / "image" / "metadata") == release
    assert (run_dir / "report" / "index.html").is_file()


def wait_for_chunks(folder: Path, n: int, proc, log: Path, timeout: float = 600) -> None:
    """Until `n` chunks under folder have their marker (the run still going) -> None."""
    deadline = time.monotonic() + timeout
    while len(list(folder.glob("*/_chunk.json"))) < n:
        assert proc.poll() is None, f"the run ended before {folder.name} had {n} chunks:\n{log.read_text()[-6000:]}"
        assert time.monotonic() < deadline, f"no {n} chunks in {folder} after {timeout}s"
        time.sleep(0.1)


def test_the_pipeline_on_a_standalone_cluster_survives_lost_workers(runs, crawl, tmp_path):
    # ./spark-submit.sh pipeline on a master and two workers on 127.0.0.1, every stage's Python tasks in
    # their executors. Once download has committed its first chunk, one worker is killed by its pid (its
    # whole process group: worker, executor and Python workers at once, as a lost machine) and a fresh one
    # joins, as a cluster manager would start; once embed has committed its first chunk, the other first
    # worker is killed. The run finishes with the rows of the undisturbed classic run. Until export: the
    # indices on a cluster are test_spark_submit.py's, and the report runs on the driver alone.
    from tests.spark_servers import cluster, kill_group, spark_env, start_submit

    run_dir, log = tmp_path / "run", tmp_path / "submit.log"
    chunked = ["download.chunk_rows=34", "embed.chunk_rows=34",  # 3 chunks each (~90 rows): a kill lands between
               "pipeline.until=export"]
    with cluster(tmp_path / "cluster", workers=2, cores=1, memory="1500m") as c, DemoImageServer() as server:
        first, second = c.workers
        env = spark_env(tmp_path, LAION_SPARK_PROGRESS="2")
        proc = start_submit(["pipeline", *crawl["base_args"](server), f"run_dir={run_dir}", *chunked, "--",
                             "--master", c.url, "--executor-memory", "1g", "--total-executor-cores", "2"],
                            env, tmp_path, log)
        try:
            wait_for_chunks(Path(f"{run_dir}/images_chunks"), 1, proc, log)
            in_download = not (run_dir / "images" / "_summary.json").exists()
            c.kill_worker(first)
            c.add_worker()
            wait_for_chunks(Path(f"{run_dir}/embeddings_chunks"), 1, proc, log)
            in_embed = not (run_dir / "embeddings" / "_summary.json").exists()
            c.kill_worker(second)
            returncode = proc.wait(timeout=900)
        finally:
            kill_group(proc.pid, proc=proc)
        url = c.url
    text = log.read_text(errors="replace")
    assert returncode == 0, text[-6000:]
    assert in_download and in_embed  # each kill landed inside its stage
    assert url in text and re.search(r"[Ll]ost executor", text), text[-6000:]  # Spark saw its executors go
    # progress people can follow: where the UI is, and lines with tasks done and time left
    ours = "\n".join(line for line in text.splitlines() if "laion_spark" in line)
    assert re.search(r"Spark UI: http://[^\s/]+:\d+ ", ours), ours[-6000:]
    assert re.search(r"pipeline (download|embed|extract|dedupe|filter|tag|export): tasks \d+/\d+", ours), ours[-6000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert [s["step"] for s in manifest["steps"]] == ALL[: ALL.index("export") + 1]
    # exactly the undisturbed run's rows: the same pairs, one images row each with the same status, one
    # embedding for each image the classic run embedded, and its release
    assert ids(run_dir / "pairs") == runs["first_pairs"]
    assert statuses(run_dir / "images") == runs["first_statuses"]
    embedded = ids(run_dir / "embeddings")
    assert embedded == sorted(runs["first_similarity"]) and len(embedded) == len(set(embedded))
    release = ids(run_dir / "export" / "laion", "SAMPLE_ID")
    same_release(runs, crawl, release)


def file_hashes(root: Path) -> dict[str, str]:
    # Hadoop's .crc checksum files are its bookkeeping, not data (a rewritten file loses its stale one)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*")
            if p.is_file() and not p.name.endswith(".crc")}


def served_bytes(server, url: str) -> bytes:
    """What the demo image server sends for url (fetched here, as download did: the URL's host as Host)."""
    parts = urllib.parse.urlsplit(url)
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{parts.path}", headers={"Host": parts.netloc})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def test_takedown_removes_rows_in_place_and_a_rerun_keeps_them_out(spark, runs, crawl, tmp_path):
    # a copy of the finished run; one row taken down by URL (written with an upper-case host: it matches
    # once normalised), one by the SHA-256 of its image as the server sent it
    import faiss
    import numpy as np
    import webdataset as wds

    run_dir = tmp_path / "run"
    shutil.copytree(runs["run_dir"], run_dir)
    before = file_hashes(run_dir)
    release = sorted(pq.read_table(run_dir / "export" / "laion").to_pylist(), key=lambda r: r["SAMPLE_ID"])
    by_url, by_image = release[1], release[-2]
    host = urllib.parse.urlsplit(by_url["URL"]).netloc
    (tmp_path / "urls.txt").write_text(by_url["URL"].replace(host, host.upper(), 1) + "\n")
    with DemoImageServer() as server:
        digest = hashlib.sha256(served_bytes(server, by_image["URL"])).hexdigest()
    (tmp_path / "images.txt").write_text(f"# reported\n{digest}\n")
    first = pipeline_like("takedown", spark, [f"run_dir={run_dir}", f"list={tmp_path / 'urls.txt'}"])
    second = pipeline_like("takedown", spark, [f"run_dir={run_dir}", f"list={tmp_path / 'images.txt'}",
                                                "kind=image_sha256"])
    assert first["sample_ids"] == [by_url["SAMPLE_ID"]] and second["sample_ids"] == [by_image["SAMPLE_ID"]]
    gone = {by_url["SAMPLE_ID"], by_image["SAMPLE_ID"]}
    left = sorted({r["SAMPLE_ID"] for r in release} - gone)

    # every published output lacks them; every other row is as it was
    assert ids(run_dir / "export" / "laion", "SAMPLE_ID") == left
    for sub in (run_dir / "export" / "subsets").iterdir():
        was = set(ids(runs["run_dir"] / "export" / "subsets" / sub.name, "SAMPLE_ID"))
        assert set(ids(sub, "SAMPLE_ID")) == was - gone, sub.name
    tars = sorted(str(p) for p in (run_dir / "export" / "webdataset").glob("*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False, empty_check=False))
    assert sorted(json.loads(s["json"])["sample_id"] for s in samples) == left
    vectors = {}
    for meta in (run_dir / "export" / "emb").glob("*/metadata/metadata_*.parquet"):
        shard = meta.stem.split("_")[-1]
        img = np.load(meta.parents[1] / "img_emb" / f"img_emb_{shard}.npy")
        vectors.update(zip(pq.read_table(meta).column("sample_id").to_pylist(), img, strict=True))
    assert sorted(vectors) == left
    embedded = {r[S.SAMPLE_ID]: np.asarray(r[S.IMAGE_EMBEDDING], np.float16) for r in
                pq.read_table(runs["run_dir"] / "embeddings", columns=[S.SAMPLE_ID, S.IMAGE_EMBEDDING]).to_pylist()}
    assert all(r[S.IMAGE_EMBEDDING] is None for r in pq.read_table(run_dir / "embeddings").to_pylist()
               if r[S.SAMPLE_ID] in gone)  # the run's own table keeps the rows, not their vectors
    assert all(np.array_equal(vectors[i], embedded[i]) for i in left)  # each kept row still beside its vector
    for field in ("image", "text"):
        index = faiss.read_index(str(run_dir / "index" / field / "knn.index"))
        assert index.ntotal == len(left) and ids(run_dir / "index" / field / "metadata") == left
    queries = np.stack([embedded[i].astype(np.float32) for i in sorted(gone)])
    _, found = faiss.read_index(str(run_dir / "index" / "image" / "knn.index")).search(queries, len(left))
    assert not gone & set(found.ravel().tolist())

    # only the files that held them changed: those reported, their companions, the counts, the journal
    after = file_hashes(run_dir)
    changed = {p for p in {*before, *after} if after.get(p) != before.get(p)}
    rewritten = {str(Path(f["file"]).relative_to(run_dir)) for s in (first, second) for f in s["files"]}
    expected = {"manifest.json", *rewritten}
    for r in rewritten:
        path = Path(r)
        if path.suffix == ".tar":  # a shard: its parquet and stats too
            expected |= {str(path.with_suffix(".parquet")), str(path.with_name(path.stem + "_stats.json"))}
        elif path.parent.name == "metadata" and path.name.startswith("metadata_"):  # an .npy shard's rows
            shard = path.stem.split("_")[-1]
            expected |= {str(path.parents[1] / n / f"{n}_{shard}.npy") for n in ("img_emb", "text_emb")}
    bookkeeping = {p for p in changed if p.startswith(("takedowns/", "export_removed/"))
                   or Path(p).name in ("tombstones.npy", "index_infos.json")}
    assert changed - bookkeeping == expected - bookkeeping, sorted(changed ^ expected)
    assert {str(Path(p).relative_to("index/image")) for p in bookkeeping if p.startswith("index/image/")} == {
        "tombstones.npy", "index_infos.json"}
    assert any(r.endswith(".tar") for r in rewritten) and len(tars) > 1
    untouched_tars = [t for t in tars if str(Path(t).relative_to(run_dir)) not in rewritten]
    assert untouched_tars and all(after[str(Path(t).relative_to(run_dir))] == before[str(Path(t).relative_to(run_dir))]
                                  for t in untouched_tars)
    removed = {r[S.SAMPLE_ID]: r[S.REASON] for r in pq.read_table(run_dir / "export_removed").to_pylist()}
    assert removed[by_url["SAMPLE_ID"]] == "takedown:urls" and removed[by_image["SAMPLE_ID"]] == "takedown:images"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [t["removed"] for t in manifest["takedowns"]] == [1, 1]
    # the counts the run publishes follow: export's marker and card, the index's marker
    summary = json.loads((run_dir / "export" / "_summary.json").read_text())
    assert summary["released"] == len(left) and summary["reasons"]["takedown:urls"] == 1
    assert summary["webdataset"]["rows"] == len(left)
    assert summary["removed"] == len(pq.read_table(run_dir / "export_removed"))
    assert f"| release (`laion/`) | {len(left)} |" in (run_dir / "export" / "README.md").read_text()
    assert json.loads((run_dir / "index" / "image" / "_summary.json").read_text())["indexed"] == len(left)
    # the same list again: a no-op that says so
    again = pipeline_like("takedown", spark, [f"run_dir={run_dir}", f"list={tmp_path / 'urls.txt'}"])
    assert again["already_applied"] and again["files"] == [] and file_hashes(run_dir) == after

    # a later pipeline run (the same command) re-applies both by what they recorded, though one list file is
    # gone and the other edited: export reruns and still releases neither row. Two new lists with one
    # name (two request.txt) are two lists, not a failed export
    (tmp_path / "urls.txt").unlink()
    (tmp_path / "images.txt").write_text("# nothing any more\n")
    requests = []
    for folder, row in (("a", release[2]), ("b", release[3])):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "request.txt").write_text(row["URL"] + "\n")
        requests.append(str(tmp_path / folder / "request.txt"))
    with DemoImageServer() as server:
        rerun = pipeline(spark, [*crawl["base_args"](server), f"run_dir={run_dir}", *at(crawl["threshold"] - 0.02),
                                 f"export.blocklist.url={runs['root'] / 'takedowns.txt'},{','.join(requests)}"])
    assert "export" in ran(rerun)
    assert ids(run_dir / "export" / "laion", "SAMPLE_ID") == sorted(set(left) - {release[2]["SAMPLE_ID"],
                                                                               release[3]["SAMPLE_ID"]})
    removed = {r[S.SAMPLE_ID]: r[S.REASON] for r in pq.read_table(run_dir / "export_removed").to_pylist()}
    assert removed[release[2]["SAMPLE_ID"]] == "blocklisted:request"
    assert removed[release[3]["SAMPLE_ID"]] == "blocklisted:request-2"
    assert removed[by_url["SAMPLE_ID"]].startswith("blocklisted:takedown-0001-urls")
    assert removed[by_image["SAMPLE_ID"]].startswith("blocklisted:takedown-0002-images")
    for field in ("image", "text"):
        assert not gone & set(ids(run_dir / "index" / field / "metadata"))
    assert json.loads((run_dir / "manifest.json").read_text())["takedowns"] == manifest["takedowns"]


def post(url: str, body: dict):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


# the tables that keep a taken-down row for their own row accounting (its url, never its image or vectors)
BOOKKEEPING = ("candidates", "pairs", "images", "dataset", "dataset_rejected", "embeddings", "tags", "export_removed",
               "index/image_rejected", "index/text_rejected")


def test_takedown_leaves_no_copy_on_an_on_disk_index_resumes_and_the_running_service_follows(
        spark, runs, crawl, tmp_path, monkeypatch):
    # a copy of the run whose image index is rebuilt with its lists on disk (as every index over 1 GiB);
    # a service answering from it; one row listed by URL and one image by its SHA-256
    import numpy as np

    from laion_spark.serve.job import build_server
    from laion_spark.takedown import rewrite as W

    run_dir = tmp_path / "run"
    shutil.copytree(runs["run_dir"], run_dir)
    pipeline_like("index", spark, [f"input={run_dir / 'embeddings'}", f"output={run_dir / 'index' / 'image'}",
                                   f"index.dataset={run_dir / 'export' / 'laion'}", "index.field=image",
                                   "index.ondisk=true", "index.candidates=1", "mode=overwrite"])
    assert (run_dir / "index" / "image" / "knn.ivfdata").is_file()
    release = sorted(pq.read_table(run_dir / "export" / "laion").to_pylist(), key=lambda r: r["SAMPLE_ID"])
    by_url, by_image = release[0], release[-1]
    gone = {by_url["SAMPLE_ID"], by_image["SAMPLE_ID"]}
    stored = {r[S.SAMPLE_ID]: r[S.IMAGE] for r in pq.read_table(run_dir / "images", columns=[S.SAMPLE_ID, S.IMAGE])
              .to_pylist() if r[S.SAMPLE_ID] in gone}
    vectors = {r[S.SAMPLE_ID]: np.asarray(r[S.IMAGE_EMBEDDING], np.float32) for r in
               pq.read_table(run_dir / "embeddings", columns=[S.SAMPLE_ID, S.IMAGE_EMBEDDING]).to_pylist()
               if r[S.SAMPLE_ID] in gone}
    (tmp_path / "urls.txt").write_text(by_url["URL"] + "\n")
    with DemoImageServer() as images:
        digest = hashlib.sha256(served_bytes(images, by_image["URL"])).hexdigest()
    (tmp_path / "hashes.txt").write_text(digest + "\n")

    cfg, _ = cli.prepare("serve", [], [f"input={run_dir / 'index'}", f"serve.images={run_dir / 'images'}",
                                       "serve.port=0", f"search.cache_dir={tmp_path / 'cache'}"])
    server = build_server(cfg)
    server.start()
    try:
        def answers(sample_id: int) -> set[int]:
            found = set()
            for name in ("image", "text"):
                body = {"embedding_input": vectors[sample_id].tolist(), "indice_name": name, "num_images": 20,
                        "num_result_ids": 20, "deduplicate": False, "use_safety_model": False}
                found |= {r["id"] for r in post(server.url + "/knn-service", body)}
                meta = post(server.url + "/metadata", {"indice_name": name, "ids": sorted(gone)})
                found |= {m["id"] for m in meta if m.get("metadata")}
            return found

        assert gone <= answers(by_url["SAMPLE_ID"]) | answers(by_image["SAMPLE_ID"])
        assert status_of(f"{server.url}/thumb/image/{by_url['SAMPLE_ID']}") == 200

        # a takedown killed half-way (after its journal and the tombstones) resumes when run again
        real = W.webdataset_shards
        monkeypatch.setattr(W, "webdataset_shards", lambda *a: (_ for _ in ()).throw(RuntimeError("killed")))
        with pytest.raises(RuntimeError, match="killed"):
            pipeline_like("takedown", spark, [f"run_dir={run_dir}", f"list={tmp_path / 'urls.txt'}"])
        assert not answers(by_url["SAMPLE_ID"]) & gone - {by_image["SAMPLE_ID"]}  # tombstoned already
        assert "takedowns" not in json.loads((run_dir / "manifest.json").read_text())
        monkeypatch.setattr(W, "webdataset_shards", real)
        first = pipeline_like("takedown", spark, [f"run_dir={run_dir}", f"list={tmp_path / 'urls.txt'}"])
        second = pipeline_like("takedown", spark, [f"run_dir={run_dir}", f"list={tmp_path / 'hashes.txt'}",
                                                    "kind=image_sha256"])
        assert first["resumed"] and first["sample_ids"] == [by_url["SAMPLE_ID"]]
        assert second["sample_ids"] == [by_image["SAMPLE_ID"]]

        # the running service, never restarted: no answer, metadata or thumbnail of either row
        assert not (answers(by_url["SAMPLE_ID"]) | answers(by_image["SAMPLE_ID"])) & gone
        for sample_id in gone:
            assert status_of(f"{server.url}/thumb/image/{sample_id}") == 404
        assert status_of(f"{server.url}/thumb/image/{release[1]['SAMPLE_ID']}") == 200
    finally:
        server.stop()

    # every file under run_dir, byte by byte: neither image, neither vector, anywhere; the URL only in
    # the bookkeeping tables' rows; every parquet file read, not only its bytes
    url = by_url["URL"].encode()
    needles = [*stored.values(), *(v.tobytes() for v in vectors.values()),
               *(v.astype(np.float16).tobytes() for v in vectors.values())]
    removed_rows = pq.read_table(run_dir / "export_removed").to_pylist()
    assert sum(r[S.SAMPLE_ID] == by_url["SAMPLE_ID"] for r in removed_rows) == 1  # resumed: appended once
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        rel = str(path.relative_to(run_dir))
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, rel
        keeps = rel.startswith(tuple(t + "/" for t in BOOKKEEPING)) or rel == "manifest.json"
        if not keeps:
            assert url not in data, rel
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            for row in table.to_pylist():
                values = list(row.values())
                for needle in needles:
                    assert not any(isinstance(v, bytes) and needle in v for v in values), rel
                sid = row.get("sample_id", row.get("SAMPLE_ID"))
                if not keeps:
                    assert sid not in gone, rel
                    assert not any(isinstance(v, str) and by_url["URL"] in v for v in values), rel
                elif sid in gone and rel.split("/")[0] in ("images", "dataset", "dataset_rejected"):
                    assert row.get(S.IMAGE) is None, rel
                elif sid in gone and rel.startswith("embeddings/"):
                    assert row[S.IMAGE_EMBEDDING] is None and row[S.TEXT_EMBEDDING] is None, rel
        assert not any(str(i) in path.name for i in gone) or not rel.startswith("report/"), rel
    assert not list((tmp_path / "cache").rglob("*metadata.arrow*")) or all(
        by_url["URL"].encode() not in p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file())


def test_a_failed_index_rebuild_leaves_the_good_index_and_release(spark, runs, crawl, tmp_path, monkeypatch):
    from laion_spark.index import job as index_job

    run_dir = tmp_path / "run"
    shutil.copytree(runs["run_dir"], run_dir)
    before = file_hashes(run_dir)

    def broken(spark, cfg):
        (Path(cfg.output) / "knn.index").parent.mkdir(parents=True, exist_ok=True)
        (Path(cfg.output) / "knn.index").write_bytes(b"half")
        raise RuntimeError("the rebuild died")

    monkeypatch.setattr(index_job, "run", broken)
    with DemoImageServer() as server, pytest.raises(RuntimeError, match="rebuild died"):
        pipeline(spark, [*crawl["base_args"](server), f"run_dir={run_dir}", *at(crawl["threshold"] - 0.02),
                         f"export.blocklist.url={runs['root'] / 'takedowns.txt'}", "pipeline.from=index"])
    after = file_hashes(run_dir)
    for table in ("index/image", "index/text", "export"):
        kept = {p: h for p, h in before.items() if p.startswith(table + "/")}
        assert kept and all(after.get(p) == h for p, h in kept.items()), table
    assert not (run_dir / "_lock.json").exists()


def pipeline_like(stage: str, spark, args: list[str]) -> dict:
    cfg, module = cli.prepare(stage, [], args)
    return cli.run(stage, cfg, module, spark)


def test_a_copied_run_dir_resumes_and_an_empty_release_leaves_no_stale_index(spark, runs, crawl, tmp_path):
    # a copy of the finished run (as `cp -r` or a bucket copy makes: its markers name the old place) is
    # complete where it lies: the same command skips every step. Then every released URL on a blocklist:
    # export releases nothing, and the indices of the earlier release (which would serve every blocked
    # row) are removed, not left beside an empty release
    run_dir = tmp_path / "run"
    shutil.copytree(runs["run_dir"], run_dir)
    urls = pq.read_table(run_dir / "export" / "laion", columns=["URL"]).column("URL").to_pylist()
    (tmp_path / "everything.txt").write_text("\n".join(urls) + "\n")
    with DemoImageServer() as server:
        args = [*crawl["base_args"](server), f"run_dir={run_dir}", *at(crawl["threshold"] - 0.02)]
        listed = f"export.blocklist.url={runs['root'] / 'takedowns.txt'}"
        same = pipeline(spark, [*args, listed])
        out = pipeline(spark, [*args, f"{listed},{tmp_path / 'everything.txt'}"])
    assert ran(same) == [], [(s["step"], s["why"]) for s in same["steps"]]
    steps = {s["step"]: s for s in out["steps"]}
    assert ran(out) == ["export", "report"]
    assert steps["export"]["counts"]["released"] == 0
    for field in ("image", "text"):
        assert steps[f"index:{field}"]["action"] == "empty"
        assert steps[f"index:{field}"]["why"].endswith("the earlier index removed")
        assert not (run_dir / "index" / field).exists()
    assert "No index in this run." in (run_dir / "report" / "index.html").read_text()
