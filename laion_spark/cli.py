"""The `laion-spark` command: `laion-spark STAGE [--config FILE ...] [key.sub=value ...]`.

INPUT  -> argv
OUTPUT -> the stage run (config -> session -> read -> transform -> write), its summary printed
          and written to <output>/_summary.json; exit code 0, or 2 for a usage/config error
          (reported before any Spark session starts), or 1 for a failed run
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time

from laion_spark import config as config_mod
from laion_spark.config import ConfigError
from laion_spark.io import OutputExistsError, check_output, write_json

log = logging.getLogger(__name__)

# stage -> module with `prepare(cfg)` (checks before Spark) and `run(spark, cfg) -> summary dict`;
# optional module attributes: NEEDS_INPUT = False (the stage makes its own input, e.g. demo) and
# format_report(summary) -> str (what main prints instead of the summary's JSON)
STAGE_MODULES = {
    "extract": "laion_spark.extract.job",
    "dedupe": "laion_spark.dedupe.job",
    "download": "laion_spark.download.job",
    "embed": "laion_spark.embed.job",
    "filter": "laion_spark.filter.job",
    "export": "laion_spark.export.job",
    "demo": "laion_spark.demo.job",
}


def _help_text(stage: str) -> str:
    lines = [f"usage: laion-spark {stage} [--config FILE ...] [key=value ...]", "", "keys (key=default  what it does):"]
    entries = []
    for key, default, help_line in config_mod.iter_keys(stage):
        shown = ",".join(default) if isinstance(default, tuple) else default
        entries.append((f"{key}={shown!s}", help_line))
    # one column for the helps; a key=default longer than 44 characters pushes only its own help
    width = min(44, max(len(k) for k, _ in entries))
    lines += [f"  {k:<{width}}  {h}" for k, h in entries]
    lines.append("")
    lines.append("--config FILE   YAML overlay (conf/local.yaml, conf/cluster.yaml, ...), applied in order")
    return "\n".join(lines)


def _parse(argv: list[str]) -> tuple[str, list[str], list[str]]:
    parser = argparse.ArgumentParser(prog="laion-spark", add_help=False)
    parser.add_argument("stage", nargs="?")
    parser.add_argument("--config", action="append", default=[])
    parser.add_argument("-h", "--help", action="store_true")
    args, rest = parser.parse_known_args(argv)
    stages = ", ".join(STAGE_MODULES)
    if not args.stage or args.stage not in STAGE_MODULES:
        if args.help or not args.stage:
            print(f"usage: laion-spark STAGE [--config FILE ...] [key=value ...]\nstages: {stages}")
            raise SystemExit(0 if args.help else 2)
        raise ConfigError(f"unknown stage {args.stage!r}; valid stages: {stages}")
    if args.help:
        print(_help_text(args.stage))
        raise SystemExit(0)
    unknown_flags = [a for a in rest if a.startswith("-")]
    if unknown_flags:
        raise ConfigError(f"unknown option {unknown_flags[0]!r}; options: --config FILE, --help")
    return args.stage, args.config, rest


def prepare(stage: str, config_files: list[str], overrides: list[str]):
    """Stage + config sources -> (validated JobConfig, stage module); raises before Spark starts."""
    cfg = config_mod.load_config(config_files, overrides)
    module = importlib.import_module(STAGE_MODULES[stage])
    needs_input = getattr(module, "NEEDS_INPUT", True)
    usage = f"laion-spark {stage} input=URI output=URI" if needs_input else f"laion-spark {stage} output=URI"
    if needs_input and not cfg.input:
        raise ConfigError(f"input is required: {usage}")
    if not cfg.output:
        raise ConfigError(f"output is required: {usage}")
    module.prepare(cfg)
    check_output(cfg.output, cfg.mode)
    return cfg, module


def run(stage: str, cfg, module, spark=None) -> dict:
    """Run one prepared stage in `spark` (default: get_spark()) -> its summary (also written)."""
    from laion_spark.session import get_spark

    spark = spark or get_spark()
    started = time.time()
    summary = module.run(spark, cfg)
    summary = {
        "stage": stage,
        "config": config_mod.stage_values(cfg, stage),
        **summary,
        "seconds": round(time.time() - started, 3),
    }
    write_json(cfg.output.rstrip("/") + "/_summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    """argv -> exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    try:
        stage, config_files, overrides = _parse(argv)
        cfg, module = prepare(stage, config_files, overrides)
    except (ConfigError, OutputExistsError, FileNotFoundError) as exc:
        print(f"laion-spark: error: {exc}", file=sys.stderr)
        return 2
    summary = run(stage, cfg, module)
    report = getattr(module, "format_report", None)
    print(report(summary) if report else json.dumps(summary, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
