"""The one list of stages: name, config section, input and output tables, required keys, module.

INPUT  -> nothing (a constant registry)
OUTPUT -> STAGES (name -> Stage), read by the CLI (dispatch, usage, help, key aliases), config.py
          (which sections a stage takes), spark-submit.sh (`python -m laion_spark.stages names`),
          the completion markers (which inputs a stage reads, which tables it writes) and, later, the
          pipeline's dependency graph (a stage depends on the stages whose output tables it reads)

Why one list: the CLI, config.py and spark-submit.sh each kept their own and `demo` ran in one but
not another. A stage's table keys (`embeddings=` for filter) are declared with the stage, so a short
spelling means something only where it is that stage's table.

Shapes the registry covers: a stage that writes one main table (`output`) and secondary ones beside
it (`<output>_errors`); a stage without output (search, serve: `outputs=()`); a stage that works on a
run directory (`run_dir`, e.g. report and pipeline) instead of input/output.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Table:
    """One input or output of a stage: the config key that holds its URI and the table it is."""

    key: str  # "input", "output", "filter.embeddings", "run_dir", ...; "": at <output><suffix>, no key of its own
    table: str  # DESIGN.md's table name: candidates, pairs, images, ... ("archives": files, not a table)
    alias: str = ""  # the short spelling on the command line (embeddings=URI)
    required: bool = True
    suffix: str = ""  # an output whose default URI is <output><suffix> when its key is empty
    ours: bool = True  # a table some stage of ours writes (so it should carry a completion marker)
    many: bool = False  # the key holds comma-separated URIs (dedupe.previous)


@dataclass(frozen=True)
class Stage:
    """One stage of the CLI: `laion-spark NAME ...` runs `module.run(spark, cfg)` after `module.prepare(cfg)`."""

    name: str
    module: str  # has prepare(cfg) and run(spark, cfg) -> summary dict; optional format_report(summary)
    summary: str  # one line, for the usage text
    section: str | None = None  # the config section it reads (JobConfig attribute), None: common keys only
    inputs: tuple[Table, ...] = ()
    outputs: tuple[Table, ...] = ()
    requires: tuple[str, ...] = field(default=())  # keys that must be non-empty (beyond required tables)
    key_aliases: tuple[tuple[str, str], ...] = ()  # short spellings of this stage's own non-table keys (k=)
    spark: bool = True  # False: run(None, cfg), no session is started (search, serve)

    @property
    def required_keys(self) -> tuple[str, ...]:
        keys = [t.key for t in (*self.inputs, *self.outputs) if t.required]
        return tuple(dict.fromkeys([*keys, *self.requires]))

    @property
    def aliases(self) -> dict[str, str]:
        """Short spelling -> full key, for this stage's own tables only."""
        return {**{t.alias: t.key for t in (*self.inputs, *self.outputs) if t.alias}, **dict(self.key_aliases)}

    @property
    def main_output(self) -> Table | None:
        return next((t for t in self.outputs if t.key in ("output", "run_dir")), None)

    def usage(self) -> str:
        parts = []
        for t in (*self.inputs, *self.outputs):
            if not t.key:
                continue
            spelled = t.alias or t.key
            item = f"{spelled}=<{t.table}>"
            parts.append(item if t.required else f"[{item}]")
        return f"laion-spark {self.name} " + " ".join(parts) + " [key=value ...]"


def _stage(name, summary, inputs=(), outputs=(), section=None, requires=(), key_aliases=(), spark=True, module=None):
    return Stage(name=name, module=module or f"laion_spark.{name}.job", summary=summary, section=section or name,
                 inputs=tuple(inputs), outputs=tuple(outputs), requires=tuple(requires),
                 key_aliases=tuple(key_aliases), spark=spark)


