"""takedown/index_files.py on every index layout a run can hold, built here with faiss directly (no Spark):
merged in memory, sharded, on-disk inverted lists, one folder per model. Each: found under index/, checked,
tombstoned, then without the ids in every file (searched exhaustively), the removed vectors' bytes gone
from the files, the other rows still found, and a second pass changing nothing."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from faiss.contrib.ondisk import merge_ondisk

from laion_spark.takedown import index_files as I
from laion_spark.takedown.rewrite import TakedownError

D, N, GONE = 16, 600, [7, 250, 599]


def vectors() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((N, D)).astype(np.float32)


def write_layout(folder: Path, layout: str) -> None:
    """One index folder of N rows (ids 0..N-1) in that layout, with metadata and index_infos.json."""
    x = vectors()
    folder.mkdir(parents=True)
    trained = faiss.index_factory(D, "IVF4,Flat")
    trained.train(x)
    parts = []
    for rows in np.array_split(np.arange(N), 3):
        part = faiss.clone_index(trained)
        part.add_with_ids(x[rows], rows.astype(np.int64))
        parts.append(part)
    infos = {"nb_vectors": N, "dimension": D, "layout": {"ivfdata": None}}
    if layout == "shards":
        (folder / "shards").mkdir()
        for i, part in enumerate(parts):
            faiss.write_index(part, str(folder / "shards" / f"knn_{i}.index"))
    elif layout == "ondisk":
        files = []
        for i, part in enumerate(parts):
            faiss.write_index(part, str(folder / f"part{i}.index"))
            files.append(str(folder / f"part{i}.index"))
        index = faiss.clone_index(trained)
        merge_ondisk(index, files, str(folder / "knn.ivfdata"))
        faiss.write_index(index, str(folder / "knn.index"))
        for f in files:
            Path(f).unlink()
        infos["layout"] = {"index_file": "knn.index", "ivfdata": "knn.ivfdata"}
    else:
        index = faiss.clone_index(trained)
        index.add_with_ids(x, np.arange(N, dtype=np.int64))
        faiss.write_index(index, str(folder / "knn.index"))
    (folder / "metadata").mkdir()
    pq.write_table(pa.table({"sample_id": np.arange(N, dtype=np.int64),
                             "url": [f"https://example.org/{i}.jpg" for i in range(N)]}),
                   folder / "metadata" / "part-0.parquet")
    (folder / "index_infos.json").write_text(json.dumps(infos))


def found_ids(folder: Path) -> set[int]:
    """Every id any index file of the folder returns for an exhaustive search of every vector."""
    files = [folder / "knn.index"] if (folder / "knn.index").exists() else sorted((folder / "shards").glob("*.index"))
    out: set[int] = set()
    for f in files:
        flags = faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY if (folder / "knn.ivfdata").exists() else 0
        index = faiss.read_index(str(f), flags)
        faiss.extract_index_ivf(index).nprobe = 4
        _, ids = index.search(vectors(), 50)
        out |= set(ids.ravel().tolist()) - {-1}
    return out


@pytest.mark.parametrize("layout", ["merged", "shards", "ondisk", "per_model"])
def test_every_layout_loses_the_rows_and_keeps_the_others(tmp_path, layout):
    run = tmp_path / "run"
    folder = run / "index" / "image" / ("ViT-B-32_laion2b" if layout == "per_model" else "")
    write_layout(folder if layout == "per_model" else run / "index" / "image", layout if layout != "per_model"
                 else "merged")
    folder = folder if layout == "per_model" else run / "index" / "image"
    assert I.folders(str(run)) == [str(folder)]
    I.check(str(folder))
    assert found_ids(folder) == set(range(N))

    assert I.tombstone(str(folder), GONE) == len(GONE)
    assert np.load(folder / "tombstones.npy").tolist() == GONE
    infos = json.loads((folder / "index_infos.json").read_text())
    assert infos["tombstones"] == len(GONE) and infos["generation"] == 1

    done = I.remove(str(folder), GONE)
    assert done and found_ids(folder) == set(range(N)) - set(GONE)
    assert pq.read_table(folder / "metadata").column("sample_id").to_pylist() == sorted(set(range(N)) - set(GONE))
    assert json.loads((folder / "index_infos.json").read_text())["nb_vectors"] == N - len(GONE)
    x = vectors()
    data = b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())
    assert not any(x[i].tobytes() in data for i in GONE)  # on-disk lists too: the freed slots are zeroed
    assert x[8].tobytes() in data  # (the check can find a vector that is there)

    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert I.remove(str(folder), GONE) == [] and I.tombstone(str(folder), GONE) == len(GONE)  # a resumed takedown
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_a_folder_the_takedown_could_not_finish_is_refused_before_anything_changes(tmp_path):
    folder = tmp_path / "run" / "index" / "image"
    write_layout(folder, "ondisk")
    (folder / "knn.ivfdata").unlink()
    with pytest.raises(TakedownError, match="missing"):
        I.check(str(folder))
    other = tmp_path / "run" / "index" / "text"
    write_layout(other, "merged")
    (other / "knn.index").write_bytes(b"not an index")
    with pytest.raises(TakedownError, match="not an IVF index"):
        I.check(str(other))
