"""The release as DataFrame transforms (pure: no reads, no writes, no actions): dataset + tags -> LAION's columns.

INPUT  -> a dataset (filter's output: images rows with similarity and clip_model; or any images-like table,
          LAION's own spellings of the columns included), the tags table or None, the release layout
          (laion5b / laion400m), the (sample_id, reason) rows blocklists matched, and export.where
OUTPUT -> `scored`: the dataset's rows with the tag scores beside them (TAG_COLUMNS, null where untagged)
          and LAION's hash; `decide`: the same with REASON (null: released; blocklisted:<list>, no_url,
          duplicate_sample_id or excluded:<where>); `release_columns`: a decided frame's released rows in
          the layout's columns and types (schemas.RELEASES), in LAION's order

Scores come from the tags table when one is given; without it, from the dataset's own punsafe /
pwatermark / ... columns where it has them (a re-downloaded LAION subset carries LAION's), else null: a
score no head computed is never made up.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from laion_spark import schemas as S
from laion_spark.export.laion_hash import hash_column

PUNSAFE, PWATERMARK, AESTHETIC, NSFW = "punsafe", "pwatermark", "aesthetic_score", "nsfw_zero_shot"
TAG_COLUMNS = (PUNSAFE, PWATERMARK, AESTHETIC, NSFW)
HASH = "hash"
UNTAGGED = "_untagged"  # true where a tags table was given and has no row for the dataset row
EXCLUDED_PREFIX = "excluded:"
NO_URL = "no_url"
NO_SAMPLE_ID = "no_sample_id"
DUPLICATE = "duplicate_sample_id"

# where a column may be found in the dataset: ours first, then LAION's spelling
_SOURCES = {
    S.SAMPLE_ID: (S.SAMPLE_ID, "SAMPLE_ID"), S.URL: (S.URL, "URL"), S.TEXT: (S.TEXT, "TEXT"),
    S.LANGUAGE: (S.LANGUAGE, "LANGUAGE"), S.LICENSE: (S.LICENSE, "LICENSE"),
    "original_width": ("original_width", "WIDTH"), "original_height": ("original_height", "HEIGHT"),
    S.SIMILARITY: (S.SIMILARITY, "laion_similarity"),
    PUNSAFE: (PUNSAFE,), PWATERMARK: (PWATERMARK,), AESTHETIC: (AESTHETIC, "AESTHETIC_SCORE"), NSFW: ("NSFW",),
}


def source(df: DataFrame, name: str, typ: T.DataType) -> Column:
    """-> the dataset's column for `name` (ours, else LAION's spelling) cast to typ; a typed null if it has none."""
    for candidate in _SOURCES.get(name, (name,)):
        if candidate in df.columns:
            return F.col(f"`{candidate}`").cast(typ)
    return F.lit(None).cast(typ)


def _tag_type(name: str) -> T.DataType:
    return T.StringType() if name == NSFW else T.FloatType()


def scored(dataset: DataFrame, tags: DataFrame | None) -> DataFrame:
    """dataset + tags (None: none) -> the dataset's columns (those named like a tag column replaced) + TAG_COLUMNS
    + HASH + UNTAGGED. A tags table with a sample_id twice (a dataset row listed twice is tagged twice, with
    the same scores) gives one score per sample_id, so no dataset row is repeated."""
    keep = [c for c in dataset.columns if c not in (*TAG_COLUMNS, HASH, UNTAGGED)]
    if tags is None:
        base = dataset.select(*[F.col(f"`{c}`") for c in keep],
                              *[source(dataset, c, _tag_type(c)).alias(c) for c in TAG_COLUMNS],
                              F.lit(False).alias(UNTAGGED))
    else:
        missing = [c for c in (S.SAMPLE_ID, *TAG_COLUMNS) if c not in tags.columns]
        if missing:
            raise ValueError(f"the tags table lacks column(s) {missing}; give the tag stage's output")
        one = tags.select(F.col(S.SAMPLE_ID).alias("_tag_id"), *[F.col(c).cast(_tag_type(c)).alias(c)
                                                                  for c in TAG_COLUMNS], F.lit(True).alias("_hit"))
        one = one.dropDuplicates(["_tag_id"])
        joined = dataset.select(*[F.col(f"`{c}`") for c in keep]).join(
            one, F.col(S.SAMPLE_ID) == F.col("_tag_id"), "left")
        base = joined.select(*[F.col(f"`{c}`") for c in keep], *TAG_COLUMNS,
                             F.col("_hit").isNull().alias(UNTAGGED))
    return base.withColumn(HASH, hash_column(source(base, S.URL, T.StringType()), source(base, S.TEXT, T.StringType())))


def decide(rows: DataFrame, blocked: DataFrame | None, where: str = "") -> DataFrame:
    """scored rows + blocklist matches (sample_id, reason; None: no lists) + export.where -> the rows with
    REASON, the first that applies: blocklisted:<list>; NO_SAMPLE_ID; NO_URL (a pair without an image URL is no pair
    to release); DUPLICATE for every row of a sample_id but one (a release has each pair once: the one
    with the smallest url, text, sha256 stays); excluded:<where> for a row the condition does not hold
    for (null counts as not holding); null for a released row."""
    from pyspark.sql import Window

    reasons = []
    if blocked is not None:
        rows = rows.join(blocked.select(F.col(S.SAMPLE_ID).alias("_blocked_id"), F.col(S.REASON).alias("_blocked")),
                         F.col(S.SAMPLE_ID) == F.col("_blocked_id"), "left").drop("_blocked_id")
        reasons.append(F.col("_blocked"))
    url = source(rows, S.URL, T.StringType())
    reasons.append(F.when(F.col(S.SAMPLE_ID).isNull(), F.lit(NO_SAMPLE_ID)))
    reasons.append(F.when(url.isNull() | (F.trim(url) == ""), F.lit(NO_URL)))
    order = [url.asc_nulls_last(), source(rows, S.TEXT, T.StringType()).asc_nulls_last(),
             source(rows, "sha256", T.StringType()).asc_nulls_last()]
    # rows a list or a missing URL already removes do not take the one place of their sample_id
    first = F.row_number().over(Window.partitionBy(S.SAMPLE_ID).orderBy(F.coalesce(*reasons).isNotNull(), *order))
    reasons.append(F.when(first > 1, F.lit(DUPLICATE)))
    if where:
        holds = F.coalesce(F.expr(where).cast(T.BooleanType()), F.lit(False))
        reasons.append(F.when(~holds, F.lit(EXCLUDED_PREFIX + where)))
    out = rows.withColumn(S.REASON, F.coalesce(*reasons))
    return out.drop("_blocked") if blocked is not None else out


def release_exprs(rows: DataFrame, layout: str) -> list[Column]:
    """scored rows + layout name -> the release's columns, in order, with exactly its types."""
    schema = S.RELEASES[layout]
    made = {
        "SAMPLE_ID": source(rows, S.SAMPLE_ID, T.LongType()),
        "URL": source(rows, S.URL, T.StringType()),
        "TEXT": source(rows, S.TEXT, T.StringType()),
        # the original image's, upright, as decoded (LAION's raw metadata swapped the two)
        "WIDTH": source(rows, "original_width", T.IntegerType()),
        "HEIGHT": source(rows, "original_height", T.IntegerType()),
        "similarity": source(rows, S.SIMILARITY, T.DoubleType()),
        "LANGUAGE": source(rows, S.LANGUAGE, T.StringType()),
        "punsafe": F.col(PUNSAFE).cast(T.FloatType()),
        "pwatermark": F.col(PWATERMARK).cast(T.FloatType()),
        "AESTHETIC_SCORE": F.col(AESTHETIC).cast(T.FloatType()),
        "LICENSE": source(rows, S.LICENSE, T.StringType()),
        "NSFW": F.col(NSFW).cast(T.StringType()),
        "hash": F.col(HASH).cast(T.LongType()),
    }
    return [made[f.name].alias(f.name) for f in schema.fields]


def release_columns(decided: DataFrame, layout: str) -> DataFrame:
    """decide's rows -> the released ones (REASON null) in the layout's columns."""
    return decided.where(F.col(S.REASON).isNull()).select(*release_exprs(decided, layout))

