"""extract.language: CLD3 wrapper; unreliable or unknown -> nolang."""

import pickle

import pytest

from laion_spark.extract import language
from laion_spark.extract.language import detect_language, detect_languages


@pytest.mark.parametrize(("text", "expected"), [
    ("A small brown dog is running across the green field in the morning", "en"),
    ("Ein kleiner brauner Hund läuft am Morgen über die grüne Wiese", "de"),
    ("Un petit chien brun court à travers le champ vert le matin", "fr"),
    ("Маленькая коричневая собака бежит по зелёному полю утром", "ru"),
    ("小さな茶色の犬が朝の緑の野原を走っています", "ja"),
])
def test_detect_language_reliable(text, expected):
    lang, prob = detect_language(text)
    assert lang == expected
    assert 0.5 < prob <= 1.0


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text_is_nolang(text):
    # CLD3 itself calls "" reliably Japanese; the wrapper must not.
    assert detect_language(text) == ("nolang", 0.0)


def test_unreliable_text_is_nolang():
    lang, prob = detect_language("IMG_2034.JPG 12 34")
    assert lang == "nolang"
    assert 0.0 <= prob <= 1.0


def test_batch_matches_single():
    texts = ["The quick brown fox jumps over the lazy dog", "", "Der schnelle braune Fuchs springt"]
    assert detect_languages(texts) == [detect_language(t) for t in texts]


def test_identifier_built_once_and_module_picklable():
    detect_language("hello world, this is English")
    first = language._get_identifier()
    detect_language("noch ein deutscher Satz")
    assert language._get_identifier() is first
    # Spark pickles functions by reference: the module-level function must stay picklable.
    assert pickle.loads(pickle.dumps(detect_language)) is detect_language
