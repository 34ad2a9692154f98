"""dedupe: candidates -> pairs. Expectations are computed here in plain Python from the input rows
(which row survives, which are removed, the counts); only xxhash64 values come from Spark, of literals."""

from __future__ import annotations

import datetime as dt
import json
import random
from collections import Counter

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from laion_spark import cli
from laion_spark import schemas as S
from laion_spark.config import ConfigError, DedupeConfig
from laion_spark.dedupe.job import DedupeError
from laion_spark.dedupe.transform import dedupe_pairs
from laion_spark.io import OutputExistsError, read_table

COLUMNS = [
    "url", "text", "page_url", "language", "language_prob", "license",
    "crawl_time", "source_uri", "source_offset", "source_length",
]
# the survivor rule, written out again: smallest (source_uri, source_offset), then the other columns
ORDER = [
    "source_uri", "source_offset", "url", "text", "page_url", "language",
    "language_prob", "license", "crawl_time", "source_length",
]
T0 = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def cand(url, text, uri="s3://crawl/a.warc.gz", offset=0, **kw) -> tuple:
    row = dict(url=url, text=text, page_url=None, language="en", language_prob=0.5, license=None,
               crawl_time=None, source_uri=uri, source_offset=offset, source_length=100)
    row.update(kw)
    return tuple(row[c] for c in COLUMNS)


def as_dict(row: tuple) -> dict:
    return dict(zip(COLUMNS, row))


def order_key(row: tuple):
    d = as_dict(row)
    return tuple((d[c] is not None, d[c] if d[c] is not None else 0) for c in ORDER)  # nulls first


def candidates_df(spark, rows, slices=None):
    if slices:
        return spark.createDataFrame(spark.sparkContext.parallelize(rows, slices), S.CANDIDATES)
    return spark.createDataFrame(rows, S.CANDIDATES)


def spark_hashes(spark, pairs, rounds: int = 0) -> dict:
    """(url, text) -> [xxhash64(url, text), xxhash64(1, url, text), ..., xxhash64(rounds, url, text)]."""
    df = spark.createDataFrame(sorted(set(pairs)), "url string, text string")
    cols = [F.xxhash64("url", "text")] + [F.xxhash64(F.lit(k), "url", "text") for k in range(1, rounds + 1)]
    return {(r[0], r[1]): list(r[2:]) for r in df.select("url", "text", *cols).collect()}


def url_hash(spark, url: str) -> int:
    return spark.range(1).select(F.xxhash64(F.lit(url))).first()[0]


def pairs_df(spark, rows_with_ids):
    """[(sample_id, candidate tuple)] -> a DataFrame with the PAIRS schema."""
    return spark.createDataFrame([(sid, *row) for sid, row in rows_with_ids], S.PAIRS)


def counts_of(out) -> dict:
    return out.counts.first().asDict()


def assert_accounted(counts: dict, n_rows: int) -> None:
    assert counts["rows_in"] == n_rows
    assert n_rows == (counts["pairs"] + counts["duplicates_removed"] + counts["removed_previous"]
                      + counts["removed_blocklist"] + counts["collisions_unresolved"])


def reference(rows, key="url_text", previous_keys=(), blocked=lambda url: False):
    """Plain-Python dedupe: -> (kept survivor rows, counts without the id columns)."""
    groups: dict = {}
    for row in rows:
        d = as_dict(row)
        groups.setdefault((d["url"], d["text"]) if key == "url_text" else d["url"], []).append(row)
    kept, counts = [], Counter(rows_in=len(rows))
    for k, members in groups.items():
        survivor = min(members, key=order_key)
        counts["duplicates_removed"] += len(members) - 1
        if blocked(as_dict(survivor)["url"]):
            counts["removed_blocklist"] += 1
        elif k in set(previous_keys):
            counts["removed_previous"] += 1
        else:
            kept.append(survivor)
    counts["pairs"] = len(kept)
    return kept, counts


def reference_ids(pairs, hashes, bits, rounds, reserved=()):
    """The id rule, written again: (url, text) -> (sample_id, rehash_round), or None if unresolved."""
    def mask(v):
        return v if bits == 64 else v & ((1 << bits) - 1)

    holders: dict = {}
    for p in sorted(pairs):
        holders.setdefault(mask(hashes[p][0]), []).append(p)
    taken = set(reserved) | set(holders)
    ids, pending = {}, []
    for h, ps in holders.items():
        if h in reserved:
            pending += ps
        else:
            ids[ps[0]] = (h, 0)
            pending += ps[1:]
    tries = {p: {} for p in pending}
    for p in pending:
        for k in range(1, rounds + 1):
            tries[p].setdefault(mask(hashes[p][k]), k)
    wanted = Counter(c for p in pending for c in tries[p])
    for p in pending:
        free = sorted((k, c) for c, k in tries[p].items() if c not in taken and wanted[c] == 1)
        ids[p] = (free[0][1], free[0][0]) if free else None
    return ids


