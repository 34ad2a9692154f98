"""Blocklists on the Spark side: list files + rows -> the rows a list matches, with the list's name.

INPUT  -> export.blocklist (files per kind: url, url_md5, url_sha256, image_md5, image_sha1, image_sha256),
          a SparkSession, and rows with sample_id, url and the digests download stores (md5, sha1, sha256)
OUTPUT -> `lists_of`: the BlockLists in config order (kind by kind, file by file), each named after its
          file; `read_keys`: one list's keys as a DataFrame (key), checked line by line; `blocked`:
          (sample_id, reason = blocklisted:<name>) for every row some list matches, the first list in
          config order giving the reason

Matching is a join of the rows' keys with the lists' keys, so a list of tens of millions of hashes is
read by the executors and never held in one Python set. The file format and the URL normalisation are
export/blocklist.py's: digest lines are checked here with Spark expressions (the same rule as
parse_line), URL lines with parse_line itself in a pandas UDF. A malformed line stops the job; the
driver then reads that one file line by line to name the line (blocklist.first_bad_line).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pandas as pd  # at module level: pandas_udf resolves the type hints in this module's globals
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from laion_spark import schemas as S
from laion_spark.export.blocklist import HEX_LENGTH, KINDS, BlocklistError, first_bad_line, normalise_url, parse_line
from laion_spark.io import fsspec_uri

KEY = "key"
REASON_PREFIX = "blocklisted:"
# the digest column of the rows each image kind is matched on (download's hex digests of the body)
IMAGE_COLUMNS = {"image_md5": "md5", "image_sha1": "sha1", "image_sha256": "sha256"}


@dataclass(frozen=True)
class BlockList:
    name: str  # the file's name without its extensions: the reason says blocklisted:<name>
    kind: str
    uri: str

    @property
    def reason(self) -> str:
        return REASON_PREFIX + self.name


def _name(uri: str) -> str:
    base = os.path.basename(uri.rstrip("/"))
    for ext in (".gz", ".bz2", ".zst", ".txt", ".csv", ".lst", ".list"):
        if base.lower().endswith(ext) and len(base) > len(ext):
            base = base[: -len(ext)]
    return base


def named(lists: list[tuple[str, str]]) -> list[BlockList]:
    """[(kind, uri)] in config order -> BlockLists, each named after its file; a name that an earlier
    list already has gets `-2`, `-3`, ... (two `request.txt` files from two requesters are two lists,
    not a failed export); the same file given twice for one kind is one list."""
    out: list[BlockList] = []
    seen: set[str] = set()
    given: set[tuple[str, str]] = set()
    for kind, uri in lists:
        if (kind, uri) in given:
            continue
        given.add((kind, uri))
        base = name = _name(uri)
        n = 1
        while name in seen:
            n += 1
            name = f"{base}-{n}"
        seen.add(name)
        out.append(BlockList(name, kind, uri))
    return out


def lists_of(section) -> list[BlockList]:
    """export.blocklist -> its lists in config order (kind by kind, file by file), named (see `named`)."""
    return named([(kind, uri) for kind in KINDS for uri in getattr(section, kind)])


def _url_keys_udf():
    from pyspark.sql.functions import pandas_udf

    @pandas_udf(T.ArrayType(T.StringType()))
    def url_line_keys(lines: pd.Series) -> pd.Series:
        # null: a malformed line (the job then names it); [] for blanks and comments
        def keys(line):
            try:
                return parse_line(line, "url")
            except ValueError:
                return None

        return pd.Series([keys(x) for x in lines], dtype=object)

    return url_line_keys


def _line_keys(lines: DataFrame, kind: str) -> DataFrame:
    """spark.read.text rows -> (key, bad): the line's keys, or bad=true for a malformed line."""
    if kind == "url":
        parsed = lines.select(_url_keys_udf()(F.col("value")).alias("keys"))
        return parsed.select(F.explode_outer(F.coalesce(F.col("keys"), F.array(F.lit(None).cast("string"))))
                             .alias(KEY), F.col("keys").isNull().alias("bad"))
    # the same stripping as Python's str.strip() in parse_line (Spark's trim takes spaces only), BOM too
    line = F.regexp_replace(F.col("value"), r"^[\s\x{FEFF}]+|\s+$", "")
    skip = (line == "") | line.startswith("#")
    entry = F.regexp_replace(F.split(F.split(line, " #", 2)[0], "\t#", 2)[0], r"^\s+|\s+$", "")
    if kind == "sample_id":  # the key is the id as a decimal string (parse_line: str(int(line)))
        good = entry.rlike(r"^-?[0-9]{1,19}$") & entry.cast("long").isNotNull()
        return (lines.where(~skip)
                .select(F.when(good, entry.cast("long").cast("string")).alias(KEY), (~good).alias("bad")))
    want = HEX_LENGTH[kind.split("_", 1)[1]]
    good = entry.rlike(f"^[0-9a-fA-F]{{{want}}}$")
    return (lines.where(~skip)
            .select(F.when(good, F.lower(entry)).alias(KEY), (~good).alias("bad")))


