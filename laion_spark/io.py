"""Table and file I/O: Spark reads and writes tables (Parquet, explicit schema); fsspec the rest.

INPUT  -> URIs (local paths, file:, s3a://, gs://, dbfs:/, hdfs://, ...)
OUTPUT -> DataFrames read with their schema; tables written after a schema check; JSON summaries
"""

from __future__ import annotations

import json
import logging

from pyspark.sql import DataFrame
from pyspark.sql.types import StructType

log = logging.getLogger(__name__)

# Spark's Hadoop scheme names -> fsspec protocol names for the same storage
_FSSPEC_PROTOCOLS = {"s3a": "s3", "s3n": "s3", "gs": "gcs", "dbfs": "file"}


class OutputExistsError(FileExistsError):
    """The stage's output is already there and mode is not overwrite."""


def fsspec_uri(uri: str) -> str:
    """Spark-style URI -> the URI fsspec understands for the same object."""
    if "://" not in uri:
        if uri.startswith("dbfs:/"):  # Databricks mounts DBFS at /dbfs on the driver
            return "/dbfs/" + uri[len("dbfs:/"):].lstrip("/")
        return uri
    scheme, rest = uri.split("://", 1)
    if scheme == "dbfs":
        return "/dbfs/" + rest.lstrip("/")
    return f"{_FSSPEC_PROTOCOLS.get(scheme, scheme)}://{rest}"


def overlap(a: str, b: str) -> bool:
    """Two URIs -> whether one is the other or lies inside it (an output must not overlap an input)."""
    a, b = fsspec_uri(a).rstrip("/"), fsspec_uri(b).rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def exists(uri: str) -> bool:
    """URI -> whether anything is stored there."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(fsspec_uri(uri))
    return fs.exists(path)


def remove(uri: str) -> bool:
    """A file or folder (recursively) -> removed; whether there was one."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(fsspec_uri(uri))
    if not fs.exists(path):
        return False
    fs.rm(path, recursive=True)
    return True


def check_output(uri: str, mode: str) -> None:
    """Raise OutputExistsError when `uri` exists and mode is not 'overwrite' (before Spark starts)."""
    if mode != "overwrite" and exists(uri):
        raise OutputExistsError(f"output {uri} already exists; pass mode=overwrite to replace it")


def _nullable(dt):
    """A type -> the same with every nested element, value and field nullable: what a Parquet file gives
    back on read (a table written from another table's files, e.g. committed chunks, reads so)."""
    from pyspark.sql.types import ArrayType, MapType, StructField

    if isinstance(dt, ArrayType):
        return ArrayType(_nullable(dt.elementType), True)
    if isinstance(dt, MapType):
        return MapType(_nullable(dt.keyType), _nullable(dt.valueType), True)
    if isinstance(dt, StructType):
        return StructType([StructField(f.name, _nullable(f.dataType), True) for f in dt.fields])
    return dt


def check_schema(df: DataFrame, schema: StructType, table: str) -> None:
    """Raise ValueError unless df has exactly the schema's column names and types (in order; the
    nullability of nested elements aside)."""
    got = [(f.name, _nullable(f.dataType)) for f in df.schema.fields]
    want = [(f.name, _nullable(f.dataType)) for f in schema.fields]
    if got != want:
        raise ValueError(f"{table}: columns {got} do not match the table schema {want}")


def read_table(spark, uri: str, schema: StructType) -> DataFrame:
    """Parquet table URI -> DataFrame with exactly the schema's columns."""
    df = spark.read.schema(schema).parquet(uri)
    return df.select(*[f.name for f in schema.fields])


def write_table(df: DataFrame, uri: str, schema: StructType, table: str, mode: str = "error") -> None:
    """DataFrame -> Parquet at uri, after checking it matches the table's schema."""
    check_schema(df, schema, table)
    # "error", not its synonym "errorifexists": Spark Connect's writer knows only the short name
    df.write.mode("overwrite" if mode == "overwrite" else "error").parquet(uri)


def write_json(uri: str, data: dict) -> None:
    """dict -> a JSON file at uri (e.g. <output>/_summary.json; Spark ignores `_` files), written beside
    and moved over it: a reader (or a job killed mid-write) sees the old file or the new one, never half."""
    import os
    import uuid

    import fsspec

    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    fs, path = fsspec.core.url_to_fs(fsspec_uri(uri))
    head, _, name = path.rpartition("/")
    tmp = f"{head}/.{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp" if head else f".{name}.tmp"
    with fs.open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    fs.mv(tmp, path)


def read_json(uri: str) -> dict:
    """JSON file URI -> dict."""
    import fsspec

    with fsspec.open(fsspec_uri(uri), "r", encoding="utf-8") as fh:
        return json.load(fh)
