"""spark-submit entry for pipeline: web archives -> every stage under one run directory, resumable.

INPUT  -> the same arguments as `laion-spark pipeline` (input=... run_dir=... key=value ...)
OUTPUT -> run_dir with one table per stage, each with its _summary.json, and run_dir/manifest.json
"""

import sys

from laion_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
