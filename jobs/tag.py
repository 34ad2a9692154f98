"""spark-submit entry for tag: dataset + embeddings -> tags.

INPUT  -> the same arguments as `laion-spark tag` (input=<dataset> embeddings=<embeddings> output=<tags> ...)
OUTPUT -> the tags table at output, _summary.json
"""

import sys

from laion_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["tag", *sys.argv[1:]]))
