"""filter as DataFrame transforms (no UDF for the filter itself): images + embeddings -> dataset + rejected.

INPUT  -> an images DataFrame (the download stage's output: it needs sample_id, status, error_message
          and language; every other column is carried), an embeddings DataFrame (schemas.EMBEDDINGS:
          at most one row per sample_id, the job checks it) and a FilterConfig (thresholds per
          language group)
OUTPUT -> `filter_images`: Filtered(dataset, rejected), both lazy:
            dataset:  the rows of images that pass, with similarity and clip_model (dataset_schema)
            rejected: every other row of images, with similarity, clip_model and reason (rejected_schema):
              download_failed:<status>  the download status is not success
              not_embedded              a success row with no embeddings row ("no row for this sample_id
                                        in the embeddings table" in error_message), or whose row has a
                                        null embedding or a null/NaN similarity (the embed stage's
                                        error_message)
              below_threshold           similarity < the threshold of the row's language group
          Every images row is in exactly one of the two (given unique sample_ids in embeddings).
          `kept_vectors`: the kept rows' vectors, for the .npy shards (written by the job through
          export's writer: export/transform.py pack_embeddings, export/write.py write_embeddings).

A row passes when similarity >= threshold, compared in float32 (the stored similarity's type), so a
similarity stored equal to the threshold passes. Thresholds are a cheap transform over stored scores:
changing them reruns only this, never the embeddings.
"""

from __future__ import annotations

from typing import NamedTuple

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from laion_spark import schemas as S

REQUIRED_COLUMNS = (S.SAMPLE_ID, S.STATUS, S.ERROR_MESSAGE, S.LANGUAGE)
NPY_COLUMNS = (S.SAMPLE_ID, S.URL, S.TEXT)
EMBEDDING_COLUMNS = tuple(S.EMBEDDINGS.fieldNames())

DOWNLOAD_FAILED = "download_failed"  # reason = download_failed:<status>
NOT_EMBEDDED = "not_embedded"
BELOW_THRESHOLD = "below_threshold"
NO_ROW_MESSAGE = "no row for this sample_id in the embeddings table"
NO_VECTOR_MESSAGE = "the embeddings row has no embedding or no similarity (null or NaN), and no error_message"

# the columns the filter adds; an images table that already has them (a filtered dataset filtered
# again) gets them replaced
_ADDED = (S.SIMILARITY, S.CLIP_MODEL, S.REASON)
# the embeddings columns under names no images table uses
_E = {name: f"_emb_{name}" for name in EMBEDDING_COLUMNS}
_HAS_ROW, _EMBEDDED, _GROUP, _REASON = "_emb_has_row", "_emb_embedded", "_group", "_reason"

class Filtered(NamedTuple):
    dataset: DataFrame
    rejected: DataFrame


def check_columns(images: DataFrame, embeddings: DataFrame | None = None) -> None:
    """Raise ValueError unless images (and embeddings) have the columns the filter needs."""
    missing = [c for c in REQUIRED_COLUMNS if c not in images.columns]
    if missing:
        raise ValueError(f"filter needs an images table (the download stage's output); missing column(s) {missing}")
    if embeddings is not None:
        missing = [c for c in EMBEDDING_COLUMNS if c not in embeddings.columns]
        if missing:
            raise ValueError(f"filter needs an embeddings table (the embed stage's output); missing column(s) "
                             f"{missing}")


def _carried(schema: T.StructType) -> list[T.StructField]:
    return [f for f in schema.fields if f.name not in _ADDED]


def dataset_schema(images_schema: T.StructType) -> T.StructType:
    """Schema of images -> schema of dataset: its columns (less any earlier filter columns) + FILTER_FIELDS."""
    return T.StructType([*_carried(images_schema), *S.FILTER_FIELDS])


def rejected_schema(images_schema: T.StructType) -> T.StructType:
    """Schema of images -> schema of rejected: its columns (less any earlier filter columns) + REJECT_FIELDS."""
    return T.StructType([*_carried(images_schema), *S.REJECT_FIELDS])


def language_group_column(language: Column) -> Column:
    """A language column -> its group ('en', 'multi', 'nolang'): schemas.language_group as a Column."""
    return (
        F.when(language.isNull() | (language == "") | (language == "nolang"), F.lit("nolang"))
        .when(language == "en", F.lit("en"))
        .otherwise(F.lit("multi"))
    )


def threshold_column(group: Column, thresholds) -> Column:
    """A group column + FilterThresholds -> the group's threshold as float (the similarity's type)."""
    return (
        F.when(group == "en", F.lit(thresholds.en))
        .when(group == "multi", F.lit(thresholds.multi))
        .otherwise(F.lit(thresholds.nolang))
        .cast(T.FloatType())
    )


