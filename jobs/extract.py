"""spark-submit entry for extract: web archives -> candidates (+ <output>_errors).

INPUT  -> the same arguments as `laion-spark extract` (input=... output=... key=value ...)
OUTPUT -> the candidates table, the extract_errors table and <output>/_summary.json
"""

import sys

from laion_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["extract", *sys.argv[1:]]))
