"""clip-retrieval style embedding shards: one shard's files from its rows (no Spark).

INPUT  -> the rows of one shard as an Arrow table (sample_id, url, text, image_embedding,
          text_embedding: list<float> of one length), in the order they go into the shard, the
          shard id, the folder's fsspec URI and the dtype (float16 or float32)
OUTPUT -> three files in the folder, the layout autofaiss, embedding-reader and clip-retrieval read:
            img_emb/img_emb_{shard}.npy         (rows, dim) image embeddings, np.save format
            text_emb/text_emb_{shard}.npy       (rows, dim) text embeddings
            metadata/metadata_{shard}.parquet   sample_id, url, text: row i describes row i of both .npy
          each written under a hidden temporary name and renamed into place by export/shards.py's
          protocol, metadata last: the metadata parquet is the shard's completion marker (the layout
          has no stats file), so a retry redoes a shard without it and keeps one with it; and the
          shard's stats dict.

embedding-reader pairs the .npy and metadata files by their sorted names, so the three folders
always hold the same shard ids; a shard with no rows is not written at all. The export stage's
`<output>/emb/` and the filter's shortcut (filter.npy=true) both write through this module.
"""

from __future__ import annotations

import io
import logging
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from laion_spark import schemas as S
from laion_spark.export.shards import commit, is_temporary, new_token, remove_quietly, temporary_path

log = logging.getLogger(__name__)

DTYPES = ("float16", "float32")
KINDS = ("img", "text", "metadata")  # in the order they are renamed into place
SUBDIRS = {"img": "img_emb", "text": "text_emb", "metadata": "metadata"}
VECTOR_COLUMNS = {"img": S.IMAGE_EMBEDDING, "text": S.TEXT_EMBEDDING}
METADATA_SCHEMA = pa.schema([pa.field(S.SAMPLE_ID, pa.int64()), pa.field(S.URL, pa.string()),
                             pa.field(S.TEXT, pa.string())])

# what a shard writer leaves, relative to its folder (the job removes these with mode=overwrite)
SHARD_FILE = re.compile(r"^(img_emb/img_emb_\d+\.npy|text_emb/text_emb_\d+\.npy|metadata/metadata_\d+\.parquet)$")


def file_names(shard: int) -> dict[str, str]:
    """Shard id -> {kind: path relative to the folder}."""
    return {"img": f"img_emb/img_emb_{shard}.npy", "text": f"text_emb/text_emb_{shard}.npy",
            "metadata": f"metadata/metadata_{shard}.parquet"}


def matrix(column: pa.Array | pa.ChunkedArray, dtype: str, name: str) -> np.ndarray:
    """A list<float> column (one vector a row, all of one length, no nulls) -> a (rows, dim) array of dtype."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        raise ValueError(f"{name}: {column.null_count} rows have no vector")
    rows = len(column)
    lengths = np.asarray(column.value_lengths(), dtype=np.int64) if rows else np.zeros(0, np.int64)
    if rows and (lengths.min() != lengths.max() or lengths[0] == 0):
        raise ValueError(f"{name}: vectors of different lengths {sorted(set(lengths.tolist()))[:5]} in one shard")
    dim = int(lengths[0]) if rows else 0
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(rows, dim).astype(dtype, copy=False)


def npy_bytes(array: np.ndarray) -> bytes:
    """Array -> the bytes np.save writes (the same bytes for the same array)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def shard_contents(table: pa.Table, dtype: str) -> dict[str, bytes]:
    """One shard's rows -> {kind: file bytes}."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}; valid values: {', '.join(DTYPES)}")
    out = {kind: npy_bytes(matrix(table.column(col), dtype, col)) for kind, col in VECTOR_COLUMNS.items()}
    meta = pa.Table.from_arrays([table.column(f.name).cast(f.type) for f in METADATA_SCHEMA],
                                schema=METADATA_SCHEMA)
    out["metadata"] = parquet_bytes(meta)
    return out


def write_shard(table: pa.Table, folder_uri: str, shard: int, dtype: str) -> dict:
    """One shard's rows (in order) -> its three files in folder_uri -> {shard, rows, dim}.
    A shard whose metadata file exists already (a retried task whose first attempt finished it) is
    kept as it is; what a killed attempt left of an incomplete one is replaced."""
    import fsspec

    if table.num_rows == 0:
        raise ValueError(f"shard {shard} has no rows; empty shards are not written")
    contents = shard_contents(table, dtype)
    fs, folder = fsspec.core.url_to_fs(folder_uri)
    token = new_token()
    final = {kind: f"{folder}/{name}" for kind, name in file_names(shard).items()}
    tmp = {kind: temporary_path(path, token) for kind, path in final.items()}
    if not fs.exists(final["metadata"]):
        try:
            for kind in KINDS:
                fs.makedirs(final[kind].rsplit("/", 1)[0], exist_ok=True)
                with fs.open(tmp[kind], "wb") as fh:
                    fh.write(contents[kind])
            commit(fs, [(tmp[kind], final[kind]) for kind in KINDS])
        except BaseException:
            remove_quietly(fs, tmp.values())
            raise
    dim = int(np.load(io.BytesIO(contents["img"])).shape[1])
    return {"shard": shard, "rows": table.num_rows, "dim": dim}


def _relative_files(fs, folder: str) -> list[str]:
    if not fs.exists(folder):
        return []
    root = folder.rstrip("/") + "/"
    return sorted(p[len(root):] for p in fs.find(folder) if p.startswith(root))


def _is_ours(relative: str, temporaries_only: bool) -> bool:
    parts = relative.split("/")
    if len(parts) < 2 or parts[-2] not in SUBDIRS.values():
        return False
    if is_temporary(parts[-1]):
        return True
    return not temporaries_only and bool(SHARD_FILE.match("/".join(parts[-2:])))


def remove_files(folder_uri: str, temporaries_only: bool = False) -> int:
    """Remove what shard writers left in folder_uri, at its top or one model sub-folder down (every
    shard file and temporary; only temporaries with temporaries_only) -> how many files. Other files
    are left alone."""
    import fsspec

    fs, folder = fsspec.core.url_to_fs(folder_uri)
    removed = [r for r in _relative_files(fs, folder) if r.count("/") <= 2 and _is_ours(r, temporaries_only)]
    for relative in removed:
        fs.rm(f"{folder}/{relative}")
    return len(removed)


def model_folder_name(clip_model: str | None) -> str:
    """A clip_model ("MODEL/PRETRAINED") -> a folder name: characters other than letters, digits, . _ -
    become _ (only used when the kept rows span several embedding spaces)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", clip_model or "unknown").strip("._") or "unknown"
