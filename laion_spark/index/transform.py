"""index as DataFrame transforms (pure: no reads, no writes, no actions): embeddings -> rows to index.

INPUT  -> an embeddings DataFrame (schemas.EMBEDDINGS), optionally a table of the rows to index (any
          table with sample_id, or LAION's SAMPLE_ID), the field (image | text), the clip_model chosen
          (None: every model) and the dimension the index takes
OUTPUT -> `selected`: the embeddings rows of the chosen model whose sample_id is in the table;
          `metadata_columns`: the columns of the table a search result shows
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from laion_spark import schemas as S

VECTOR = "vector"
REASON = S.REASON
REASONS = ("no_vector", "wrong_dimension", "not_finite", "zero_vector", "reserved_id")
# what a result row shows, when the table has it (LAION's release spells some in capitals)
METADATA = ("url", "text", "similarity", "language", "original_width", "original_height", "punsafe", "pwatermark",
            "aesthetic_score")
_LAION_NAMES = {"SAMPLE_ID": S.SAMPLE_ID, "URL": "url", "TEXT": "text", "LANGUAGE": "language",
                "AESTHETIC_SCORE": "aesthetic_score", "WIDTH": "original_width", "HEIGHT": "original_height"}


def normalise_names(table: DataFrame) -> DataFrame:
    """A dataset / release table -> the same rows with our column names (SAMPLE_ID -> sample_id, ...)."""
    have = set(table.columns)
    for theirs, ours in _LAION_NAMES.items():
        if theirs in have and ours not in have:
            table = table.withColumnRenamed(theirs, ours)
    return table


def metadata_columns(table: DataFrame | None) -> list[str]:
    return [c for c in METADATA if table is not None and c in table.columns]


def selected(embeddings: DataFrame, table: DataFrame | None, clip_model: str | None) -> DataFrame:
    """-> the embeddings rows of clip_model (None: all) whose sample_id is in table (None: every row)."""
    rows = embeddings
    if clip_model is not None:
        rows = rows.filter(F.col(S.CLIP_MODEL).eqNullSafe(F.lit(clip_model)))
    if table is not None:
        ids = normalise_names(table).select(S.SAMPLE_ID).distinct()
        rows = rows.join(ids, S.SAMPLE_ID, "left_semi")
    return rows
