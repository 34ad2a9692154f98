"""LAION's `hash` column against MurmurHash3 x64 128 written out here from the published algorithm
(Austin Appleby's MurmurHash3_x64_128, seed 0, first 64 bits read as signed), on known strings, non-ASCII
included, and through Spark."""

from __future__ import annotations

import struct

from laion_spark.export.laion_hash import hash_column, laion_hash

M = 2**64 - 1


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M


def _fmix(k):
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & M
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & M
    return k ^ (k >> 33)


def murmur3_x64_128_first(data: bytes, seed: int = 0) -> int:
    c1, c2 = 0x87C37B91114253D5, 0x4CF5AD432745937F
    h1 = h2 = seed
    n = len(data) // 16
    for i in range(n):
        k1, k2 = struct.unpack_from("<QQ", data, 16 * i)
        k1 = (_rotl((k1 * c1) & M, 31) * c2) & M
        h1 ^= k1
        h1 = (((_rotl(h1, 27) + h2) & M) * 5 + 0x52DCE729) & M
        k2 = (_rotl((k2 * c2) & M, 33) * c1) & M
        h2 ^= k2
        h2 = (((_rotl(h2, 31) + h1) & M) * 5 + 0x38495AB5) & M
    tail = data[16 * n:]
    k1 = k2 = 0
    for i in range(len(tail) - 1, 7, -1):
        k2 ^= tail[i] << (8 * (i - 8))
    if len(tail) > 8:
        h2 ^= (_rotl((k2 * c2) & M, 33) * c1) & M
    for i in range(min(len(tail), 8) - 1, -1, -1):
        k1 ^= tail[i] << (8 * i)
    if tail:
        h1 ^= (_rotl((k1 * c1) & M, 31) * c2) & M
    h1 ^= len(data)
    h2 ^= len(data)
    h1 = (h1 + h2) & M
    h2 = (h2 + h1) & M
    h1, h2 = _fmix(h1), _fmix(h2)
    h1 = (h1 + h2) & M
    return h1 - 2**64 if h1 >= 2**63 else h1


PAIRS = [("", ""), ("http://a.com/x.jpg", "a red circle"), (None, "only text"), ("http://b.de/ü.png", None),
         ("https://例え.jp/画像.jpg", "猫の写真 🐈"), ("u" * 15, "t"), ("u" * 16, ""), ("u" * 31, "é" * 9)]


def test_hash_is_laions_on_known_strings():
    for url, text in PAIRS:
        want = murmur3_x64_128_first(((url or "") + (text or "")).encode("utf-8"))
        assert laion_hash(url, text) == want, (url, text)
    assert laion_hash(None, None) == laion_hash("", "")  # None is read as '', as LAION's compute_hash does
    assert laion_hash("ab", "c") == laion_hash("a", "bc")  # url + text, no separator: LAION's key as it is


def test_hash_column_in_spark(spark):
    frame = spark.createDataFrame(PAIRS, "url string, text string")
    got = [r["hash"] for r in frame.select(hash_column(frame.url, frame.text).alias("hash")).collect()]
    assert got == [murmur3_x64_128_first(((u or "") + (t or "")).encode("utf-8")) for u, t in PAIRS]
