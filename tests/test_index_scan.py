"""index's scan row logic (no Spark): each row's verdict from its Arrow list, written against a plain
Python restatement of the rules, and the sample keys' spread."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from laion_spark.index import scan as SC


def rule(sample_id, vector, d):
    """The rules, one row at a time: -> the reason a row is left out of an index of dimension d, or None."""
    if vector is None:
        return "no_vector"
    if len(vector) != d:
        return "wrong_dimension"
    if any(x is None or not math.isfinite(x) for x in vector):
        return "not_finite"
    if sum(x * x for x in vector) < 1e-12:
        return "zero_vector"
    if sample_id == -1:
        return "reserved_id"
    return None


def test_verdicts_follow_the_rules_row_by_row():
    d = 4
    rng = np.random.default_rng(0)
    rows = [(1, [0.5, 0.5, 0.5, 0.5]), (2, None), (3, [1.0, 2.0]), (4, []), (5, [float("nan"), 1, 1, 1]),
            (6, [float("inf"), 0, 0, 0]), (7, [1.0, None, 1.0, 1.0]), (8, [0.0, 0.0, 0.0, 0.0]),
            (9, [1e-7, 0, 0, 0]), (-1, [1.0, 0, 0, 0]), (-1, None), (10, [0.0, 0.0, 0.0, float("nan")]),
            (11, [0.0] * 5), (12, [3e38, 3e38, 3e38, 3e38])]
    rows += [(100 + i, rng.standard_normal(d).tolist()) for i in range(20)]
    ids = np.array([r[0] for r in rows], np.int64)
    column = pa.array([r[1] for r in rows], pa.list_(pa.float32()))
    for sliced in (slice(None), slice(3, None), slice(1, 9)):  # Arrow slices keep their offsets
        size, flaw = SC.verdicts(ids[sliced], column[sliced])
        got = []
        for s, f in zip(size, flaw, strict=True):
            got.append("no_vector" if s < 0 else "wrong_dimension" if s != d else SC.FLAWS[f])
        want = [rule(i, None if v is None else [None if x is None else float(np.float32(x)) for x in v], d)
                for i, v in rows[sliced]]
        assert got == want
    mask = SC.indexable(ids, column, d)
    assert mask.tolist() == [rule(i, v, d) is None for i, v in rows]


def test_keys_are_spread_and_thresholds_keep_what_they_say():
    ids = np.arange(200_000, dtype=np.int64) - 100_000
    keys = SC.hash_keys(ids, 3)
    assert len(np.unique(keys)) == len(ids)
    # the share below a bound is the bound's share of the key space, for consecutive ids too
    for share in (0.01, 0.2, 0.5):
        kept = np.mean(keys <= np.uint64(int(share * SC.KEY_SPACE)))
        assert abs(kept - share) < 0.01
    assert not np.array_equal(keys, SC.hash_keys(ids, 4))
    bound = SC.threshold(1000, len(ids))
    held = int(np.sum(keys <= np.uint64(bound)))
    assert 1000 < held < 2000  # 1.2 x 1000 + ten standard deviations + 50: about 1,566
    assert SC.threshold(1000, 1100) == SC.KEY_SPACE - 1  # all of them
