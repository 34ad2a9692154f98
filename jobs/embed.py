"""spark-submit entry for embed: images -> embeddings.

INPUT  -> the same arguments as `laion-spark embed` (input=... output=... key=value ...)
OUTPUT -> the embeddings table and <output>/_summary.json
"""

import sys

from laion_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:]]))
