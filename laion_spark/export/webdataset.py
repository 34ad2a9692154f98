"""One webdataset shard, laid out the way img2dataset writes them (no Spark).

INPUT  -> the rows of one shard (pandas frames of images rows, in the order they go into the shard),
          the shard id and a ShardLayout (output folder URI, key widths, the meta columns' Arrow schema)
OUTPUT -> three files in the output folder, each written under a hidden temporary name and renamed
          into place by export/shards.py's protocol (stats last: a shard is complete when its
          _stats.json exists; a retry redoes an incomplete one and keeps a complete one), and the
          shard's stats dict:
            {shard}.tar         for each success row, in row order: {key}.{jpg|png|webp} (the stored
                                image bytes), {key}.json (the row's meta) and {key}.txt (the caption),
                                a sample's members in sorted extension order (webdataset's TarWriter's)
            {shard}.parquet     the meta of EVERY row of the shard, failures included
            {shard}_stats.json  count, successes, failed_to_download, failed_to_resize, skipped,
                                status_dict, start_time, end_time, duration (renamed last: its presence
                                marks a finished shard, as img2dataset's incremental mode reads it)

Names (img2dataset's `compute_key`): shard name = f"{shard:0{shard_digits}d}" (shard_digits = 5, wider
only past 100,000 shards); key = f"{shard * 10**key_digits + index:0{shard_digits + key_digits}d}",
i.e. the shard name followed by the row's index in the shard on key_digits digits. img2dataset takes
key_digits = ceil(log10(samples_per_shard)) (its `oom_sample_per_shard`); the shards here are hash
partitions whose sizes vary around samples_per_shard, so the job widens it when the largest shard
needs more digits (keys must never run into the next shard's).

Meta: the row's non-binary columns in table order, preceded by `key`, with `text` named `caption`
(img2dataset's names); in the .json timestamps are ISO 8601 strings (UTC) and NaN/inf are null.

Determinism: the same rows in the same order give byte-identical tars (fixed mtime, mode, owner;
POSIX ustar headers, no PAX records), so a rerun or a retried task writes the same shard.
"""

from __future__ import annotations

import datetime as dt
import decimal
import io
import json
import logging
import math
import tarfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from laion_spark.export.shards import commit, new_token, remove_quietly, temporary_path
from laion_spark.schemas import IMAGE, STATUS, SUCCESS, TEXT

log = logging.getLogger(__name__)

KEY = "key"
CAPTION = "caption"
IMAGE_FORMAT = "image_format"

IMAGE_EXTENSIONS = ("jpg", "png", "webp")
DEFAULT_SHARD_DIGITS = 5  # img2dataset's oom_shard_count
# statuses the download stage gives after the body arrived (decode, checks, resize): img2dataset's
# "failed_to_resize"; every other failure is "failed_to_download"
IMAGE_FAILURES = frozenset({"not_image", "unsupported_format", "too_small", "too_many_pixels", "decode_error"})

# tar member header: fixed so that a rerun writes the same bytes (webdataset's TarWriter uses the
# current time; its mode and owner names are kept)
TAR_MTIME = 0
TAR_MODE = 0o444
TAR_OWNER = "bigdata"

STATS_NAMES = (
    "shard", "count", "successes", "skipped", "failed_to_download", "failed_to_resize",
    "status_dict", "tar_bytes", "start_time", "end_time", "duration",
)
KINDS = ("tar", "parquet", "stats")  # in the order they are renamed into place: stats, the marker, last


def digits_for(values: int) -> int:
    """How many decimal digits the numbers 0 .. values-1 need (0 for values <= 1): img2dataset's
    ceil(log10(values)), in integers."""
    return len(str(values - 1)) if values > 1 else 0


def shard_digits_for(num_shards: int) -> int:
    """Shard count -> the width of shard names: 5, or more past 100,000 shards."""
    return max(DEFAULT_SHARD_DIGITS, digits_for(num_shards))


def key_digits_for(samples_per_shard: int, largest_shard: int = 0) -> int:
    """samples_per_shard (+ the rows of the largest shard) -> the width of the in-shard index."""
    return max(digits_for(samples_per_shard), digits_for(largest_shard))


def meta_schema(input_schema: pa.Schema) -> pa.Schema:
    """Arrow schema of the images rows -> the meta schema: `key`, then every non-binary column in
    order (`text` named `caption`), all nullable."""
    fields = [pa.field(KEY, pa.string())]
    for f in input_schema:
        if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type):
            continue
        if f.name in (KEY, CAPTION):
            raise ValueError(f"the images rows have a column {f.name!r}; export writes its own {f.name}")
        fields.append(pa.field(CAPTION if f.name == TEXT else f.name, f.type))
    return pa.schema(fields)


