"""spark-submit entry for plan: a finished run directory + a target -> what a run of that size would take.

INPUT  -> the same arguments as `laion-spark plan` (run_dir=... target=... key=value ...)
OUTPUT -> run_dir/plan/<target>.json, and the plan printed
"""

import sys

from laion_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["plan", *sys.argv[1:]]))
