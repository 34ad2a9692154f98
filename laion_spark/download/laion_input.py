"""download's input from a LAION or Re-LAION release: their column names -> ours, and a sample_id.

INPUT  -> any pairs table: ours (sample_id, url, text), LAION-5B's (SAMPLE_ID, URL, TEXT, WIDTH, HEIGHT,
          similarity, hash, punsafe, pwatermark, ...), Re-LAION's lower-case (url, caption, similarity,
          hash, punsafe, pwatermark); download.url_col / download.caption_col name them where they differ
OUTPUT -> the same rows with `url` and `text`, and `sample_id` (the table's SAMPLE_ID, else computed as
          dedupe computes it: xxhash64(url, text) masked to dedupe.hash_bits); every other column carried
          through as it is, except those download or a later stage adds itself (WIDTH / HEIGHT against
          download's width / height, similarity, clip_model, reason), which keep LAION's values as
          laion_<name> (laion_width, laion_similarity) beside ours

A release has one row per (URL, TEXT) (LAION deduplicated on the pair), so the computed sample_ids are
unique there; on a table with repeated pairs, run dedupe first (embed and filter refuse a sample_id
listed twice).
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from laion_spark import schemas as S
from laion_spark.config import ConfigError

LATER_COLUMNS = (S.SIMILARITY, S.CLIP_MODEL, S.REASON)  # filter adds these; LAION's are kept beside them


def _pick(columns: list[str], given: str, candidates: tuple[str, ...], what: str, key: str) -> str:
    if given:
        if given not in columns:
            raise ConfigError(f"{key}={given!r}: the input has no such column (its columns: {columns})")
        return given
    for name in candidates:
        if name in columns:
            return name
    raise ConfigError(f"the input has no {what} column ({' / '.join(candidates)}); name it with {key}=")


def from_release(pairs: DataFrame, download_cfg, dedupe_cfg) -> DataFrame:
    """A pairs table in our or LAION's spelling -> ours (see the module docstring). A table without any
    caption column keeps none (download needs only the URL) and gets no computed sample_id."""
    from laion_spark.dedupe.transform import sample_id_column

    columns = pairs.columns
    url = _pick(columns, download_cfg.url_col, (S.URL, "URL"), "URL", "download.url_col")
    captions = (S.TEXT, "TEXT", "caption")
    text = (_pick(columns, download_cfg.caption_col, captions, "caption", "download.caption_col")
            if download_cfg.caption_col or any(c in columns for c in captions) else None)
    sample_id = next((c for c in (S.SAMPLE_ID, "SAMPLE_ID") if c in columns), None)
    sources = {url: S.URL, **({text: S.TEXT} if text else {}), **({sample_id: S.SAMPLE_ID} if sample_id else {})}
    # any other column that would meet one of ours (Spark's names are case-insensitive: LAION's WIDTH meets
    # download's width, a second URL column meets url) keeps its values beside ours as laion_<name>
    taken = {c.lower() for c in (S.URL, S.TEXT, S.SAMPLE_ID, *S.DOWNLOAD_COLUMNS, *LATER_COLUMNS)}
    names = {c: sources.get(c) or (f"laion_{c.lower()}" if c.lower() in taken and c not in S.DOWNLOAD_COLUMNS
                                   else c) for c in columns}
    out = pairs.select(*[F.col(f"`{c}`").alias(n) for c, n in names.items()])
    if S.SAMPLE_ID not in out.columns and text:
        out = out.withColumn(S.SAMPLE_ID, sample_id_column(dedupe_cfg))
    return out
