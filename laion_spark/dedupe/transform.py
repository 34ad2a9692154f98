"""dedupe as a DataFrame transform: candidates -> pairs, one row per distinct key with a unique sample_id.

INPUT  -> candidates (schemas.CANDIDATES), a DedupeConfig, optionally the rows of earlier pairs tables
          (schemas.PAIRS) and the lines of a blocklist (a string column `value`: what spark.read.text gives)
OUTPUT -> `DedupeOutput(pairs, groups, counts, ranked)`; no action is run here

Rules (all of them independent of partitioning and task order):

- Duplicates. Rows with the same key are one group: the key is (url, text) for `dedupe.key=url_text`,
  the url alone for `dedupe.key=url`. The survivor of a group is the row with the smallest
  `SURVIVOR_ORDER` tuple: (source_uri, source_offset), then url, text, page_url, language,
  language_prob, license, crawl_time, source_length (nulls first). The other rows of the group are
  "duplicates removed".
- Blocklist. One entry a line; surrounding whitespace stripped, blank lines and lines starting with
  `#` ignored. A line that is a (signed) decimal integer in the int64 range is Spark's
  `xxhash64(url)` of the URL alone (default seed 42, all 64 bits, whatever `dedupe.hash_bits` is);
  any other line is a URL, matched exactly. A group whose survivor's url matches is "removed by
  blocklist".
- Previous. A group whose key (as above) is in an earlier pairs table is "removed by previous".
  A group both blocked and in a previous table counts as blocklist only. The sample_ids of the
  previous tables are reserved: a new pair never gets one of them.
- sample_id. Every remaining survivor gets `xxhash64(url, text)` (only its low `hash_bits` bits
  when hash_bits < 64). Where several pairs share an id (or the id is reserved), the pair with the
  smallest (url, text) keeps it (a reserved id stays with the earlier table) and every other one is
  re-hashed: it tries `xxhash64(k, url, text)` for k = 1 .. max_rehash_rounds (k an int literal,
  masked the same way) and takes the first id that no survivor took in the first pass, that is not
  reserved, and that is not among the candidate ids of any other re-hashed pair (so the choice of
  one pair never depends on another's). Its `rehash_round` is that k (0 for pairs never re-hashed).
  A re-hashed pair with no such id is "unresolved": it is left out of `pairs`; the job fails when
  there is any (raise dedupe.max_rehash_rounds, or hash_bits when a test shrank it).

Accounting: every input row is in exactly one place,
  rows_in = pairs + duplicates_removed + removed_previous + removed_blocklist + collisions_unresolved.
"""

from __future__ import annotations

from typing import NamedTuple

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from laion_spark import schemas as S

KEY_URL_TEXT = "url_text"
KEY_URL = "url"

# group status: exactly one per distinct key
KEPT = "kept"
PREVIOUS = "previous"
BLOCKLIST = "blocklist"
UNRESOLVED = "unresolved"

COPIES = "copies"
STATUS = "status"
REHASH_ROUND = "rehash_round"

_CANDIDATE_NAMES = [f.name for f in S.CANDIDATES.fields]
_PAIRS_NAMES = [f.name for f in S.PAIRS.fields]
GROUP_COLUMNS = [*_PAIRS_NAMES, COPIES, STATUS, REHASH_ROUND]

# which row of a group survives: the smallest of these, compared left to right
SURVIVOR_ORDER = (
    S.SOURCE_URI,
    S.SOURCE_OFFSET,
    *[n for n in _CANDIDATE_NAMES if n not in (S.SOURCE_URI, S.SOURCE_OFFSET)],
)

COUNT_NAMES = (
    "rows_in",
    "pairs",
    "duplicates_removed",
    "removed_previous",
    "removed_blocklist",
    "collisions_rehashed",
    "collisions_unresolved",
)


class DedupeOutput(NamedTuple):
    """pairs: the output table (schemas.PAIRS columns, unique sample_id).
    groups: one row per distinct key: the survivor's PAIRS columns (sample_id null unless kept),
            `copies` (input rows in the group), `status` (kept / previous / blocklist / unresolved),
            `rehash_round` (0 = plain hash, k = re-hashed with seed k, null = no id).
    counts: one row, the COUNT_NAMES columns (long), aggregated from groups.
    ranked: every group with its first-pass id and rank (rank_ids).
    base: the frame the four above are cheap selections of, and the only costly one (the input grouped
          by key): dedupe_pairs(cache=True) persists it, so the id count, the counts and the write read
          the input once (without it every branch of the plan would read it again).
    """

    pairs: DataFrame
    groups: DataFrame
    counts: DataFrame
    ranked: DataFrame
    base: DataFrame


def key_columns(cfg) -> list[str]:
    """DedupeConfig -> the columns that make two rows duplicates."""
    return [S.URL] if cfg.key == KEY_URL else [S.URL, S.TEXT]


def mask_bits(hash_col: Column, bits: int) -> Column:
    """int64 hash column -> its low `bits` bits (unchanged for 64)."""
    if bits >= 64:
        return hash_col
    return hash_col.bitwiseAND(F.lit((1 << bits) - 1).cast("long"))


