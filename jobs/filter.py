"""spark-submit entry for filter: images + embeddings -> dataset + rejected (+ .npy shards).

INPUT  -> the same arguments as `laion-spark filter` (input=<images> embeddings=<embeddings> output=<dataset> ...)
OUTPUT -> dataset at output, <output>_rejected, optionally <output>_emb/, and <output>/_summary.json
"""

import sys

from laion_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["filter", *sys.argv[1:]]))
