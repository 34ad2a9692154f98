"""The `laion-spark` command: `laion-spark STAGE [--config FILE ...] [key.sub=value ...]`.

INPUT  -> argv
OUTPUT -> the stage run (config -> session -> read -> transform -> write), its summary printed
          and written to <output>/_summary.json, the stage's completion marker (marker.py); exit code
          0, or 2 for a usage/config error (reported before any Spark session starts), or 1 for a
          failed run (its outputs are left without a marker and with _FAILED.json)

The stages, their modules, usage lines and short table keys come from laion_spark.stages.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import sys
import time

from laion_spark import config as config_mod
from laion_spark import marker, stages
from laion_spark.config import ConfigError
from laion_spark.io import OutputExistsError, check_output

log = logging.getLogger(__name__)

# stage -> module with `prepare(cfg)` (checks before Spark) and `run(spark, cfg) -> summary dict`
# (optional: format_report(summary) -> str, what main prints instead of the summary's JSON); kept as a
# view of the registry for callers that only need the module
STAGE_MODULES = {name: s.module for name, s in stages.STAGES.items()}


def _usage() -> str:
    width = max(len(n) for n in stages.STAGES)
    lines = ["usage: laion-spark STAGE [--config FILE ...] [key=value ...]", "stages:"]
    lines += [f"  {name:<{width}}  {s.summary}" for name, s in stages.STAGES.items()]
    return "\n".join(lines)


def _help_text(stage: str) -> str:
    lines = [f"usage: {stages.get(stage).usage()}", "", "keys (key=default  what it does):"]
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
    if not args.stage or args.stage not in stages.STAGES:
        if args.help or not args.stage:
            print(_usage())
            raise SystemExit(0 if args.help else 2)
        raise ConfigError(f"unknown stage {args.stage!r}; valid stages: {', '.join(stages.STAGES)}")
    if args.help:
        print(_help_text(args.stage))
        raise SystemExit(0)
    unknown_flags = [a for a in rest if a.startswith("-")]
    if unknown_flags:
        raise ConfigError(f"unknown option {unknown_flags[0]!r}; options: --config FILE, --help")
    return args.stage, args.config, rest


def prepare(stage: str, config_files: list[str], overrides: list[str]):
    """Stage + config sources -> (validated JobConfig, stage module); raises before Spark starts."""
    entry = stages.get(stage)
    cfg = config_mod.load_config(config_files, overrides, stage=stage)
    module = importlib.import_module(entry.module)
    if not cfg.output and hasattr(module, "default_output") and cfg.input:  # report: <run_dir>/report
        cfg = dataclasses.replace(cfg, output=module.default_output(cfg))
    for key in entry.required_keys:
        if not marker._get(cfg, key):
            spelled = next((a for a, k in entry.aliases.items() if k == key), key)
            raise ConfigError(f"{spelled} is required: {entry.usage()}")
    module.prepare(cfg)
    if cfg.output and not getattr(module, "RESUMES", False):  # the pipeline resumes an existing run_dir
        check_output(cfg.output, cfg.mode)
    return cfg, module


def run(stage: str, cfg, module, spark=None, label: str | None = None) -> dict:
    """Run one prepared stage in `spark` (default: get_spark()) -> its summary, also written as the
    completion marker of its outputs once run() returned (its row accounting check held).

    A run that raises leaves its outputs visibly incomplete (marker.fail) and re-raises. While it runs,
    progress lines (progress.py) name it `label` (default: the stage).
    """
    from laion_spark import progress
    from laion_spark.session import get_spark

    entry = stages.get(stage)
    inputs = marker.inputs_of(entry, cfg)  # warns now, before any work, about incomplete inputs
    marker.clear(entry, cfg)
    if entry.spark:
        spark = spark or get_spark()
    started = time.time()
    try:
        with progress.shown(spark if entry.spark else None, label or stage):
            summary = module.run(spark, cfg)
    except BaseException as exc:
        left = marker.fail(entry, cfg, exc)
        if left:
            log.error("%s failed (%s: %s); left without its completion marker %s (see %s there): %s",
                      stage, type(exc).__name__, exc, marker.MARKER, marker.FAILED, ", ".join(left))
        raise
    summary = {
        "stage": stage,
        "config": config_mod.stage_values(cfg, stage),
        **summary,
        "seconds": round(time.time() - started, 3),
    }
    if entry.main_output is not None:
        summary = marker.commit(entry, cfg, summary, inputs)
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
    try:
        summary = run(stage, cfg, module)
    except ConfigError as exc:  # found only once the input was read (a budget too small for its rows)
        print(f"laion-spark: error: {exc}", file=sys.stderr)
        return 2
    report = getattr(module, "format_report", None)
    print(report(summary) if report else json.dumps(summary, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