def sample_id_column(cfg, seed: Column | None = None) -> Column:
    """-> xxhash64(url, text), or xxhash64(seed, url, text) for a re-hash, masked to cfg.hash_bits."""
    parts = [F.col(S.URL), F.col(S.TEXT)]
    if seed is not None:
        parts.insert(0, seed)
    return mask_bits(F.xxhash64(*parts), cfg.hash_bits)


def select_survivors(candidates: DataFrame, cfg) -> DataFrame:
    """candidates -> one row per key: the survivor's CANDIDATES columns plus `copies`."""
    order = F.struct(*[F.col(c) for c in SURVIVOR_ORDER])
    return (
        candidates.groupBy(*key_columns(cfg))
        .agg(F.min(order).alias("_survivor"), F.count(F.lit(1)).alias(COPIES))
        .select(*[F.col("_survivor")[c].alias(c) for c in _CANDIDATE_NAMES], COPIES)
    )


def parse_blocklist(lines: DataFrame) -> DataFrame:
    """Blocklist lines (column `value`) -> one row per blocked xxhash64(url): `blocked_hash` (long),
    `any_url` (true when an integer line names the hash itself, so every URL with it is blocked) and
    `blocked_urls` (the URL lines with that hash, matched exactly)."""
    entry = F.regexp_replace(F.col("value"), r"^\s+|\s+$", "")
    entries = lines.select(entry.alias("entry")).filter((F.col("entry") != "") & ~F.col("entry").startswith("#"))
    as_hash = F.when(F.col("entry").rlike(r"^-?[0-9]+$"), F.col("entry").try_cast("long"))
    entries = entries.select(
        F.coalesce(as_hash, F.xxhash64("entry")).alias("blocked_hash"),
        as_hash.isNotNull().alias("_is_hash"),
        F.when(as_hash.isNull(), F.col("entry")).alias("_url"),
    )
    return entries.groupBy("blocked_hash").agg(
        F.max("_is_hash").alias("any_url"), F.collect_set("_url").alias("blocked_urls")
    )


def _mark_removed(groups: DataFrame, cfg, previous: DataFrame | None, blocklist: DataFrame | None) -> DataFrame:
    """groups -> groups with `status`: blocklist, previous, or kept (in that precedence)."""
    in_previous = F.lit(False)
    if previous is not None:  # first: on the grouping keys, so it needs no new shuffle of the groups
        keys = key_columns(cfg)
        seen = previous.select(*keys).distinct().withColumn("_in_previous", F.lit(True))
        groups = groups.join(seen, on=keys, how="left")
        in_previous = F.col("_in_previous").isNotNull()
    blocked = F.lit(False)
    if blocklist is not None:  # one join on the hash serves both kinds of line
        blocked_ids = parse_blocklist(blocklist)
        groups = groups.join(blocked_ids, F.xxhash64(F.col(S.URL)) == F.col("blocked_hash"), "left")
        blocked = F.col("any_url") | F.array_contains(F.col("blocked_urls"), F.col(S.URL))
        blocked = F.coalesce(blocked, F.lit(False))
    status = F.when(blocked, F.lit(BLOCKLIST)).when(in_previous, F.lit(PREVIOUS)).otherwise(F.lit(KEPT))
    return groups.select(*_CANDIDATE_NAMES, COPIES, status.alias(STATUS))


MAX_SHARED_IDS = 1_000_000  # ids held twice up to which the ranking joins them by broadcast (about 8 MB)


def rank_ids(marked: DataFrame, cfg, previous: DataFrame | None, cache: bool = False) -> tuple[DataFrame, DataFrame]:
    """Groups with status -> (the same plus the reserved ids, each with `_id` (first-pass id), `_rank`
    (1 = holds `_id`) and `_shared` (true where its id has more than one would-be holder); the frame
    they are computed from, persisted when `cache`). Per id, a reserved id ranks first, then kept groups
    by (url, text), then removed ones (they hold no id; they are in this pass so that the frame has
    every group).

    Why not one window over every group: it shuffles and sorts the full rows by id to find the few ids
    that 64-bit hashes give twice. The ids held twice are found by counting the ids alone (kept groups
    and reserved ids: removed groups never hold one), and only the rows with those ids are ranked,
    joined by broadcast; an id no other holder wants ranks 1 where it stands. Past MAX_SHARED_IDS (a
    small dedupe.hash_bits on a large input) the one window is the cheaper plan again."""
    base = marked.withColumn("_id", sample_id_column(cfg)).withColumn("_reserved", F.lit(False))
    if previous is not None:
        reserved = previous.select(F.col(S.SAMPLE_ID).alias("_id")).distinct().withColumn("_reserved", F.lit(True))
        base = base.unionByName(reserved, allowMissingColumns=True)
    if cache:
        base = base.persist()
    priority = F.when(F.col("_reserved"), 0).when(F.col(STATUS) == KEPT, 1).otherwise(2)
    holder = Window.partitionBy("_id").orderBy(priority, S.URL, S.TEXT)
    holds = F.col("_reserved") | (F.col(STATUS) == KEPT)
    shared = (base.where(holds).groupBy("_id").agg(F.count(F.lit(1)).alias("_n")).where(F.col("_n") > 1)
              .select("_id", F.lit(True).alias("_shared")))
    if shared.count() > MAX_SHARED_IDS:
        everyone = base.join(shared, "_id", "left")
        return everyone.withColumn("_rank", F.row_number().over(holder)), base
    flagged = base.join(F.broadcast(shared), "_id", "left")
    alone = flagged.where(F.col("_shared").isNull()).withColumn("_rank", F.lit(1))
    ranked = flagged.where(F.col("_shared")).withColumn("_rank", F.row_number().over(holder))
    return alone.unionByName(ranked), base