_REGISTRY = (
    _stage("extract", "web archives (WARC / ARC / WAT, globs, *.paths.gz) -> candidates",
           inputs=[Table("input", "archives", ours=False),
                   Table("extract.retry_from", "candidates", required=False)],
           outputs=[Table("output", "candidates"),
                    Table("extract.errors_output", "candidates_errors", required=False, suffix="_errors")]),
    _stage("dedupe", "candidates -> pairs (sample_id; exact duplicates, earlier runs and a blocklist removed)",
           inputs=[Table("input", "candidates", many=True),
                   Table("dedupe.previous", "pairs", required=False, many=True),
                   Table("dedupe.blocklist", "blocklist", required=False, ours=False)],
           outputs=[Table("output", "pairs")]),
    _stage("download", "pairs -> images (one row per pair, failures included)",
           inputs=[Table("input", "pairs"), Table("download.retry_from", "images", required=False)],
           outputs=[Table("output", "images")]),
    _stage("embed", "images -> embeddings (CLIP image + text embeddings of the success rows)",
           inputs=[Table("input", "images")],
           outputs=[Table("output", "embeddings")]),
    _stage("filter", "images + embeddings -> dataset + rejected (cosine-similarity thresholds per language group)",
           inputs=[Table("input", "images"), Table("filter.embeddings", "embeddings", alias="embeddings")],
           outputs=[Table("output", "dataset"),
                    Table("filter.rejected_output", "dataset_rejected", required=False, suffix="_rejected"),
                    Table("filter.npy_output", "emb", required=False, suffix="_emb")]),
    _stage("tag", "dataset + embeddings -> tags (punsafe, aesthetic_score, pwatermark, nsfw_zero_shot; scores only)",
           inputs=[Table("input", "dataset"), Table("tag.embeddings", "embeddings", alias="embeddings"),
                   Table("tag.dataset", "dataset", alias="dataset", required=False)],
           outputs=[Table("output", "tags")]),
    _stage("export", "dataset + tags (+ embeddings) -> a LAION release: parquet, subsets, webdataset and .npy "
           "shards, a dataset card; blocklists applied (format=webdataset: any images table -> shards)",
           inputs=[Table("input", "dataset"), Table("export.tags", "tags", alias="tags", required=False),
                   Table("export.embeddings", "embeddings", alias="embeddings", required=False)],
           outputs=[Table("output", "export"),
                    Table("export.removed_output", "export_removed", required=False, suffix="_removed"),
                    # the release inside it gets the marker too: index reads it, and must see it change
                    Table("", "release", required=False, suffix="/laion")]),
    _stage("index", "embeddings (+ the dataset to index) -> a faiss index with metadata and measured recall",
           inputs=[Table("input", "embeddings"), Table("index.dataset", "dataset", alias="dataset", required=False)],
           outputs=[Table("output", "index"),
                    Table("index.rejected_output", "index_rejected", required=False, suffix="_rejected")]),
    _stage("search", "an index folder + a text or image query -> the top-k rows (a table, or JSON lines)",
           inputs=[Table("input", "index")], spark=False,
           key_aliases=[("query", "search.query"), ("image", "search.image"), ("k", "search.k"),
                        ("format", "search.format")]),
    _stage("serve", "index folder(s) [+ images] -> an HTTP search service (clip-retrieval's API) and a web page",
           inputs=[Table("input", "index"), Table("serve.images", "images", alias="images", required=False)],
           spark=False, key_aliases=[("port", "serve.port"), ("host", "serve.host")]),
    _stage("report", "a run directory -> run_dir/report/index.html: the funnel with every rejection reason, "
           "plots (matplotlib PNG) and sample kept and rejected pairs",
           inputs=[Table("input", "run_dir", alias="run_dir", ours=False)],
           outputs=[Table("output", "report", required=False)]),
    _stage("evaluate", "a run directory -> a CLIP trained from scratch (open_clip's trainer) on its filtered pairs, "
           "on all downloaded pairs and on a random subset as large; zero-shot and retrieval on held-out images",
           inputs=[Table("input", "run_dir", alias="run_dir", ours=False, required=False),
                   Table("evaluate.train", "webdataset", alias="train", required=False, ours=False)],
           outputs=[Table("output", "evaluate", required=False)]),
    _stage("pipeline", "web archives -> every stage above (extract to index) under one run directory; a finished "
           "stage is skipped, a changed one reruns with what depends on it; run_dir/manifest.json",
           inputs=[Table("input", "archives", ours=False)],
           outputs=[Table("output", "run_dir", alias="run_dir")],
           key_aliases=[("from", "pipeline.rerun_from"), ("pipeline.from", "pipeline.rerun_from"),
                        ("until", "pipeline.until"), ("previous", "pipeline.previous")]),
    _stage("takedown", "a finished run + a list of URLs or hashes -> those rows removed from its release, subsets, "
           "shards and indices in place (only the files holding them rewritten); recorded in the manifest",
           inputs=[Table("input", "run_dir", alias="run_dir", ours=False)],
           key_aliases=[("list", "takedown.list"), ("kind", "takedown.kind")]),
    _stage("demo", "a generated crawl -> every stage above, under one run directory (loopback only)",
           outputs=[Table("output", "run_dir")]),
    # laion_spark.cost: laion_spark.plan would read as the pipeline's or the index's plan (pipeline/plan.py)
    _stage("plan", "a finished run + a target (laion5b, cc-snapshot, N candidates) -> core-hours, bytes per table, "
           "the index and its memory, wall time on a cluster: run_dir/plan/<target>.json",
           inputs=[Table("input", "run_dir", alias="run_dir", ours=False)],
           outputs=[Table("output", "plan", required=False)], spark=False, module="laion_spark.cost.job",
           key_aliases=[("target", "plan.target")]),
)

STAGES: dict[str, Stage] = {s.name: s for s in _REGISTRY}


def get(name: str) -> Stage:
    """Stage name -> Stage (KeyError naming the valid stages)."""
    try:
        return STAGES[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; valid stages: {', '.join(STAGES)}") from None


def names() -> list[str]:
    return list(STAGES)


def producers() -> dict[str, str]:
    """Table name -> the stage whose output it is (the pipeline's dependency edges start here)."""
    return {t.table: s.name for s in STAGES.values() for t in s.outputs}


def main(argv: list[str]) -> int:
    """`python -m laion_spark.stages names` (one a line) | `... has NAME` (exit 0 if a stage): for spark-submit.sh.

    A command-line entry point, as cli.py's: its output is its answer to the shell, so it prints."""
    if argv[:1] == ["names"]:
        print("\n".join(names()))
        return 0
    if len(argv) == 2 and argv[0] == "has":
        return 0 if argv[1] in STAGES else 1
    print("usage: python -m laion_spark.stages names | has STAGE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