def read_keys(spark, bl: BlockList) -> DataFrame:
    """One list -> its distinct keys (column KEY); BlocklistError naming the file and line of a bad line."""
    keyed = _line_keys(spark.read.text(bl.uri), bl.kind)
    bad = keyed.agg(F.coalesce(F.max(F.col("bad").cast("int")), F.lit(0)).alias("bad")).first()["bad"]
    if bad:
        import fsspec

        with fsspec.open(fsspec_uri(bl.uri), "r", encoding="utf-8", errors="replace", compression="infer") as fh:
            error = first_bad_line((line.rstrip("\r\n") for line in fh), bl.uri, bl.kind)
        raise error or BlocklistError(f"{bl.uri}: a line is malformed (Spark split the file into lines where "
                                      "Python does not; check its line endings)")
    return keyed.where(F.col(KEY).isNotNull()).select(KEY).distinct()


def _normalised_udf():
    from pyspark.sql.functions import pandas_udf

    @pandas_udf(T.StringType())
    def normalised(urls: pd.Series) -> pd.Series:
        return pd.Series([normalise_url(u) if isinstance(u, str) else None for u in urls], dtype=object)

    return normalised


def row_keys(rows: DataFrame, kind: str) -> DataFrame:
    """Rows (sample_id, url, and for image kinds its digest column) -> (sample_id, key) under that kind."""
    if kind == "sample_id":
        return rows.select(S.SAMPLE_ID, F.col(S.SAMPLE_ID).cast("string").alias(KEY))
    if kind in IMAGE_COLUMNS:
        column = IMAGE_COLUMNS[kind]
        if column not in rows.columns:
            raise BlocklistError(f"an {kind} list needs the {column} column of download's images, and the dataset "
                                 f"has none (it was downloaded before laion-spark stored {column}); download again")
        return rows.select(S.SAMPLE_ID, F.lower(F.col(column)).alias(KEY)).where(F.col(KEY).isNotNull())
    url = F.col(S.URL)
    forms = rows.select(S.SAMPLE_ID, F.explode(F.array_distinct(F.array(url, _normalised_udf()(url)))).alias(KEY))
    forms = forms.where(F.col(KEY).isNotNull())
    if kind == "url_md5":
        return forms.select(S.SAMPLE_ID, F.md5(F.col(KEY)).alias(KEY))
    if kind == "url_sha256":
        return forms.select(S.SAMPLE_ID, F.sha2(F.col(KEY), 256).alias(KEY))
    return forms


def blocked(spark, rows: DataFrame, lists: list[BlockList]) -> DataFrame | None:
    """Rows + lists -> (sample_id, reason) for each row at least one list matches (the first list's name
    in config order), one row per sample_id; None without lists. Lists are checked first (read_keys)."""
    if not lists:
        return None
    hits = None
    for order, bl in enumerate(lists):
        keys = read_keys(spark, bl)
        matched = (row_keys(rows, bl.kind).join(keys, KEY, "left_semi")
                   .select(S.SAMPLE_ID, F.lit(order).alias("order"), F.lit(bl.reason).alias(S.REASON)))
        hits = matched if hits is None else hits.unionByName(matched)
    first = F.min(F.struct(F.col("order"), F.col(S.REASON)))
    return hits.groupBy(S.SAMPLE_ID).agg(first.alias("_first")).select(S.SAMPLE_ID, F.col(f"_first.{S.REASON}")
                                                                      .alias(S.REASON))