def with_plain_ids(spark, rows):
    hashes = spark_hashes(spark, [(as_dict(r)["url"], as_dict(r)["text"]) for r in rows])
    return [(hashes[(as_dict(r)["url"], as_dict(r)["text"])][0], r) for r in rows]


# ---------------------------------------------------------------- duplicates and the survivor rule


def test_exact_duplicates_removed_smallest_source_survives(spark):
    rows = [
        cand("http://i/1.jpg", "a cat", "s3://c/b.warc.gz", 5, page_url="http://p/b"),
        cand("http://i/1.jpg", "a cat", "s3://c/a.warc.gz", 900, page_url="http://p/a900"),
        cand("http://i/1.jpg", "a cat", "s3://c/a.warc.gz", 7, page_url="http://p/a7"),  # survives
        cand("http://i/1.jpg", "a dog", "s3://c/z.warc.gz", 1),  # other text: its own pair
        cand("http://i/2.jpg", "a cat", "s3://c/c.warc.gz", 3),
        cand("http://i/2.jpg", "a cat", "s3://c/c.warc.gz", 2, license="cc-by"),  # survives
    ]
    out = dedupe_pairs(candidates_df(spark, rows), DedupeConfig())
    expected = [rows[2], rows[3], rows[5]]
    assertDataFrameEqual(out.pairs, pairs_df(spark, with_plain_ids(spark, expected)))
    assert out.pairs.columns == S.PAIRS.fieldNames()
    counts = counts_of(out)
    assert counts == dict(rows_in=6, pairs=3, duplicates_removed=3, removed_previous=0, removed_blocklist=0,
                          collisions_rehashed=0, collisions_unresolved=0)
    assert_accounted(counts, len(rows))


def test_survivor_ties_broken_by_remaining_columns(spark):
    same = dict(uri="s3://c/a.warc.gz", offset=10)
    rows = [
        cand("http://i/1.jpg", "t", **same, page_url="http://p/2"),
        cand("http://i/1.jpg", "t", **same, page_url="http://p/1", language="fr"),
        cand("http://i/1.jpg", "t", **same, page_url="http://p/1", language="de", crawl_time=T0),
        cand("http://i/1.jpg", "t", **same, page_url="http://p/1", language="de"),  # null crawl_time first
        cand("http://i/2.jpg", "t", **same, page_url=None, source_length=7),
        cand("http://i/2.jpg", "t", **same, page_url=None, source_length=3),  # smallest source_length
    ]
    for order in (rows, rows[::-1]):
        out = dedupe_pairs(candidates_df(spark, order), DedupeConfig())
        assertDataFrameEqual(out.pairs, pairs_df(spark, with_plain_ids(spark, [rows[3], rows[5]])))


def generated_rows(n=300, seed=7):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        u = rng.randrange(40)
        rows.append(cand(
            f"http://img.example/{u}.jpg", f"alt {rng.randrange(3)}", f"s3://crawl/{rng.randrange(4)}.warc.gz",
            rng.randrange(20), page_url=f"http://page/{rng.randrange(5)}", language=rng.choice(["en", "de"]),
            crawl_time=rng.choice([None, T0]), source_length=i,
        ))
    return rows


@pytest.mark.parametrize("key", ["url_text", "url"])
def test_output_independent_of_partitioning_and_order(spark, key):
    rows = generated_rows()
    cfg = DedupeConfig(key=key)
    kept, expected_counts = reference(rows, key=key)
    expected = pairs_df(spark, with_plain_ids(spark, kept))
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    base = candidates_df(spark, rows)
    inputs = [
        base.repartition(1),
        base.repartition(7),
        base.repartition(3, "source_offset"),
        candidates_df(spark, shuffled, slices=5),
    ]
    results = []
    for df in inputs:
        out = dedupe_pairs(df, cfg)
        assertDataFrameEqual(out.pairs, expected)
        results.append(counts_of(out))
    assert all(r == results[0] for r in results)
    assert {k: results[0][k] for k in expected_counts} == dict(expected_counts)
    assert results[0]["duplicates_removed"] > 0
    assert_accounted(results[0], len(rows))


