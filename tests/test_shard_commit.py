"""Shard commits on a filesystem whose rename does not overwrite (HDFS's semantics; object stores through
fsspec copy), with a writer process killed (SIGKILL) between two renames of one shard.

The expectation is written from the protocol's promise, not from its code: after the kill the folder
holds some final files of the shard and no completion marker (so the shard reads as incomplete); the
retry, on the same non-overwriting filesystem, must then succeed and leave exactly the files, byte for
byte, that one clean write into an empty folder leaves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest
from fsspec.implementations.local import LocalFileSystem

from laion_spark import schemas as S
from laion_spark.config import ExportConfig
from laion_spark.export import npy as N
from laion_spark.export import webdataset as W
from laion_spark.export.shards import is_temporary
from laion_spark.export.transform import webdataset_layout

PROTOCOL = "nooverwrite"
TESTS = Path(__file__).resolve().parent


class NoOverwriteFS(LocalFileSystem):
    """The local disk with HDFS's rename: moving onto an existing path fails."""

    protocol = (PROTOCOL,)
    renames = 0
    kill_after: int | None = None  # SIGKILL this process after that many successful renames

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith(f"{PROTOCOL}://"):
            path = path[len(PROTOCOL) + 3 :]
        return super()._strip_protocol(path)

    def mv(self, path1, path2, **kwargs):
        if self.exists(path2):
            raise FileExistsError(f"rename onto an existing path: {path2}")
        super().mv(path1, path2, **kwargs)
        NoOverwriteFS.renames += 1
        if NoOverwriteFS.kill_after is not None and NoOverwriteFS.renames >= NoOverwriteFS.kill_after:
            os.kill(os.getpid(), 9)


def register() -> None:
    fsspec.register_implementation(PROTOCOL, NoOverwriteFS, clobber=True)


def webdataset_rows():
    sys.path.insert(0, str(TESTS))
    import pandas as pd
    from test_export import NAMES, ROWS

    return pd.DataFrame(ROWS[:10], columns=NAMES)


def embedding_rows() -> pa.Table:
    return pa.table({"sample_id": [3, 5, 9], "url": ["u3", "u5", "u9"], "text": ["t3", "t5", "t9"],
                     "image_embedding": [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]],
                     "text_embedding": [[0.6, 0.8], [0.8, 0.6], [1.0, 0.0]]})


def write(kind: str, folder: str) -> None:
    """One shard (number 2) of `kind` into folder (an fsspec URI)."""
    if kind == "webdataset":
        layout = webdataset_layout(S.IMAGES, ExportConfig(samples_per_shard=10), folder, 3)
        W.write_shard(webdataset_rows(), layout, 2)
    else:
        N.write_shard(embedding_rows(), folder, 2, "float32")


TIMES = ("start_time", "end_time", "duration")  # a shard's stats say when it was written (img2dataset's)


def files(folder: Path) -> dict[str, bytes | dict]:
    """-> {relative path: bytes}, stats files as their JSON without the write times."""
    out: dict[str, bytes | dict] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            name = str(p.relative_to(folder))
            out[name] = p.read_bytes()
            if name.endswith("_stats.json"):
                out[name] = {k: v for k, v in json.loads(out[name]).items() if k not in TIMES}
    return out


MARKERS = {"webdataset": "00002_stats.json", "npy": "metadata/metadata_2.parquet"}


@pytest.fixture
def no_overwrite_fs():
    register()
    yield
    NoOverwriteFS.kill_after = None


@pytest.mark.parametrize("kind", ["webdataset", "npy"])
@pytest.mark.parametrize("killed_after", [1, 2])
def test_retry_after_a_kill_between_renames(kind, killed_after, tmp_path, no_overwrite_fs):
    clean = tmp_path / "clean"
    write(kind, f"{PROTOCOL}://{clean}")
    want = files(clean)
    assert MARKERS[kind] in want and not [n for n in want if is_temporary(Path(n).name)]

    folder = tmp_path / "killed"
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import test_shard_commit as t; t.register(); "
        f"t.NoOverwriteFS.kill_after = {killed_after}; t.write(sys.argv[2], sys.argv[3])"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script, str(TESTS), kind, f"{PROTOCOL}://{folder}"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr  # killed by SIGKILL, mid-commit
    left = files(folder)
    finals = {n for n in left if not is_temporary(Path(n).name)}
    assert len(finals) == killed_after and MARKERS[kind] not in finals  # incomplete: no marker
    assert all(left[n] == want[n] for n in finals)

    write(kind, f"{PROTOCOL}://{folder}")  # the retry, on the same non-overwriting filesystem
    got = {n: b for n, b in files(folder).items() if not is_temporary(Path(n).name)}
    assert got == want
    # a third attempt finds the marker: the finished shard is kept, this attempt's temporaries go
    before = files(folder)
    write(kind, f"{PROTOCOL}://{folder}")
    assert files(folder) == before


def test_a_plain_rename_onto_a_file_fails_here(tmp_path, no_overwrite_fs):
    # the fake must really refuse, or the test above proves nothing
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    fs, _ = fsspec.core.url_to_fs(f"{PROTOCOL}://{tmp_path}")
    with pytest.raises(FileExistsError):
        fs.mv(str(tmp_path / "a"), str(tmp_path / "b"))
