"""Rewriting a finished run's files without some sample_ids (no Spark): only the files that hold them.

INPUT  -> folder URIs (fsspec) of one output kind, the sample_ids to remove and, from a takedown, the
          files that hold them (`files`: {path: ids}, found by Spark, locate.py), so that only those are
          opened; without it (a caller without Spark: the pipeline's re-blanking, evaluate's shards) the
          folder's files are scanned here, their id column first
OUTPUT -> the files rewritten in place (written beside, then moved over the old one), and per call the
          list of the files it rewrote with how many rows each lost; a file that holds none of the ids
          is not opened for writing, so it stays byte for byte as it was

Kinds: parquet folders (the release, subsets, index metadata: any column of sample ids; or, with
null_columns, the rows kept and their image bytes or vectors blanked), img2dataset webdataset shards
(tar + parquet + _stats.json per shard) and clip-retrieval .npy shards (metadata parquet + img_emb /
text_emb rows in the same order). Faiss index folders: index_files.py.
"""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


class TakedownError(RuntimeError):
    """A file cannot be rewritten without the rows (an index whose lists are on disk, a torn shard)."""


def _fs(uri: str):
    import fsspec

    from laion_spark.io import fsspec_uri

    return fsspec.core.url_to_fs(fsspec_uri(uri))


def _replace(fs, path: str, data: bytes) -> None:
    """Write data beside path, then move it over path: a reader sees the old file or the new one."""
    _replace_with(fs, path, lambda fh: fh.write(data))


def _replace_with(fs, path: str, write) -> None:
    """_replace, the new file written by write(file handle), piece by piece (an index list by list)."""
    tmp = path.rsplit("/", 1)
    tmp = f"{tmp[0]}/.takedown-{tmp[1]}" if len(tmp) == 2 else f".takedown-{path}"
    with fs.open(tmp, "wb") as fh:
        write(fh)
    fs.mv(tmp, path)
    # Hadoop's local file system keeps a checksum beside each file it wrote (.<name>.crc); a stale one
    # fails Spark's next read, and without one the file is read unchecked, as any file written by others
    head, _, name = path.rpartition("/")
    crc = f"{head}/.{name}.crc" if head else f".{name}.crc"
    if fs.exists(crc):
        fs.rm(crc)


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    # timestamps as Spark writes them (INT96, its default): pyarrow's INT64 nanoseconds are a type Spark
    # refuses to read beside the other part files of the table
    int96 = any(pa.types.is_timestamp(f.type) for f in table.schema)
    pq.write_table(table, buf, compression="snappy", use_deprecated_int96_timestamps=int96)
    return buf.getvalue()


def _without(table: pa.Table, column: str, ids: pa.Array) -> tuple[pa.Table, int]:
    keep = pc.invert(pc.fill_null(pc.is_in(table[column], value_set=ids), False))
    kept = table.filter(keep)
    return kept, table.num_rows - kept.num_rows


def _ids(ids) -> pa.Array:
    return pa.array(sorted(set(int(i) for i in ids)), pa.int64())


def _holding(uri: str, ids, column: str, files=None):
    """-> (fs, path, table, the table without ids, rows removed) for each parquet file in the folder that
    holds some of ids: of `files` alone where they are given (the others are not opened), else of every
    file in the folder (the others only have their id column read)."""
    fs, folder = _fs(uri)
    if files is None and not fs.exists(folder):
        return
    wanted = _ids(ids)
    paths = sorted(files) if files is not None else sorted(fs.glob(folder.rstrip("/") + "/*.parquet"))
    for path in paths:
        with fs.open(path, "rb") as fh:  # the id column alone first: most files hold none of the ids
            if column not in pq.ParquetFile(fh).schema_arrow.names:
                continue
            fh.seek(0)
            found = pq.read_table(fh, columns=[column])[column]
        if not pc.any(pc.fill_null(pc.is_in(found, value_set=wanted), False)).as_py():
            continue
        with fs.open(path, "rb") as fh:
            table = pq.read_table(fh)
        kept, removed = _without(table, column, wanted)
        if removed:
            yield fs, path, table, kept, removed


def parquet_folder(uri: str, ids, column: str, files=None) -> list[dict]:
    """A folder of parquet files (Spark's part files) -> those holding ids (of `files`, where given)
    rewritten without them."""
    done = []
    for fs, path, _, kept, removed in _holding(uri, ids, column, files):
        _replace(fs, path, _parquet_bytes(kept))
        done.append({"file": path, "removed": removed})
    return done


