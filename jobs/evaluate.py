"""spark-submit entry for evaluate: a run directory -> CLIPs trained on its filtered pairs and baselines, measured.

INPUT  -> the same arguments as `laion-spark evaluate` (run_dir=... key=value ...)
OUTPUT -> run_dir/evaluate/ (results.json, results.md, the baselines' shards, the training logs)
"""

import sys

from laion_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