def test_key_url_keeps_smallest_source_row_and_hashes_its_text(spark):
    rows = [
        cand("http://i/1.jpg", "zebra", "s3://c/a.warc.gz", 4),  # survives: smallest offset
        cand("http://i/1.jpg", "aardvark", "s3://c/a.warc.gz", 9),
        cand("http://i/1.jpg", "zebra", "s3://c/b.warc.gz", 0),
        cand("http://i/2.jpg", "b", "s3://c/a.warc.gz", 1),
        cand("http://i/2.jpg", "a", "s3://c/a.warc.gz", 1),  # tie on source: smallest text
    ]
    out = dedupe_pairs(candidates_df(spark, rows), DedupeConfig(key="url"))
    assertDataFrameEqual(out.pairs, pairs_df(spark, with_plain_ids(spark, [rows[0], rows[4]])))
    counts = counts_of(out)
    assert (counts["pairs"], counts["duplicates_removed"]) == (2, 3)
    assert_accounted(counts, len(rows))


def test_sample_id_is_xxhash64_of_url_text(spark):
    rows = [cand(f"http://i/{i}.jpg", f"text {i % 3}", offset=i) for i in range(20)]
    out = dedupe_pairs(candidates_df(spark, rows), DedupeConfig())
    hashes = spark_hashes(spark, [(as_dict(r)["url"], as_dict(r)["text"]) for r in rows])
    got = {(r.url, r.text): r.sample_id for r in out.pairs.collect()}
    assert got == {p: h[0] for p, h in hashes.items()}
    assert out.pairs.filter(F.col("sample_id") != F.xxhash64("url", "text")).isEmpty()


# ---------------------------------------------------------------- previous tables and blocklist


@pytest.mark.parametrize("key", ["url_text", "url"])
def test_previous_pairs_are_dropped(spark, key):
    rows = [
        cand("http://i/1.jpg", "a", offset=1),
        cand("http://i/1.jpg", "a", offset=2),
        cand("http://i/1.jpg", "b", offset=3),
        cand("http://i/2.jpg", "a", offset=4),
        cand("http://i/3.jpg", "a", offset=5),
    ]
    earlier = [cand("http://i/1.jpg", "a", "s3://old.warc.gz", 0), cand("http://i/3.jpg", "other", "s3://old", 1)]
    previous = pairs_df(spark, with_plain_ids(spark, earlier))
    previous_keys = [("http://i/1.jpg", "a"), ("http://i/3.jpg", "other")] if key == "url_text" else [
        "http://i/1.jpg", "http://i/3.jpg"]
    kept, expected_counts = reference(rows, key=key, previous_keys=previous_keys)
    out = dedupe_pairs(candidates_df(spark, rows), DedupeConfig(key=key), previous=previous)
    assertDataFrameEqual(out.pairs, pairs_df(spark, with_plain_ids(spark, kept)))
    counts = counts_of(out)
    assert {k: counts[k] for k in expected_counts} == dict(expected_counts)
    assert counts["removed_previous"] == (1 if key == "url_text" else 2)
    assert_accounted(counts, len(rows))


def test_ids_of_previous_tables_are_reserved(spark):
    new = cand("http://i/new.jpg", "fresh", offset=1)
    hashes = spark_hashes(spark, [("http://i/new.jpg", "fresh")], rounds=1)
    # an earlier pair (another url and text) already holds the id the new pair would get
    previous = pairs_df(spark, [(hashes[("http://i/new.jpg", "fresh")][0], cand("http://i/old.jpg", "old"))])
    out = dedupe_pairs(candidates_df(spark, [new]), DedupeConfig(), previous=previous)
    assertDataFrameEqual(out.pairs, pairs_df(spark, [(hashes[("http://i/new.jpg", "fresh")][1], new)]))
    counts = counts_of(out)
    assert (counts["pairs"], counts["collisions_rehashed"], counts["removed_previous"]) == (1, 1, 0)