@dataclass(frozen=True)
class ShardLayout:
    """Where and how shards are written.

    output_uri: the folder (an fsspec URI: a local path, file://, s3://, ...)
    meta: meta_schema(...) of the rows; timestamp columns may arrive as epoch microseconds (int)
    shard_digits, key_digits: see the module doc
    """

    output_uri: str
    meta: pa.Schema
    key_digits: int
    shard_digits: int = DEFAULT_SHARD_DIGITS

    def shard_name(self, shard: int) -> str:
        return f"{shard:0{self.shard_digits}d}"

    def key(self, shard: int, index: int) -> str:
        if index >= 10**self.key_digits:
            raise ValueError(f"shard {shard} holds more than {10**self.key_digits} rows, more than "
                             f"key_digits={self.key_digits} can number")
        return f"{shard * 10**self.key_digits + index:0{self.shard_digits + self.key_digits}d}"

    def file_names(self, shard: int) -> dict[str, str]:
        name = self.shard_name(shard)
        return {"tar": f"{name}.tar", "parquet": f"{name}.parquet", "stats": f"{name}_stats.json"}


def _column(values: pd.Series, typ: pa.DataType) -> pa.Array:
    """A pandas column (as mapInPandas gives it) -> an Arrow array of the meta type. Integer columns
    with nulls arrive as float64 and timestamps may arrive as epoch microseconds: both are made
    integers again first."""
    if pa.types.is_timestamp(typ) and pd.api.types.is_datetime64_any_dtype(values.dtype):
        return pa.array(values, from_pandas=True).cast(typ)  # tz-naive values are taken as UTC
    if pa.types.is_integer(typ) or pa.types.is_timestamp(typ):
        if pd.api.types.is_float_dtype(values.dtype) or values.dtype == object:
            values = values.astype("Int64")
        if pd.api.types.is_integer_dtype(values.dtype):
            return pa.array(values, from_pandas=True).cast(typ)
    return pa.array(values, type=typ, from_pandas=True)


