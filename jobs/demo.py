"""spark-submit entry for demo: a generated crawl -> every stage, under one run directory.

INPUT  -> the same arguments as `laion-spark demo` (output=... key=value ...)
OUTPUT -> the run directory with one table per stage, each with its _summary.json
"""

import sys

from laion_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
