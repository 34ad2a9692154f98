"""Blocklist files: parsing (comments, case, bad lines named by file and line) and URL matching as written
and normalised; expectations written out by hand or computed with hashlib here. No Spark."""

from __future__ import annotations

import hashlib

import pytest

from laion_spark.export.blocklist import BlocklistError, normalise_url, parse_list, url_keys


@pytest.mark.parametrize("url, want", [
    ("HTTP://Example.COM:80/A/b.JPG?X=1#frag", "http://example.com/A/b.JPG?X=1"),
    ("https://example.com:443/x", "https://example.com/x"),
    ("https://example.com:8443/x", "https://example.com:8443/x"),
    ("http://[2001:DB8::1]:80/p", "http://[2001:db8::1]/p"),
    ("http://User:Pw@Example.com/p", "http://User:Pw@example.com/p"),
    ("  http://example.com  ", "http://example.com"),
    ("example.com/x.jpg", None),  # no scheme: nothing to normalise
    ("http://example.com:99999/x", None),  # a port out of range
])
def test_normalise_url(url, want):
    assert normalise_url(url) == want


def test_url_keys_take_the_url_as_written_and_normalised():
    url = "HTTP://Example.com:80/Cat.jpg#x"
    assert url_keys(url, "url") == [url, "http://example.com/Cat.jpg"]
    assert url_keys("http://example.com/a", "url") == ["http://example.com/a"]  # already normal: once
    md5 = url_keys(url, "url_md5")
    assert md5 == [hashlib.md5(url.encode()).hexdigest(), hashlib.md5(b"http://example.com/Cat.jpg").hexdigest()]
    assert url_keys("http://例え.jp/ü", "url_sha256") == [hashlib.sha256("http://例え.jp/ü".encode()).hexdigest()]
    assert url_keys(None, "url") == [] and url_keys("http://a.b/", "image_md5") == []


def test_lists_parse_with_comments_and_any_case():
    digests = parse_list("# IWF sample\n\nD41D8CD98F00B204E9800998ECF8427E  # empty file\n"
                         "0cc175b9c0f1b6a831c399e269772661\n", "iwf.txt", "image_md5")
    assert digests == ["d41d8cd98f00b204e9800998ecf8427e", "0cc175b9c0f1b6a831c399e269772661"]
    urls = parse_list("# takedown\nhttp://Example.com:80/a.jpg#top\nhttps://x.org/b?c=1\n", "urls.txt", "url")
    assert urls == ["http://Example.com:80/a.jpg#top", "http://example.com/a.jpg", "https://x.org/b?c=1"]
    assert parse_list("a" * 40 + "\n", "sha1.txt", "image_sha1") == ["a" * 40]


@pytest.mark.parametrize("text, kind, where", [
    ("d41d8cd98f00b204e9800998ecf8427e\nnot-a-digest\n", "image_md5", "bad.txt:2: not a hex md5"),
    ("# ok\n" + "a" * 63 + "\n", "image_sha256", "bad.txt:2: not a hex sha256 digest (64 hex digits)"),
    ("a" * 32 + "\n", "image_sha1", "bad.txt:1: not a hex sha1"),  # an md5 in a sha1 list
    ("http://ok.com/x\nftp://files.com/y\n", "url", "bad.txt:2: not an http(s) URL"),
    ("just words\n", "url", "bad.txt:1: not an http(s) URL"),
    ("x\n", "phash", "bad.txt: kind 'phash' is not one of"),
])
def test_a_bad_line_is_an_error_naming_the_file_and_line(text, kind, where):
    with pytest.raises(BlocklistError, match=where.replace("(", r"\(").replace(")", r"\)")):
        parse_list(text, "bad.txt", kind)
