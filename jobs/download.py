"""spark-submit entry for download: pairs -> images.

INPUT  -> the same arguments as `laion-spark download` (input=... output=... key=value ...)
OUTPUT -> the images table and <output>/_summary.json
"""

import sys

from laion_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["download", *sys.argv[1:]]))
