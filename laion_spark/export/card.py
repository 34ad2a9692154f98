"""The dataset card: an export's summary + config -> `<output>/README.md` (Markdown, for the release's users).

INPUT  -> the SparkSession (its version), the JobConfig and the release job's summary (counts per subset
          and per removal reason, taggers, clip models, outputs)
OUTPUT -> README.md written beside laion/; returns its URI

Every number on the card is the summary's, which the job counted on the tables it wrote.
"""

from __future__ import annotations

import importlib.metadata
import json

from laion_spark import __version__
from laion_spark.config import output_values


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


COUNTS_HEADING = "## Counts"
SUBSETS_HEADING = "### Subsets"


def counts_lines(s: dict) -> list[str]:
    """The summary's counts -> the card's Counts section (from its heading to the line before Subsets)."""
    lines = ["", COUNTS_HEADING, "", "| table | rows |", "| --- | --- |",
             f"| dataset (input) | {s['rows_in']} |",
             f"| release (`laion/`) | {s['released']} |",
             f"| removed (`{s['removed_output']}`) | {s['removed']} |"]
    lines += [f"| subset `{name}` (`subsets/{name}/`) | {v['rows']} |" for name, v in s["subsets"].items()]
    lines += ["", "### Removed, per reason", ""]
    if s["reasons"]:
        lines += ["| reason | rows |", "| --- | --- |", *[f"| `{r}` | {n} |" for r, n in s["reasons"].items()]]
    else:
        lines.append("Nothing was removed.")
    return lines


def recounted(text: str, summary: dict) -> str:
    """A card's text + the summary's new counts (after a takedown) -> the card with its Counts section
    replaced, the rest as it was."""
    lines = text.split("\n")
    start = lines.index(COUNTS_HEADING) - 1
    end = lines.index(SUBSETS_HEADING) - 1
    return "\n".join(lines[:start] + counts_lines(summary) + lines[end:])


def card_text(spark_version: str, cfg, summary: dict) -> str:
    """-> the card's Markdown."""
    from laion_spark.marker import file_hash

    s = summary
    lines = [
        "# Dataset card", "",
        f"Image-text pairs released by laion-spark {__version__} (`laion-spark export`), in "
        f"{'LAION-5B' if s['columns'] == 'laion5b' else 'LAION-400M'}'s parquet columns. "
        "Every pair keeps its scores; subsets are the rows that meet a condition, and remove nothing from the release.",
    ]
    lines += counts_lines(s)
    lines += ["", SUBSETS_HEADING, ""]
    lines += [f"- `{name}`: `{v['where']}`" for name, v in s["subsets"].items()] or ["None configured."]
    if s["blocklists"]:
        lines += ["", "### Blocklists", "", "A row whose URL or image digest is on one of these lists is in no output "
                  "(release, subsets, shards, .npy).", ""]
        lines += [f"- `{b['name']}` ({b['kind']}), sha256 {file_hash(b['uri']) or 'unreadable'}"
                  for b in s["blocklists"]]
    lines += ["", "## Files", ""]
    files = {"laion": "`laion/`: the release (parquet)", "webdataset": "`webdataset/`: img2dataset-style shards "
             "(tar + parquet + stats per shard) of the released pairs", "emb": "`emb/<clip_model>/`: clip-retrieval "
             "img_emb / text_emb .npy shards and metadata parquet of the released pairs"}
    lines += [f"- {files[o]}" for o in s["outputs"]]
    if "webdataset" in s:
        lines.append(f"  - webdataset: {s['webdataset']['shards']} shards, {s['webdataset']['successes']} images")
    if "emb" in s:
        lines.append(f"  - emb: {s['emb']['rows']} rows, {s['emb']['shards']} shards, {s['emb']['dtype']}")
    lines += ["", "## Models", ""]
    lines += [f"- CLIP: `{m}`" for m in s["clip_models"]] or ["- CLIP: not recorded in the dataset"]
    lines += [f"- `{tag}`: {', '.join(f'`{t}`' for t in taggers)}" for tag, taggers in s["taggers"].items()]
    if not s["taggers"]:
        lines.append("- tags: none (no tags table; score columns are null unless the dataset carried them)")
    lines += ["", "## Versions", "", f"- laion-spark {__version__}", f"- Spark {spark_version}",
              f"- open_clip {_version('open_clip_torch')}", f"- timm {_version('timm')}",
              f"- mmh3 {_version('mmh3')} (the `hash` column)",
              "", "## Config", "", "The export's keys that change what it writes:", "", "```json",
              json.dumps(output_values(cfg, "export", file_hash), indent=2, sort_keys=True, default=str), "```", ""]
    return "\n".join(lines)


def write_card(spark, cfg, summary: dict) -> str:
    import fsspec

    from laion_spark.io import fsspec_uri

    uri = fsspec_uri(cfg.output).rstrip("/") + "/README.md"
    with fsspec.open(uri, "w", encoding="utf-8") as fh:
        fh.write(card_text(spark.version, cfg, summary))
    return uri
