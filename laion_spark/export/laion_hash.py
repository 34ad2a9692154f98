"""LAION's `hash` column: (url, text) -> the signed 64-bit key LAION's tag tables join on.

INPUT  -> url and caption strings (None read as '', as LAION's compute_hash does)
OUTPUT -> mmh3.hash64((url + text).encode("utf-8"))[0]: the first, signed, half of MurmurHash3 x64 128
          with seed 0 (reference: peers-index-tag-export.md, section 4); `hash_column` the same as a
          Spark column, computed in vectorised pandas UDF batches

The key is over the text as written (no normalisation): it must equal LAION's for the same pair, so a
user can join our release with LAION's watermark / safety tables, and theirs with ours.
"""

from __future__ import annotations

import mmh3
import pandas as pd  # at module level: pandas_udf resolves the type hints in this module's globals


def laion_hash(url: str | None, text: str | None) -> int:
    """(url, text) -> LAION's signed int64 hash of url + text."""
    return mmh3.hash64(((url or "") + (text or "")).encode("utf-8"))[0]


def hash_column(url, text):
    """Spark columns url, text -> a long column of laion_hash (a pandas UDF: DataFrame API, Connect too)."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("long")
    def _hash(urls: pd.Series, texts: pd.Series) -> pd.Series:
        return pd.Series([laion_hash(u, t) for u, t in zip(urls.where(urls.notna(), None),
                                                            texts.where(texts.notna(), None), strict=True)],
                         dtype="int64")

    return _hash(url, text)
