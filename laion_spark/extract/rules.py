"""Raw `<img>` (src, alt) of one page -> kept (absolute URL, clean alt) pairs + counts of drop reasons.

INPUT  -> a `PageImages` from `extract.html.parse_page`, the page URL, and the LAION rules (any
          object with min_alt_chars, max_alt_chars, max_url_chars, allowed_schemes,
          denied_extensions, e.g. `config.ExtractConfig`)
OUTPUT -> `page_candidates`: ([(url, text), ...] in document order, Counter(reason -> count))

Drops are counted, not kept row by row (DESIGN.md: too many to store); every image of the page
is either kept or counted under exactly one reason of `DROP_REASONS`.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit, urlunsplit

if TYPE_CHECKING:  # html.py imports license.py, which imports this module: no import cycle at run time
    from laion_spark.extract.html import PageImages

# Checked in this order; the first that applies is the one counted.
DROP_REASONS = ("empty_src", "invalid_url", "bad_scheme", "url_too_long", "denied_extension", "alt_too_short")

# A character reference still present after the parser unescaped the attribute once: the page
# double-escaped it (`&amp;eacute;`). Only complete references (with `;`) so "AT&T" is left alone.
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
# The URL standard strips C0 controls and spaces at both ends and drops tabs/newlines anywhere.
_URL_EDGE = "".join(chr(c) for c in range(0x21))
_URL_TAB_NEWLINE = str.maketrans("", "", "\t\n\r")


@dataclass(frozen=True)
class CandidateRules:
    """LAION's defaults (DESIGN.md), for callers without an `ExtractConfig` at hand."""

    min_alt_chars: int = 5
    max_alt_chars: int = 2000
    max_url_chars: int = 2000
    allowed_schemes: tuple = ("http", "https")
    denied_extensions: tuple = (".svg", ".gif")


def clean_alt(alt: str, max_chars: int) -> str:
    """Alt text with leftover entities unescaped, every whitespace run one space, cut to max_chars."""
    if "&" in alt and _ENTITY.search(alt):
        alt = _ENTITY.sub(lambda m: html.unescape(m.group(0)), alt)
    # str.split() with no argument splits on every Unicode whitespace (NBSP, U+3000, newlines...).
    return " ".join(alt.split())[:max_chars].rstrip()


def clean_url(value: str) -> str:
    """A URL attribute value as the URL standard reads it: C0 controls and spaces stripped at both
    ends, tabs and newlines dropped anywhere."""
    return value.strip(_URL_EDGE).translate(_URL_TAB_NEWLINE)


def resolve_base(page_url: str, base_href: str | None) -> str:
    """The URL that a page's relative links resolve against: `<base href>` resolved on the page URL."""
    if base_href is not None:
        base_href = clean_url(base_href)
        if base_href:
            return urljoin(page_url, base_href)
    return page_url


def resolve_url(src: str, page_url: str, base_href: str | None, base: str | None = None) -> str:
    """Absolute URL of an `<img src>` as a browser resolves it, without its #fragment.

    `base` (from resolve_base) saves resolving the page's base again for each image.
    Raises ValueError for a URL urllib cannot split (e.g. a broken IPv6 literal).
    """
    src = clean_url(src)
    if base is None:
        base = resolve_base(page_url, base_href)
    scheme, netloc, path, query, _ = urlsplit(urljoin(base, src))
    if "@" in netloc:  # keep user info as written; only the host part is case-insensitive
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo}@{host.lower()}"
    else:
        netloc = netloc.lower()
    return urlunsplit((scheme.lower(), netloc, path, query, ""))


def check_candidate(url: str, text: str, rules) -> str | None:
    """None when the (absolute url, clean text) pair is kept, else the first reason from DROP_REASONS."""
    if not url:
        return "empty_src"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "invalid_url"
    scheme = parts.scheme.lower()
    if scheme not in rules.allowed_schemes:
        return "bad_scheme"
    if scheme in ("http", "https") and not parts.hostname:
        return "invalid_url"
    if len(url) > rules.max_url_chars:
        return "url_too_long"
    if rules.denied_extensions and parts.path.lower().endswith(tuple(rules.denied_extensions)):
        return "denied_extension"
    if len(text) < rules.min_alt_chars:
        return "alt_too_short"
    return None


def page_candidates(page: PageImages, page_url: str, rules) -> tuple[list[tuple[str, str]], Counter]:
    """Kept (url, text) pairs in document order (duplicates kept) and a Counter of drop reasons."""
    kept: list[tuple[str, str]] = []
    dropped: Counter = Counter()
    try:
        base = resolve_base(page_url, page.base_href)
    except ValueError:
        base = None  # resolve_url raises again per image: each counts as invalid_url
    for image in page.images:
        try:
            url = resolve_url(image.src, page_url, page.base_href, base)
        except ValueError:
            dropped["invalid_url"] += 1
            continue
        text = clean_alt(image.alt, rules.max_alt_chars)
        reason = check_candidate(url, text, rules)
        if reason is None:
            kept.append((url, text))
        else:
            dropped[reason] += 1
    return kept, dropped