def meta_table(frame: pd.DataFrame, keys: list[str], schema: pa.Schema) -> pa.Table:
    """Images rows + their keys -> the meta rows as an Arrow table of `schema`."""
    arrays = []
    for f in schema:
        if f.name == KEY:
            arrays.append(pa.array(keys, type=pa.string()))
        else:
            source = TEXT if f.name == CAPTION else f.name
            arrays.append(_column(frame[source].reset_index(drop=True), f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def json_safe(value):
    """One meta value (Arrow's Python form) -> a JSON value: datetimes as ISO strings, NaN/inf as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
        return value.isoformat()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        # Arrow gives maps as [(key, value), ...]
        if value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
            return {str(k): json_safe(v) for k, v in value}
        return [json_safe(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return None
    return value


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = TAR_MTIME
    info.mode = TAR_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = TAR_OWNER
    tar.addfile(info, io.BytesIO(data))


def read_stats(layout: ShardLayout, shard: int) -> dict | None:
    """-> the stats of a complete shard (its _stats.json, the completion marker), None if it has none."""
    import fsspec

    fs, folder = fsspec.core.url_to_fs(layout.output_uri)
    try:
        with fs.open(f"{folder}/{layout.file_names(shard)['stats']}", "r", encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


class ShardWriter:
    """Writes one shard: `write(frame)` for each batch of its rows in order, then `close()` (renames
    the files into place, returns the stats dict), or `abort()` (removes the temporaries)."""

    def __init__(self, layout: ShardLayout, shard: int):
        import fsspec

        self.layout = layout
        self.shard = shard
        self.fs, self.folder = fsspec.core.url_to_fs(layout.output_uri)
        self.fs.makedirs(self.folder, exist_ok=True)
        token = new_token()
        self.final = {kind: f"{self.folder}/{name}" for kind, name in layout.file_names(shard).items()}
        self.tmp = {kind: temporary_path(path, token) for kind, path in self.final.items()}
        self.start_time = time.time()
        self.count = self.successes = self.skipped = 0
        self.statuses: Counter = Counter()
        self._tar_fh = self.fs.open(self.tmp["tar"], "wb")
        # the handles live across write() calls; close() / abort() close them
        self._tar = tarfile.open(fileobj=self._tar_fh, mode="w|", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self._parquet_fh = self.fs.open(self.tmp["parquet"], "wb")
        self._parquet = pq.ParquetWriter(self._parquet_fh, layout.meta)
        self.tar_bytes = 0

    def _keys(self, frame: pd.DataFrame) -> list[str]:
        keys = [self.layout.key(self.shard, self.count + i) for i in range(len(frame))]
        if KEY in frame.columns and frame[KEY].tolist() != keys:
            # the packed rows' keys (export/transform.py) must be the rows' places in the shard
            raise RuntimeError(f"shard {self.shard}: the rows' keys {frame[KEY].tolist()[:3]}... are not the "
                               f"shard's next keys {keys[:3]}...; write the packed rows as they are, unfiltered")
        return keys

    def write(self, frame: pd.DataFrame) -> None:
        """A batch of the shard's images rows (the next ones, in order) -> tar members and parquet rows."""
        if frame.empty:
            return
        keys = self._keys(frame)
        table = meta_table(frame, keys, self.layout.meta)
        self._parquet.write_table(table)
        statuses = frame[STATUS].tolist()
        images = frame[IMAGE].tolist()
        formats = frame[IMAGE_FORMAT].tolist()
        captions = frame[TEXT].tolist()
        metas = table.to_pylist()
        for key, status, image, fmt, caption, meta in zip(keys, statuses, images, formats, captions, metas):
            self.statuses[status] += 1
            if status != SUCCESS:
                continue
            if image is None or fmt not in IMAGE_EXTENSIONS:
                # a success row the download stage should never write; counted, logged, left out of the tar
                self.skipped += 1
                log.warning("shard %s: key %s (sample_id %s) is a success without image bytes or with "
                            "image_format %r; not written to the tar", self.shard, key, meta.get("sample_id"), fmt)
                continue
            meta_json = json.dumps({k: json_safe(v) for k, v in meta.items()}, indent=4)
            members = {fmt: bytes(image), "json": meta_json.encode("utf-8"),
                       "txt": ("" if caption is None else str(caption)).encode("utf-8")}
            for ext in sorted(members):
                _add_member(self._tar, f"{key}.{ext}", members[ext])
            self.successes += 1
        self.count += len(frame)

    def _close_files(self) -> None:
        for closer in (self._tar.close, self._tar_fh.close, self._parquet.close, self._parquet_fh.close):
            try:
                closer()
            except Exception:  # on abort every handle is closed, whatever failed first
                if not getattr(self, "_aborting", False):
                    raise

    def close(self) -> dict:
        """Finish the files, rename them into place (stats last) -> the stats dict; where another
        attempt finished the shard meanwhile, ours are dropped and its stats returned."""
        self._close_files()
        self.tar_bytes = self.fs.size(self.tmp["tar"])
        end_time = time.time()
        failed_to_resize = sum(n for s, n in self.statuses.items() if s in IMAGE_FAILURES)
        stats = {
            "shard": self.shard,
            "count": self.count,
            "successes": self.successes,
            "skipped": self.skipped,
            "failed_to_download": self.count - self.statuses[SUCCESS] - failed_to_resize,
            "failed_to_resize": failed_to_resize,
            "status_dict": dict(sorted(self.statuses.items())),
            "tar_bytes": self.tar_bytes,
            "start_time": self.start_time,
            "end_time": end_time,
            "duration": end_time - self.start_time,
        }
        with self.fs.open(self.tmp["stats"], "w", encoding="utf-8") as fh:
            json.dump(stats, fh, indent=4)
        if commit(self.fs, [(self.tmp[kind], self.final[kind]) for kind in KINDS]):
            return stats
        return read_stats(self.layout, self.shard)

    def abort(self) -> None:
        """Close and remove the temporaries (after a failure; never raises)."""
        self._aborting = True
        self._close_files()
        remove_quietly(self.fs, self.tmp.values())


def write_shard(frames: pd.DataFrame | Iterable[pd.DataFrame], layout: ShardLayout, shard: int) -> dict:
    """The rows of one shard (a frame, or frames in order) -> the shard's files; -> its stats dict.

    A shard that is complete already (its _stats.json exists: a retried task whose first attempt
    finished it) is left as it is and its stats returned; an incomplete one is written again, what a
    killed attempt left of it replaced."""
    if isinstance(frames, pd.DataFrame):
        frames = [frames]
    done = read_stats(layout, shard)
    if done is not None:
        for _ in frames:  # the rows are read to the end all the same: Spark hands them over either way
            pass
        log.info("shard %s is complete already (%s); kept", shard, layout.file_names(shard)["stats"])
        return done
    writer = ShardWriter(layout, shard)
    try:
        for frame in frames:
            writer.write(frame)
        return writer.close()
    except BaseException:
        writer.abort()
        raise
