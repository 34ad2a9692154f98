"""The dedupe job: config -> read candidates (+ earlier pairs, + blocklist) -> transform -> check -> write.

INPUT  -> JobConfig with input (candidates table URI(s), comma-separated), output, and dedupe.*
OUTPUT -> pairs at `output` and a summary dict: rows_in, pairs, duplicates_removed, removed_previous,
          removed_blocklist, collisions_rehashed, collisions_unresolved. Nothing is written when a
          sample_id collision stays unresolved or when the counts do not add up to the input rows.
"""

from __future__ import annotations

import functools
import logging

from laion_spark import schemas as S
from laion_spark.config import ConfigError
from laion_spark.dedupe.transform import COUNT_NAMES, dedupe_pairs
from laion_spark.io import exists, read_table, write_table

log = logging.getLogger(__name__)


class DedupeError(RuntimeError):
    """The run cannot produce a correct pairs table (unresolved id collisions, rows unaccounted for)."""


def split_uris(text: str) -> list[str]:
    """'a, b,' -> ['a', 'b']."""
    return [u.strip() for u in text.split(",") if u.strip()]


def prepare(cfg) -> None:
    """Checks that need no Spark: input, previous tables and blocklist exist; output is none of them."""
    inputs = split_uris(cfg.input)
    if not inputs:
        raise ConfigError("input is required: laion-spark dedupe input=URI output=URI")
    for uri in inputs:
        if not exists(uri):
            raise ConfigError(f"input not found: {uri}")
    previous = split_uris(cfg.dedupe.previous)
    for uri in previous:
        if not exists(uri):
            raise ConfigError(f"dedupe.previous not found: {uri}")
    if cfg.dedupe.blocklist and not exists(cfg.dedupe.blocklist):
        raise ConfigError(f"dedupe.blocklist not found: {cfg.dedupe.blocklist}")
    if cfg.output.rstrip("/") in {u.rstrip("/") for u in inputs + previous}:
        raise ConfigError(f"output {cfg.output} is also an input or dedupe.previous table; write elsewhere")


def _read_union(spark, uris: list[str], schema):
    frames = [read_table(spark, uri, schema) for uri in uris]
    return functools.reduce(lambda a, b: a.unionByName(b), frames) if frames else None


def check_counts(rows_in: int, counts: dict) -> None:
    """Raise DedupeError unless every input row is accounted for and every pair has a unique id."""
    if counts["collisions_unresolved"]:
        raise DedupeError(
            f"{counts['collisions_unresolved']} pairs still share a sample_id after "
            "dedupe.max_rehash_rounds re-hash rounds; raise dedupe.max_rehash_rounds "
            "(or dedupe.hash_bits); nothing was written"
        )
    accounted = sum(counts[k] for k in ("pairs", "duplicates_removed", "removed_previous", "removed_blocklist"))
    if accounted != rows_in:
        raise DedupeError(
            f"row accounting failed: {rows_in} input rows but pairs + duplicates_removed + "
            f"removed_previous + removed_blocklist = {accounted} ({counts}); nothing was written"
        )


def run(spark, cfg) -> dict:
    d = cfg.dedupe
    previous_uris = split_uris(d.previous)
    candidates = _read_union(spark, split_uris(cfg.input), S.CANDIDATES)
    previous = _read_union(spark, previous_uris, S.PAIRS)
    blocklist = spark.read.text(d.blocklist) if d.blocklist else None
    out = dedupe_pairs(candidates, d, previous, blocklist, cache=True)  # one read of the input feeds all
    try:
        row = out.counts.first()
        counts = {name: int(row[name]) for name in COUNT_NAMES}
        rows_in = candidates.count()  # counted apart from the groups, so the check can fail
        check_counts(rows_in, counts)
        write_table(out.pairs, cfg.output, S.PAIRS, "pairs", cfg.mode)
    finally:
        out.base.unpersist()
    summary = {
        **counts,
        "rows_in": rows_in,
        "previous_tables": previous_uris,
        "blocklist": d.blocklist,
    }
    log.info(
        "dedupe: %s rows in -> %s pairs (%s duplicates, %s previous, %s blocklist; %s ids re-hashed)",
        rows_in, counts["pairs"], counts["duplicates_removed"], counts["removed_previous"],
        counts["removed_blocklist"], counts["collisions_rehashed"],
    )
    return summary