def test_blocklist_urls_and_hashes(spark, tmp_path):
    rows = [
        cand("http://i/1.jpg", "a", offset=1),
        cand("http://i/1.jpg", "a", offset=2),
        cand("http://i/2.jpg", "a", offset=3),
        cand("http://i/2.jpg", "b", offset=4),
        cand("http://i/3.jpg", "a", offset=5),
        cand("http://i/4.jpg", "a", offset=6),
        cand("http://i/5.jpg", "a", offset=7),
    ]
    blocked_urls = {"http://i/1.jpg", "http://i/4.jpg"}
    blocked_by_hash = {"http://i/2.jpg"}
    lines = [
        "# opt-outs, one a line",
        "http://i/1.jpg",
        "",
        f"  {url_hash(spark, 'http://i/2.jpg')}  ",
        "\thttp://i/4.jpg\t",
        "# http://i/3.jpg is a comment, not an entry",
        "http://i/5.jpg?not-the-same-url",
        "12345678901234567890123",  # not an int64: a (useless) URL line
    ]
    path = tmp_path / "blocklist.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    blocklist = spark.read.text(str(path))
    previous = pairs_df(spark, with_plain_ids(spark, [cand("http://i/1.jpg", "a"), cand("http://i/3.jpg", "a")]))
    out = dedupe_pairs(candidates_df(spark, rows), DedupeConfig(), previous=previous, blocklist=blocklist)

    blocked = blocked_urls | blocked_by_hash
    kept, expected_counts = reference(rows, previous_keys=[("http://i/1.jpg", "a"), ("http://i/3.jpg", "a")],
                                      blocked=lambda url: url in blocked)
    assertDataFrameEqual(out.pairs, pairs_df(spark, with_plain_ids(spark, kept)))
    counts = counts_of(out)
    assert {k: counts[k] for k in expected_counts} == dict(expected_counts)
    # blocklist first: 1.jpg is in both; 2.jpg twice (two texts); 4.jpg
    assert (counts["removed_blocklist"], counts["removed_previous"], counts["pairs"]) == (4, 1, 1)
    assert_accounted(counts, len(rows))


# ---------------------------------------------------------------- forced collisions


def distinct_pairs(n):
    return [cand(f"http://img.example/{i}.jpg", f"caption {i}", offset=i) for i in range(n)]


def test_forced_collisions_are_rehashed_to_unique_ids(spark):
    bits, rounds = 9, 6
    rows = distinct_pairs(100)
    rows += [cand(as_dict(r)["url"], as_dict(r)["text"], "s3://z.warc.gz", 0) for r in rows[:10]]  # duplicates
    pairs = [(as_dict(r)["url"], as_dict(r)["text"]) for r in rows]
    hashes = spark_hashes(spark, pairs, rounds)
    ids = reference_ids(set(pairs), hashes, bits, rounds)
    assert None not in ids.values()  # the chosen bits/rounds resolve every collision
    rehashed = {p: k for p, (_, k) in ids.items() if k > 0}
    assert len(rehashed) > 3 and max(rehashed.values()) > 1  # some first re-hashes collided too

    out = dedupe_pairs(candidates_df(spark, rows, slices=3), DedupeConfig(hash_bits=bits, max_rehash_rounds=rounds))
    survivors = {(as_dict(r)["url"], as_dict(r)["text"]): r for r in rows[:100]}
    expected = [(ids[p][0], survivors[p]) for p in survivors]
    assertDataFrameEqual(out.pairs, pairs_df(spark, expected))
    got = out.pairs.collect()
    assert len({r.sample_id for r in got}) == len(got) == 100
    assert all(0 <= r.sample_id < 2**bits for r in got)
    groups = {(r.url, r.text): r.rehash_round for r in out.groups.collect()}
    assert {p: k for p, k in groups.items() if k > 0} == rehashed
    # only the groups whose first-pass id another group wants too were ranked by a window (rank_ids)
    first = [hashes[p][0] & ((1 << bits) - 1) for p in set(pairs)]
    shared = {(r.url, r.text) for r in out.ranked.where("_shared").collect()}
    assert shared == {p for p in set(pairs) if first.count(hashes[p][0] & ((1 << bits) - 1)) > 1} != set()
    counts = counts_of(out)
    assert counts == dict(rows_in=110, pairs=100, duplicates_removed=10, removed_previous=0, removed_blocklist=0,
                          collisions_rehashed=len(rehashed), collisions_unresolved=0)
    assert_accounted(counts, len(rows))


def test_rehash_rounds_exhausted_are_left_out_and_counted(spark):
    bits, rounds = 4, 3  # 100 pairs cannot have unique 4-bit ids
    rows = distinct_pairs(100)
    pairs = [(as_dict(r)["url"], as_dict(r)["text"]) for r in rows]
    ids = reference_ids(set(pairs), spark_hashes(spark, pairs, rounds), bits, rounds)
    unresolved = {p for p, v in ids.items() if v is None}

    out = dedupe_pairs(candidates_df(spark, rows), DedupeConfig(hash_bits=bits, max_rehash_rounds=rounds))
    expected = [(ids[p][0], r) for p, r in zip(pairs, rows) if p not in unresolved]
    assertDataFrameEqual(out.pairs, pairs_df(spark, expected))
    got = [r.sample_id for r in out.pairs.collect()]
    assert len(set(got)) == len(got) <= 16
    counts = counts_of(out)
    assert counts["collisions_unresolved"] == len(unresolved) >= 84
    assert_accounted(counts, len(rows))
    assert {(r.url, r.text) for r in out.groups.filter("status = 'unresolved'").collect()} == unresolved


