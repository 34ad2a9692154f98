"""runlock and the pipeline's refusals: one writer per run directory (a takedown never beside a running
pipeline), and no pipeline that would index what export did not release. No Spark."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from laion_spark import cli, runlock
from laion_spark.config import ConfigError


def test_a_second_writer_is_refused_while_the_first_holds_the_run(tmp_path):
    with runlock.held(str(tmp_path), "pipeline"):
        holder = json.loads((tmp_path / runlock.LOCK).read_text())
        assert holder["pid"] == os.getpid() and holder["who"] == "pipeline"
        with runlock.held(str(tmp_path), "takedown"):  # the same process (a stage the pipeline runs): re-entrant
            pass
        assert (tmp_path / runlock.LOCK).exists()
        # another live process: refused, naming who holds it
        code = ("import sys; from laion_spark import runlock\n"
                "try:\n    runlock.held(sys.argv[1], 'takedown').__enter__()\n"
                "except runlock.RunLocked as exc:\n    print(exc); sys.exit(3)\n")
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 3, done.stderr
        assert "laion-spark pipeline" in done.stdout and str(os.getpid()) in done.stdout
    assert not (tmp_path / runlock.LOCK).exists()


def test_a_lock_left_by_a_dead_process_on_this_host_is_taken_over(tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / runlock.LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout),
                                                     "who": "pipeline", "since": "then"}))
    with runlock.held(str(tmp_path), "takedown") as me:
        assert me["pid"] == os.getpid()
    assert not (tmp_path / runlock.LOCK).exists()
    (tmp_path / runlock.LOCK).write_text(json.dumps({"host": "another-host", "pid": 1, "who": "pipeline",
                                                     "since": "then"}))
    with pytest.raises(runlock.RunLocked, match="another-host"):
        runlock.held(str(tmp_path), "takedown").__enter__()
    # the CLI refuses before any Spark work, with the holder named and exit code 2
    (tmp_path / "list.txt").write_text("https://example.org/a.jpg\n")
    for d in ("export/laion", "dataset"):
        (tmp_path / d).mkdir(parents=True)
    code = cli.main(["takedown", f"run_dir={tmp_path}", f"list={tmp_path / 'list.txt'}"])
    assert code == 2 and "is in use: `laion-spark pipeline` (pid 1 on another-host" in capsys.readouterr().err
    with pytest.raises(runlock.RunLocked, match="another-host"):
        cli.prepare("pipeline", [], [f"input={tmp_path}/a.warc.gz", f"run_dir={tmp_path}"])


@pytest.mark.parametrize("args", [["export.outputs=webdataset"], ["export.outputs=webdataset,emb", "until=index"],
                                  ["export.outputs=laion,webdataset", "filter.npy=true"]])
def test_a_pipeline_that_would_publish_what_export_did_not_release_is_refused(tmp_path, args):
    with pytest.raises(ConfigError, match="laion|emb"):
        cli.prepare("pipeline", [], [f"input={tmp_path}/a.warc.gz", f"run_dir={tmp_path / 'run'}", *args])
    cli.prepare("pipeline", [], [f"input={tmp_path}/a.warc.gz", f"run_dir={tmp_path / 'run'}",
                                 "export.outputs=webdataset", "until=export"])  # no index: allowed


def test_json_files_are_replaced_whole(tmp_path):
    from laion_spark.io import read_json, write_json

    target = tmp_path / "manifest.json"
    write_json(str(target), {"a": 1})
    inode = target.stat().st_ino
    write_json(str(target), {"a": 2, "b": "x" * 100_000})
    assert read_json(str(target)) == {"a": 2, "b": "x" * 100_000}
    assert target.stat().st_ino != inode  # a new file moved over the old one, not the old one truncated
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
