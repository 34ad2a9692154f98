"""Alt text -> (CLD3 language code, probability); unreliable or unknown -> "nolang".

INPUT  -> one text, or a list of texts
OUTPUT -> (language, probability) per text, e.g. ("de", 0.99), ("nolang", 0.41)

The CLD3 model is built once per Python worker process by a module-level cache (STYLE.md 7):
it is never pickled with a Spark closure, and a worker that never detects never builds it.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

NO_LANGUAGE = "nolang"
_MAX_NUM_BYTES = 1000
_identifier = None


def _get_identifier():
    """The process's CLD3 identifier; Spark Python workers run one task at a time, so no lock."""
    global _identifier
    if _identifier is None:
        import gcld3  # imported here so that importing this module (e.g. on the driver) is free

        _identifier = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=_MAX_NUM_BYTES)
        logger.debug("CLD3 identifier built")
    return _identifier


def detect_language(text: str) -> tuple[str, float]:
    """(CLD3 language code, probability); ("nolang", p) when CLD3 is unsure or says "und"."""
    # CLD3 answers an empty input with a "reliable" guess ("ja" at 0.78): no text, no language.
    if not text or text.isspace():
        return NO_LANGUAGE, 0.0
    result = _get_identifier().FindLanguage(text)
    probability = float(result.probability)
    if not result.is_reliable or result.language == "und":
        return NO_LANGUAGE, probability
    return result.language, probability


def detect_languages(texts) -> list[tuple[str, float]]:
    """detect_language over many texts, with the identifier looked up once."""
    _get_identifier()
    return [detect_language(text) for text in texts]
