"""A page's links in document order -> its licence URL: the one licence resolver of the WARC and WAT paths.

INPUT  -> (href, rel) of the page's `<a>`, `<link>` and `<area>` elements in document order, as
          written (character references decoded: what an HTML parser and a WAT record both give),
          the page URL and its `<base href>`
OUTPUT -> `page_license`: the absolute URL of the first link that names the page's licence, or None

A link names the licence when its `rel` has the token `license` (any case), or when its href is,
as written, a Creative Commons licence or public-domain deed: `http:`, `https:` or `//`, host
creativecommons.org or a subdomain (any case), path under /licenses/ or /publicdomain/. A
creativecommons.org URL anywhere else in a link is no licence: an archive's wrapper
(`https://web.archive.org/web/2020/https://creativecommons.org/licenses/by/4.0/`) or a query string
(`https://example.com/share?u=https://creativecommons.org/licenses/by/4.0/`). An in-page anchor
(`#...`) names no licence document, nor does a link that does not resolve (a broken IPv6 literal):
the next one is tried. The URL is resolved the way image URLs are (rules.resolve_url: scheme and
host lower-cased, fragment dropped), so `HTTPS://CreativeCommons.ORG/licenses/by/4.0/` is
`https://creativecommons.org/licenses/by/4.0/` from a WARC and from its WAT alike.

`may_name_license(href, rel)` is the cheap test both paths use to pick the links worth passing here
(the HTML path asks lexbor for the same with a CSS selector, LICENSE_LINKS_CSS).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from laion_spark.extract.rules import clean_url, resolve_url

__all__ = ["LICENSE_LINKS_CSS", "is_license_link", "may_name_license", "page_license"]

_CC_LICENSE = re.compile(
    r"(?:https?:)?//(?:[a-z0-9-]+\.)*creativecommons\.org/(?:licenses|publicdomain)/", re.IGNORECASE
)
# the links that may name a licence, in document order: those with a rel, those mentioning creativecommons.org
LICENSE_LINKS_CSS = ", ".join(
    f"{tag}[href][rel], {tag}[href*='creativecommons.org' i]" for tag in ("a", "link", "area")
)


def may_name_license(href: str, rel: str | None) -> bool:
    """Whether a link is worth passing to page_license (it has a rel, or mentions creativecommons.org)."""
    return rel is not None or "creativecommons.org" in href.lower()


def is_license_link(href: str, rel: str | None) -> bool:
    """(href as written, rel) -> whether the link names the page's licence (see the module docstring)."""
    href = clean_url(href)
    if not href or href.startswith("#"):
        return False
    if rel and "license" in rel.lower().split():
        return True
    return _CC_LICENSE.match(href) is not None


def page_license(links: Iterable[tuple[str, str | None]], page_url: str, base_href: str | None) -> str | None:
    """(href, rel) links in document order + page URL + <base href> -> the page's licence URL, or None."""
    for href, rel in links:
        if not is_license_link(href, rel):
            continue
        try:
            return resolve_url(href, page_url, base_href)
        except ValueError:  # e.g. a broken IPv6 literal: try the next link
            continue
    return None
