"""spark-submit entry for dedupe: candidates -> pairs.

INPUT  -> the same arguments as `laion-spark dedupe` (input=... output=... key=value ...)
OUTPUT -> the pairs table and <output>/_summary.json
"""

import sys

from laion_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["dedupe", *sys.argv[1:]]))