def duplicate_embedding_ids(embeddings: DataFrame, keep_all: bool = False) -> DataFrame:
    """embeddings -> (sample_id, rows) for every sample_id with more than one row (every sample_id
    with keep_all) (lazy)."""
    per_id = embeddings.groupBy(S.SAMPLE_ID).agg(F.count(F.lit(1)).alias("rows"))
    return per_id if keep_all else per_id.filter(F.col("rows") > 1)


def classify(images: DataFrame, embeddings: DataFrame, cfg) -> DataFrame:
    """images + embeddings + FilterConfig -> every images row (left join on sample_id) with the filter
    columns: similarity, clip_model, error_message (for not_embedded rows, why), _group and _reason
    (null for a kept row)."""
    check_columns(images, embeddings)
    base = images.drop(*[c for c in _ADDED if c in images.columns])
    stored = F.col(S.SIMILARITY).cast(T.FloatType())
    # the vectors themselves never cross the join's shuffle: only whether they are there
    emb = embeddings.select(
        *[F.col(name).alias(_E[name]) for name in (S.SAMPLE_ID, S.CLIP_MODEL, S.ERROR_MESSAGE)],
        stored.alias(_E[S.SIMILARITY]),
        (F.col(S.IMAGE_EMBEDDING).isNotNull() & F.col(S.TEXT_EMBEDDING).isNotNull() & stored.isNotNull()
         & ~F.isnan(stored)).alias(_EMBEDDED),
        F.lit(True).alias(_HAS_ROW),
    )
    joined = base.join(emb, base[S.SAMPLE_ID] == emb[_E[S.SAMPLE_ID]], "left")

    status = F.col(S.STATUS)
    similarity = F.col(_E[S.SIMILARITY])
    has_row = F.coalesce(F.col(_HAS_ROW), F.lit(False))
    embedded = F.coalesce(F.col(_EMBEDDED), F.lit(False))
    group = language_group_column(F.col(S.LANGUAGE))
    failed = status.isNull() | (status != S.SUCCESS)
    reason = (
        F.when(failed, F.concat(F.lit(DOWNLOAD_FAILED + ":"), F.coalesce(status, F.lit("null"))))
        .when(~has_row | ~embedded, F.lit(NOT_EMBEDDED))
        # Spark orders NaN above every number: NaN never gets here (not embedded above)
        .when(similarity < threshold_column(group, cfg.threshold), F.lit(BELOW_THRESHOLD))
    )
    error_message = (
        F.when(failed, F.col(S.ERROR_MESSAGE))
        .when(~has_row, F.lit(NO_ROW_MESSAGE))
        .when(~embedded, F.coalesce(F.col(_E[S.ERROR_MESSAGE]), F.lit(NO_VECTOR_MESSAGE)))
        .otherwise(F.col(S.ERROR_MESSAGE))
    )
    columns = [error_message.alias(S.ERROR_MESSAGE) if c == S.ERROR_MESSAGE else F.col(c) for c in base.columns]
    return joined.select(
        *columns,
        F.when(failed | ~embedded, F.lit(None).cast(T.FloatType())).otherwise(similarity).alias(S.SIMILARITY),
        F.when(failed, F.lit(None).cast(T.StringType())).otherwise(F.col(_E[S.CLIP_MODEL])).alias(S.CLIP_MODEL),
        group.alias(_GROUP),
        reason.alias(_REASON),
    )


def filter_images(images: DataFrame, embeddings: DataFrame, cfg) -> Filtered:
    """images + embeddings + FilterConfig -> Filtered(dataset, rejected) (see the module doc).

    embeddings must hold at most one row per sample_id (the job fails on duplicates before this runs:
    `duplicate_embedding_ids`); a duplicate would repeat its images row."""
    rows = classify(images, embeddings, cfg)
    carried = [f.name for f in _carried(images.schema)]
    dataset = rows.filter(F.col(_REASON).isNull()).select(*carried, S.SIMILARITY, S.CLIP_MODEL)
    rejected = rows.filter(F.col(_REASON).isNotNull()).select(
        *carried, S.SIMILARITY, S.CLIP_MODEL, F.col(_REASON).alias(S.REASON))
    return Filtered(dataset, rejected)


def kept_vectors(dataset: DataFrame, embeddings: DataFrame) -> DataFrame:
    """dataset (kept rows) + embeddings -> (sample_id, url, text, clip_model, image_embedding,
    text_embedding), one row per dataset row (embeddings unique per sample_id)."""
    missing = [c for c in (*NPY_COLUMNS, S.CLIP_MODEL) if c not in dataset.columns]
    if missing:
        raise ValueError(f"the .npy metadata needs column(s) {missing} in the dataset")
    vectors = embeddings.select(S.SAMPLE_ID, S.IMAGE_EMBEDDING, S.TEXT_EMBEDDING)
    return dataset.select(*NPY_COLUMNS, S.CLIP_MODEL).join(vectors, S.SAMPLE_ID, "inner")
