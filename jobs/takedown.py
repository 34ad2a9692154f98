"""spark-submit entry for takedown: a finished run + a list of URLs or hashes -> those rows removed in place.

INPUT  -> the same arguments as `laion-spark takedown` (run_dir=... list=... [kind=url])
OUTPUT -> the run's release, subsets, shards and indices without the rows; run_dir/manifest.json's takedowns
"""

import sys

from laion_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["takedown", *sys.argv[1:]]))
