"""Config: defaults <- YAML overlays <- key=value overrides; errors name the key."""

import subprocess
import sys

import pytest

from laion_spark.config import ConfigError, load_config


def test_defaults_overlay_and_override(tmp_path):
    overlay = tmp_path / "a.yaml"
    overlay.write_text("extract:\n  min_alt_chars: 3\n  denied_extensions: [.svg]\nmode: overwrite\n")
    second = tmp_path / "b.yaml"
    second.write_text("extract:\n  min_alt_chars: 4\n")
    cfg = load_config([str(overlay), str(second)], ["input=in", "output=out", "extract.lazy_attributes=true"])
    assert cfg.input == "in" and cfg.output == "out" and cfg.mode == "overwrite"
    assert cfg.extract.min_alt_chars == 4  # the later overlay wins
    assert cfg.extract.denied_extensions == (".svg",)
    assert cfg.extract.lazy_attributes is True
    assert cfg.extract.max_alt_chars == 2000  # untouched default
    assert cfg.dedupe.key == "url_text"


def test_override_beats_yaml_and_lists_parse(tmp_path):
    overlay = tmp_path / "a.yaml"
    overlay.write_text("extract:\n  min_alt_chars: 3\n")
    cfg = load_config([str(overlay)], ["extract.min_alt_chars=7", "extract.denied_extensions=.svg,.gif,.ico"])
    assert cfg.extract.min_alt_chars == 7
    assert cfg.extract.denied_extensions == (".svg", ".gif", ".ico")


def test_nested_sections_from_yaml_and_overrides(tmp_path):
    # filter.threshold.en is a key three levels deep; YAML nests it, an override dots it
    overlay = tmp_path / "laion400m.yaml"
    overlay.write_text("filter:\n  threshold: {en: 0.3, multi: 0.3, nolang: 0.3}\n"
                       "embed:\n  models:\n    multi: [xlm-roberta-base-ViT-B-32, laion5b_s13b_b90k]\n")
    cfg = load_config([str(overlay)], ["filter.threshold.nolang=0.25", "embeddings=/runs/emb"], stage="filter")
    assert (cfg.filter.threshold.en, cfg.filter.threshold.multi, cfg.filter.threshold.nolang) == (0.3, 0.3, 0.25)
    assert cfg.embed.models.multi == ("xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k")
    assert cfg.embed.models.en == ()  # untouched: the default model
    assert cfg.filter.embeddings == "/runs/emb"  # `embeddings=` is filter.embeddings
    # a stage's short table keys belong to that stage only
    with pytest.raises(ConfigError, match="unknown key 'embeddings'"):
        load_config([], ["embeddings=/runs/emb"], stage="download")
    defaults = load_config([], [])
    assert (defaults.filter.threshold.en, defaults.filter.threshold.multi) == (0.28, 0.26)  # LAION-5B's
    with pytest.raises(ConfigError, match="unknown key 'filter.threshold.de'"):
        load_config([], ["filter.threshold.de=0.2"])
    with pytest.raises(ConfigError, match="bad value for filter.threshold.en"):
        load_config([], ["filter.threshold.en=high"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("extract.min_alt_char=5", "unknown key 'extract.min_alt_char'; valid keys: extract.min_alt_chars"),
        ("nosuch=1", "unknown key 'nosuch'"),
        ("extract.min_alt_chars=five", "bad value for extract.min_alt_chars: 'five' is not a valid int"),
        ("extract.min_alt_chars=-1", "must be >= 0"),
        ("dedupe.key=sha", "valid values: url_text, url"),
        ("mode=append", "valid values: error, overwrite"),
        ("extract.lazy_attributes=maybe", "not a valid bool"),
        ("noequals", "expected key=value"),
    ],
)
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config([], [override])
    assert message in str(info.value)


def test_unknown_yaml_key(tmp_path):
    overlay = tmp_path / "a.yaml"
    overlay.write_text("extract:\n  bogus: 1\n")
    with pytest.raises(ConfigError, match="unknown key 'extract.bogus'"):
        load_config([str(overlay)], [])


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "laion_spark.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_help_lists_stage_keys():
    res = _cli("extract", "--help")
    assert res.returncode == 0
    assert "extract.min_alt_chars=5" in res.stdout
    assert "drop alt texts shorter than this" in res.stdout
    assert "dedupe.key" not in res.stdout  # only this stage's keys


@pytest.mark.parametrize(
    "args, message",
    [
        (("extract", "input=x", "output=y", "extract.nope=1"), "unknown key 'extract.nope'"),
        (("extract", "input=x", "output=y", "extract.min_alt_chars=abc"), "bad value for extract.min_alt_chars"),
        (("extract", "output=y"), "input is required"),
        (("extract", "input=/nonexistent/dir/*.warc.gz", "output=y"), "no input files"),
        (("dedupe", "input=/nonexistent/table", "output=y"), "input not found"),
        (("nosuchstage",), "unknown stage 'nosuchstage'"),
    ],
)
def test_cli_config_errors_exit_nonzero_before_spark(args, message):
    res = _cli(*args)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
    assert "SparkContext" not in res.stderr and "Spark" not in res.stdout  # no session was started


def test_existing_output_is_an_error_unless_overwrite(tmp_path):
    table = tmp_path / "pairs_in"
    table.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    res = _cli("dedupe", f"input={table}", f"output={out}")
    assert res.returncode == 2 and "already exists; pass mode=overwrite" in res.stderr