# ---------------------------------------------------------------- the job through the CLI functions


def write_candidates(spark, rows, path):
    candidates_df(spark, rows).write.parquet(str(path))
    return str(path)


def test_job_end_to_end_through_cli(spark, tmp_path):
    rows = generated_rows(120, seed=3)
    input_uri = write_candidates(spark, rows, tmp_path / "candidates")
    earlier = [cand("http://img.example/0.jpg", "alt 0"), cand("http://img.example/1.jpg", "alt 1")]
    previous_uri = str(tmp_path / "previous_pairs")
    pairs_df(spark, with_plain_ids(spark, earlier)).write.parquet(previous_uri)
    blocklist_uri = tmp_path / "blocklist.txt"
    blocklist_uri.write_text(f"# blocked\nhttp://img.example/2.jpg\n{url_hash(spark, 'http://img.example/3.jpg')}\n")
    output = str(tmp_path / "pairs")
    args = [f"input={input_uri}", f"output={output}", f"dedupe.previous={previous_uri}",
            f"dedupe.blocklist={blocklist_uri}"]

    cfg, module = cli.prepare("dedupe", [], args)
    summary = cli.run("dedupe", cfg, module, spark=spark)

    blocked = {"http://img.example/2.jpg", "http://img.example/3.jpg"}
    kept, expected_counts = reference(rows, previous_keys=[("http://img.example/0.jpg", "alt 0"),
                                                           ("http://img.example/1.jpg", "alt 1")],
                                      blocked=lambda url: url in blocked)
    table = read_table(spark, output, S.PAIRS)
    assertDataFrameEqual(table, pairs_df(spark, with_plain_ids(spark, kept)))
    written = json.loads((tmp_path / "pairs" / "_summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert written["stage"] == "dedupe"
    for name, value in expected_counts.items():
        assert written[name] == value, name
    assert written["removed_previous"] > 0 and written["removed_blocklist"] > 0
    assert (written["collisions_rehashed"], written["collisions_unresolved"]) == (0, 0)
    assert written["rows_in"] == written["pairs"] + written["duplicates_removed"] + written[
        "removed_previous"] + written["removed_blocklist"]
    assert written["config"]["dedupe.previous"] == previous_uri

    # an existing output is an error before Spark runs, unless mode=overwrite
    with pytest.raises(OutputExistsError):
        cli.prepare("dedupe", [], args)
    cfg, module = cli.prepare("dedupe", [], [f"input={input_uri}", f"output={output}", "mode=overwrite",
                                             "dedupe.key=url"])
    summary = cli.run("dedupe", cfg, module, spark=spark)
    kept_by_url, _ = reference(rows, key="url")
    assertDataFrameEqual(read_table(spark, output, S.PAIRS), pairs_df(spark, with_plain_ids(spark, kept_by_url)))
    written = json.loads((tmp_path / "pairs" / "_summary.json").read_text())
    assert written["pairs"] == len(kept_by_url) and written["config"]["dedupe.key"] == "url"


def test_job_checks_before_spark(spark, tmp_path):
    input_uri = write_candidates(spark, distinct_pairs(3), tmp_path / "candidates")
    output = f"output={tmp_path / 'pairs'}"
    with pytest.raises(ConfigError, match="input not found: .*missing"):
        cli.prepare("dedupe", [], [f"input={tmp_path / 'missing'}", output])
    with pytest.raises(ConfigError, match="dedupe.previous not found"):
        cli.prepare("dedupe", [], [f"input={input_uri}", output, f"dedupe.previous={tmp_path / 'nope'}"])
    with pytest.raises(ConfigError, match="dedupe.blocklist not found"):
        cli.prepare("dedupe", [], [f"input={input_uri}", output, f"dedupe.blocklist={tmp_path / 'nope.txt'}"])
    with pytest.raises(ConfigError, match="also an input"):
        cli.prepare("dedupe", [], [f"input={input_uri}", f"output={input_uri}", "mode=overwrite"])


def test_job_fails_without_output_when_collisions_stay_unresolved(spark, tmp_path):
    input_uri = write_candidates(spark, distinct_pairs(40), tmp_path / "candidates")
    output = tmp_path / "pairs"
    cfg, module = cli.prepare("dedupe", [], [f"input={input_uri}", f"output={output}", "dedupe.hash_bits=3",
                                             "dedupe.max_rehash_rounds=1"])
    with pytest.raises(DedupeError, match="still share a sample_id"):
        cli.run("dedupe", cfg, module, spark=spark)
    assert not output.exists()
