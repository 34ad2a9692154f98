"""spark-submit entry for report: a run directory -> run_dir/report/index.html.

INPUT  -> the same arguments as `laion-spark report` (run_dir=... key=value ...)
OUTPUT -> run_dir/report/ (index.html, plots/, samples/)
"""

import sys

from laion_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
