"""Hash and URL blocklists (child-safety organisations' lists, takedown requests): files -> match keys.

INPUT  -> a list file's text, its name (for errors) and its kind: url, url_md5, url_sha256, image_md5,
          image_sha1, image_sha256 or sample_id (the run's own ids: what a takedown recorded); a row's
          URL (and, on the Spark side, its image bytes' digests)
OUTPUT -> `parse_list`: the list's keys, normalised (URLs as written and normalised, digests in lower
          case); `url_keys`: the keys a row's URL is looked up under for a kind; BlocklistError naming
          the file and line of a malformed entry

The file format: one entry per line; blank lines and lines starting with `#` are skipped; in digest
lists a ` #` after the digest starts a comment too (a URL may hold `#`, so URL lists take whole lines).
A URL matches as written and normalised: scheme and host lower-cased, the default port (80 for http,
443 for https) and the fragment dropped; path and query are kept as they are (servers treat their
case and order as meaningful). URL digest lists hold the hex MD5 / SHA-256 of the URL's UTF-8 bytes;
a row is looked up with the digest of its URL as written and of its normalised form.

The keys are joined against the rows on the Spark side (export), so lists of tens of millions of
entries never sit in one Python set.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit, urlunsplit

KINDS = ("url", "url_md5", "url_sha256", "image_md5", "image_sha1", "image_sha256", "sample_id")
HEX_LENGTH = {"md5": 32, "sha1": 40, "sha256": 64}
_HEX = re.compile(r"[0-9a-fA-F]+")
_ID = re.compile(r"-?[0-9]{1,19}")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class BlocklistError(ValueError):
    """A list that cannot be used: an unknown kind, or a malformed line (file and line named)."""


def normalise_url(url: str) -> str | None:
    """A URL -> scheme and host lower-cased, default port and fragment dropped; None if it has no
    scheme and host (nothing to normalise)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    if parts.username or parts.password:
        auth = parts.username or ""
        if parts.password is not None:
            auth += f":{parts.password}"
        netloc = f"{auth}@{netloc}"
    return urlunsplit((scheme, netloc, parts.path, parts.query, ""))


def _digest(algorithm: str, text: str) -> str:
    return hashlib.new(algorithm, text.encode("utf-8")).hexdigest()


def url_keys(url: str | None, kind: str) -> list[str]:
    """A row's URL -> the keys it is looked up under in a list of that kind (as written, then normalised,
    without repeats); [] for image lists (the image's digest is the key) and for a null URL."""
    if url is None or not kind.startswith("url"):
        return []
    forms = [url]
    normal = normalise_url(url)
    if normal is not None and normal != url:
        forms.append(normal)
    if kind == "url":
        return forms
    algorithm = kind.split("_", 1)[1]
    return list(dict.fromkeys(_digest(algorithm, f) for f in forms))


def parse_line(raw: str, kind: str) -> list[str]:
    """One line of a list of that kind -> its keys ([] for a blank or comment line); ValueError saying
    what is wrong with a malformed one."""
    line = raw.strip().lstrip("\ufeff").strip()  # a byte-order mark some editors write first
    if not line or line.startswith("#"):
        return []
    if kind == "url":
        normal = normalise_url(line)
        if normal is None or urlsplit(normal).scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) URL: {line[:200]!r}")
        return list(dict.fromkeys((line, normal)))
    entry = line.split(" #", 1)[0].split("\t#", 1)[0].strip()
    if kind == "sample_id":
        if not _ID.fullmatch(entry) or not -(2**63) <= int(entry) < 2**63:
            raise ValueError(f"not a sample id (an integer): {entry[:80]!r}")
        return [str(int(entry))]
    algorithm = kind.split("_", 1)[1]
    want = HEX_LENGTH[algorithm]
    if len(entry) != want or not _HEX.fullmatch(entry):
        raise ValueError(f"not a hex {algorithm} digest ({want} hex digits): {entry[:80]!r}")
    return [entry.lower()]


def check_kind(kind: str, source: str) -> None:
    if kind not in KINDS:
        raise BlocklistError(f"{source}: kind {kind!r} is not one of {', '.join(KINDS)}")


def parse_list(text: str, source: str, kind: str) -> list[str]:
    """A list file's text -> its keys (see the module docstring); BlocklistError for a bad line."""
    check_kind(kind, source)
    keys: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        try:
            keys.extend(parse_line(raw, kind))
        except ValueError as exc:
            raise BlocklistError(f"{source}:{number}: {exc}") from None
    return keys


def first_bad_line(lines, source: str, kind: str) -> BlocklistError | None:
    """Lines of a list (an iterable, read one at a time) -> the error of its first malformed line, None if
    every line parses (the driver's way to name the line Spark found bad, without holding the list)."""
    for number, raw in enumerate(lines, 1):
        try:
            parse_line(raw, kind)
        except ValueError as exc:
            return BlocklistError(f"{source}:{number}: {exc}")
    return None
