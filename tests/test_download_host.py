"""The one host function: pool.host_of (the task's per-host cap and pauses) and transform.host_column
(the partitioning, Spark SQL) give the same host for every URL, and rows without a host spread over
every download task.

Expected hosts are written by hand from RFC 3986 / what urllib3 connects to, not from the code.
"""

from __future__ import annotations

import random

import pytest
from pyspark.sql import functions as F
from urllib3.util import parse_url

from laion_spark.config import DownloadConfig
from laion_spark.download import pool, task
from laion_spark.download.pool import host_of
from laion_spark.download.transform import host_column, partition_by_host

TRICKY = [
    ("http://example.com/a.jpg", "example.com"),
    ("HTTPS://Example.COM/A.JPG", "example.com"),
    ("http://user:pass@img.example.org:8080/a.jpg", "img.example.org"),
    ("http://a@b@c.example/x", "c.example"),  # userinfo ends at the last '@'
    ("http://example.com./a.jpg", "example.com"),  # the trailing dot names the same host
    ("http://example.com..:81/", "example.com"),
    ("http://[::1]:8080/a.jpg", "[::1]"),
    ("http://[2001:DB8::1]/a.jpg", "[2001:db8::1]"),
    ("http://user@[fe80::1%25eth0]:80/", "[fe80::1%25eth0]"),
    ("http://example.com:443", "example.com"),
    ("http://example.com?q=1", "example.com"),
    ("http://example.com#frag", "example.com"),
    ("http://example.com/a b.jpg", "example.com"),  # raw space in the path: Spark's parser gives up
    ("http://example.com/a|b.jpg", "example.com"),
    ("http://example.com/{a}/b.jpg", "example.com"),
    ("http://example.com/a.jpg?x={1}|2 3", "example.com"),
    ("http://example.com\\@evil.test/a.jpg", "example.com"),  # urllib3 (like browsers) ends the host at '\'
    ("http://example.com\\a.jpg", "example.com"),
    ("  http://example.com/a.jpg", "example.com"),  # leading blanks: the fetcher strips them too
    ("http://Bücher.example/a.jpg", "bücher.example"),  # ASCII-only lower-casing
    ("http://ÉCOLE.example/", "École.example"),
    ("http://123.45.67.89/a.jpg", "123.45.67.89"),
    ("http://0x7f.1/", "0x7f.1"),
    ("not a url", ""),
    ("", ""),
    ("//example.com/a.jpg", ""),  # no scheme: invalid_url, no site
    ("http:/example.com/a.jpg", ""),
    ("data:image/png;base64,iVBOR", ""),
    ("http://", ""),
    ("http:///a.jpg", ""),
    ("ftp://files.example/a.jpg", "files.example"),  # a host, though the fetcher refuses the scheme
]


@pytest.mark.parametrize("url,expected", TRICKY)
def test_host_of_tricky_urls(url, expected):
    assert host_of(url) == expected


def test_host_of_never_raises_on_non_strings():
    assert [host_of(x) for x in (None, 3, b"http://a.b/")] == ["", "", ""]


def test_the_partition_host_is_the_pool_host(spark):
    frame = spark.createDataFrame([(u,) for u, _ in TRICKY] + [(None,)], "url string")
    got = dict(frame.select("url", host_column().alias("h")).collect())
    assert got == {**dict(TRICKY), None: ""}
    assert task.host_of is pool.host_of  # the pool keys rows by this very function


def test_hosts_agree_with_where_urllib3_connects():
    # for URLs urllib3 can parse, our host is its host (lower-case, without trailing dots; urllib3
    # also decodes a zone's %25 and IDNA-encodes non-ASCII names, spellings a key need not follow)
    checked = 0
    for url, _ in TRICKY:
        if not url.strip().lower().startswith(("http://", "https://")) or not url.isascii() or "%25" in url:
            continue
        try:
            host = parse_url(url.strip()).host
        except Exception:  # noqa: BLE001 - urllib3 refuses it: the fetcher reports invalid_url
            continue
        if host:
            assert host_of(url) == host.lower().rstrip("."), url
            checked += 1
    assert checked >= 15


def test_python_and_spark_agree_on_random_urls(spark):
    # random strings over an alphabet heavy in the characters the pattern cares about
    rng = random.Random(7)
    alphabet = list("aZ.:/@[]\\?#% |{}-09") + ["http://", "HTTPS://", "\t", "\n", "\u2028", "\x85", "é", "..", "::"]
    urls = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14))) for _ in range(1500)]
    urls += ["http://" + u for u in urls[:1500]]
    frame = spark.createDataFrame([(i, u) for i, u in enumerate(urls)], "i long, url string")
    spark_hosts = {r.i: r.h for r in frame.select("i", host_column().alias("h")).collect()}
    mismatches = [(u, host_of(u), spark_hosts[i]) for i, u in enumerate(urls) if host_of(u) != spark_hosts[i]]
    assert not mismatches, mismatches[:10]
    assert sum(1 for u in urls if host_of(u)) > 300  # the sample exercises hosts, not only ''


def test_rows_without_a_host_spread_over_every_task(spark):
    # 600 rows no host can be read from, 300 rows of one host whose URLs Spark's own parser cannot
    # read (raw space, |, {}), 3 small hosts; 16 tasks; max_tasks_per_host=2 (so '' treated as one
    # host would land in at most 2 tasks)
    rows = [(f"not a url {i}",) for i in range(400)] + [(f"//no-scheme/{i}",) for i in range(200)]
    rows += [(f"http://Raw.example/a b|{{{i}}}.jpg",) for i in range(300)]
    rows += [(f"http://small{i % 3}.example/{i}.jpg",) for i in range(30)]
    df = spark.createDataFrame(rows, "url string")
    cfg = DownloadConfig(host_rows_per_task=1000, max_tasks_per_host=2)
    parts = (partition_by_host(df, cfg, 16).withColumn("p", F.spark_partition_id())
             .select("url", "p").collect())
    assert len(parts) == len(rows)
    where: dict[str, set] = {}
    for r in parts:
        where.setdefault(host_of(r.url), set()).add(r.p)
    assert where[""] == set(range(16))
    assert len(where["raw.example"]) == 1  # one host: one task, whose per-host cap is the site's
    assert all(len(where[f"small{i}.example"]) == 1 for i in range(3))
