"""Common Crawl WAT metadata record block (JSON) -> WatPage (page URL, base href, <img> links, licence links).

INPUT:  the block of a WAT ``metadata`` record: the JSON ``Envelope`` written by ia-web-commons
        (the format cc2dataset reads): ``Envelope.WARC-Header-Metadata.WARC-Target-URI`` and
        ``Envelope.Payload-Metadata.HTTP-Response-Metadata.HTML-Metadata`` with ``Head.Base`` and
        ``Links`` (``{"path": "IMG@/src", "url": ..., "alt": ...}``, ``A@/href``, ``LINK@/href``
        with ``rel``).
OUTPUT: WatPage, or None when the record does not describe an HTML response (request/warcinfo
        metadata, non-HTML payloads). Malformed JSON raises ValueError (the caller makes it an
        error row). Which link is the page's licence is license.py's answer, as for a WARC page:
        ``license_links`` are the links it may choose from, as written, in document order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from laion_spark.extract.license import may_name_license

__all__ = ["WatPage", "wat_page_links"]


@dataclass(frozen=True, slots=True)
class WatPage:
    """What the crawler saw in one HTML page: its URL, <base href>, images (src, alt) and the (href, rel)
    of the <a>/<link>/<area> links that may name its licence (license.page_license picks)."""

    target_uri: str | None
    base_href: str | None
    images: list[tuple[str, str | None]] = field(default_factory=list)
    license_links: list[tuple[str, str | None]] = field(default_factory=list)
    content_type: str | None = None


def _get(obj: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def wat_page_links(block: bytes) -> WatPage | None:
    """Parse one WAT metadata record; see the module docstring."""
    try:
        doc = json.loads(block)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"WAT record is not valid JSON: {exc}") from exc
    envelope = _get(doc, "Envelope")
    if not isinstance(envelope, dict):
        raise ValueError("WAT record JSON has no 'Envelope' object")
    response = _get(envelope, "Payload-Metadata", "HTTP-Response-Metadata")
    html = _get(response, "HTML-Metadata")
    if not isinstance(html, dict):
        return None  # request / warcinfo / non-HTML response metadata
    target = _get(envelope, "WARC-Header-Metadata", "WARC-Target-URI")
    target_uri = target.strip().strip("<>") if isinstance(target, str) else None
    base = _get(html, "Head", "Base")
    base_href = base if isinstance(base, str) and base.strip() else None
    content_type = _get(response, "Headers", "Content-Type")
    images: list[tuple[str, str | None]] = []
    license_links: list[tuple[str, str | None]] = []
    links = html.get("Links")
    head_links = _get(html, "Head", "Link")
    # <link> tags sit in Head.Link, before the body's Links: document order, as the HTML path
    ordered = (head_links if isinstance(head_links, list) else []) + (links if isinstance(links, list) else [])
    for link in ordered:
        if not isinstance(link, dict):
            continue
        url = link.get("url")
        if not isinstance(url, str) or not url:
            continue
        path = link.get("path")
        if path == "IMG@/src":
            alt = link.get("alt")
            images.append((url, alt if isinstance(alt, str) else None))
        elif path in ("A@/href", "LINK@/href", "AREA@/href"):
            rel = link.get("rel")
            rel = rel if isinstance(rel, str) else None
            if may_name_license(url, rel):
                license_links.append((url, rel))
    return WatPage(
        target_uri=target_uri,
        base_href=base_href,
        images=images,
        license_links=license_links,
        content_type=content_type if isinstance(content_type, str) else None,
    )