def is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def is_vector(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def null_columns(uri: str, ids, column: str, blank=is_binary, files=None) -> list[dict]:
    """A parquet folder -> the files holding ids rewritten with those rows' columns of the given types
    (image bytes; or vectors) set to null: the rows stay (the stage's row accounting), their image or
    vector goes. -> [{file, removed: rows blanked}]; a file whose rows are blank already is left alone."""
    done = []
    for fs, path, table, _, removed in _holding(uri, ids, column, files):
        hit = pc.fill_null(pc.is_in(table[column], value_set=_ids(ids)), False)
        names = [f.name for f in table.schema if blank(f.type)]
        if not names or all(pc.all(pc.is_null(pc.filter(table[n], hit))).as_py() for n in names):
            continue
        for name in names:
            i = table.schema.get_field_index(name)
            blanked = pc.if_else(hit, pa.scalar(None, table.schema.field(i).type), table[name])
            table = table.set_column(i, table.schema.field(i), blanked)
        _replace(fs, path, _parquet_bytes(table))
        done.append({"file": path, "removed": removed})
    return done


def _restat(stats: dict, kept: pa.Table, tar_bytes: int) -> None:
    """A shard's _stats.json -> counted again over the rows it keeps (export/webdataset.py's rules)."""
    from collections import Counter

    from laion_spark.export.webdataset import IMAGE_FAILURES

    statuses = Counter(kept["status"].to_pylist() if "status" in kept.column_names else ["success"] * kept.num_rows)
    resize = sum(n for status, n in statuses.items() if status in IMAGE_FAILURES)
    stats["successes"] = max(0, statuses.get("success", 0) - int(stats.get("skipped", 0)))
    stats.update(count=kept.num_rows, failed_to_resize=resize, tar_bytes=tar_bytes,
                 failed_to_download=kept.num_rows - statuses.get("success", 0) - resize,
                 status_dict=dict(sorted(statuses.items())))


def webdataset_shards(uri: str, ids, files=None) -> list[dict]:
    """img2dataset shards -> each shard holding ids (files: the shards' .parquet sidecars that do, where
    known): its tar without their members, its parquet without their rows, its stats counted again; the
    other shards untouched."""
    wanted, done = _ids(ids), []
    for fs, path, table, kept, removed in _holding(uri, ids, "sample_id", files):
        gone = table.filter(pc.fill_null(pc.is_in(table["sample_id"], value_set=wanted), False))
        keys = set(gone["key"].to_pylist())
        stem = path[: -len(".parquet")]
        tar_bytes = 0
        out = None
        if fs.exists(stem + ".tar"):
            out = io.BytesIO()
            with fs.open(stem + ".tar", "rb") as fh, tarfile.open(fileobj=fh) as src, \
                    tarfile.open(fileobj=out, mode="w") as dst:
                for member in src:
                    if member.name.split("/")[-1].split(".", 1)[0] in keys:
                        continue
                    dst.addfile(member, src.extractfile(member) if member.isfile() else None)
            tar_bytes = len(out.getvalue())
        # stats and tar before the parquet, which is what says the shard still holds the ids: a takedown
        # killed in between finds the shard again and writes the same files (the stats are counted from
        # the kept rows, not adjusted)
        stats_path = stem + "_stats.json"
        if fs.exists(stats_path):
            with fs.open(stats_path, "r") as fh:
                stats = json.load(fh)
            _restat(stats, kept, tar_bytes)
            _replace(fs, stats_path, (json.dumps(stats, indent=4) + "\n").encode())
        if out is not None:
            _replace(fs, stem + ".tar", out.getvalue())
        _replace(fs, path, _parquet_bytes(kept))
        done.append({"file": stem + ".tar", "removed": removed})
    return done


def npy_shards(uri: str, ids, files=None) -> list[dict]:
    """clip-retrieval shards (one folder per space: metadata/metadata_N.parquet, img_emb/img_emb_N.npy,
    text_emb/text_emb_N.npy, row i of each the same pair) -> those holding ids (files: the metadata files
    that do, where known) without their rows."""
    fs, folder = _fs(uri)
    if files is None and not fs.exists(folder):
        return []
    wanted, done = _ids(ids), []
    pattern = folder.rstrip("/") + "/**/metadata/metadata_*.parquet"
    metas = sorted(files) if files is not None else sorted(fs.glob(pattern))
    for meta_path in metas:
        with fs.open(meta_path, "rb") as fh:
            table = pq.read_table(fh)
        hit = pc.fill_null(pc.is_in(table["sample_id"], value_set=wanted), False).to_numpy(zero_copy_only=False)
        if not hit.any():
            continue
        space = meta_path.rsplit("/metadata/", 1)[0]
        shard = meta_path.rsplit("metadata_", 1)[1][: -len(".parquet")]
        for name in ("img_emb", "text_emb"):
            npy = f"{space}/{name}/{name}_{shard}.npy"
            if not fs.exists(npy):
                continue
            with fs.open(npy, "rb") as fh:
                matrix = np.load(fh)
            if len(matrix) == int((~hit).sum()) and len(matrix) != table.num_rows:
                continue  # cut already by a takedown killed before its metadata: the metadata goes last
            if len(matrix) != table.num_rows:
                raise TakedownError(f"{npy} has {len(matrix)} rows but {meta_path} {table.num_rows}")
            buf = io.BytesIO()
            np.save(buf, matrix[~hit])
            _replace(fs, npy, buf.getvalue())
        _replace(fs, meta_path, _parquet_bytes(table.filter(pa.array(~hit))))
        done.append({"file": meta_path, "removed": int(hit.sum())})
    return done