def _assign_ids(ranked: DataFrame, cfg) -> DataFrame:
    """rank_ids' frame -> GROUP_COLUMNS: kept groups with their final sample_id, removed ones without."""
    own = ranked.filter(~F.col("_reserved"))
    is_kept = F.col(STATUS) == KEPT
    taken = ranked.filter((F.col("_rank") == 1) & (F.col("_reserved") | is_kept)).select(F.col("_id").alias("_taken"))
    settled = own.filter(is_kept & (F.col("_rank") == 1)).select(
        F.col("_id").alias(S.SAMPLE_ID), *_CANDIDATE_NAMES, COPIES, STATUS, F.lit(0).alias(REHASH_ROUND)
    )
    removed = own.filter(~is_kept).select(
        F.lit(None).cast("long").alias(S.SAMPLE_ID), *_CANDIDATE_NAMES, COPIES, STATUS,
        F.lit(None).cast("int").alias(REHASH_ROUND),
    )
    pending = own.filter(is_kept & (F.col("_rank") > 1)).select(*_CANDIDATE_NAMES, COPIES)

    rounds = F.sequence(F.lit(1), F.lit(cfg.max_rehash_rounds))
    tries = pending.select(S.URL, S.TEXT, F.explode(rounds).alias("_k"))
    tries = tries.withColumn("_cand", sample_id_column(cfg, seed=F.col("_k")))
    # a pair whose seeds repeat an id counts once for it (its earliest seed)
    tries = tries.groupBy(S.URL, S.TEXT, "_cand").agg(F.min("_k").alias("_k"))
    tries = tries.withColumn("_wanted_by", F.count(F.lit(1)).over(Window.partitionBy("_cand")))
    tries = tries.join(taken, F.col("_cand") == F.col("_taken"), "left")
    free = (F.col("_wanted_by") == 1) & F.col("_taken").isNull()
    choice = tries.groupBy(S.URL, S.TEXT).agg(F.min(F.when(free, F.struct("_k", "_cand"))).alias("_choice"))
    rehashed = pending.join(choice, on=[S.URL, S.TEXT], how="left").select(
        F.col("_choice._cand").alias(S.SAMPLE_ID),
        *_CANDIDATE_NAMES,
        COPIES,
        F.when(F.col("_choice").isNull(), F.lit(UNRESOLVED)).otherwise(F.lit(KEPT)).alias(STATUS),
        F.col("_choice._k").alias(REHASH_ROUND),
    )
    return settled.unionByName(rehashed).unionByName(removed).select(*GROUP_COLUMNS)


def count_outcomes(groups: DataFrame) -> DataFrame:
    """groups -> one row of COUNT_NAMES (long) columns."""
    def n_status(status: str) -> Column:
        return F.count_if(F.col(STATUS) == status)

    aggs = {
        "rows_in": F.sum(COPIES),
        "pairs": n_status(KEPT),
        "duplicates_removed": F.sum(F.col(COPIES) - 1),
        "removed_previous": n_status(PREVIOUS),
        "removed_blocklist": n_status(BLOCKLIST),
        "collisions_rehashed": F.count_if(F.col(REHASH_ROUND) > 0),
        "collisions_unresolved": n_status(UNRESOLVED),
    }
    return groups.agg(*[F.coalesce(aggs[n], F.lit(0)).cast("long").alias(n) for n in COUNT_NAMES])


def dedupe_pairs(
    candidates: DataFrame,
    cfg,
    previous: DataFrame | None = None,
    blocklist: DataFrame | None = None,
    cache: bool = False,
) -> DedupeOutput:
    """candidates + DedupeConfig (+ earlier pairs, + blocklist lines) -> DedupeOutput (see module doc); with
    cache, its `base` is persisted (the caller unpersists it)."""
    if cfg.key not in (KEY_URL_TEXT, KEY_URL):
        raise ValueError(f"dedupe.key must be {KEY_URL_TEXT} or {KEY_URL}, got {cfg.key!r}")
    marked = _mark_removed(select_survivors(candidates.select(*_CANDIDATE_NAMES), cfg), cfg, previous, blocklist)
    ranked, base = rank_ids(marked, cfg, previous, cache)
    groups = _assign_ids(ranked, cfg)
    pairs = groups.filter(F.col(STATUS) == KEPT).select(*_PAIRS_NAMES)
    return DedupeOutput(pairs, groups, count_outcomes(groups), ranked, base)
