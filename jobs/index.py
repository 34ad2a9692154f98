"""spark-submit entry for index: embeddings (+ dataset) -> a faiss kNN index.

INPUT  -> the same arguments as `laion-spark index` (input=<embeddings> dataset=<table> output=<dir> ...)
OUTPUT -> <output>/knn.index (or shards/knn_NNNNN.index), metadata/, index_infos.json, _summary.json
"""

import sys

from laion_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["index", *sys.argv[1:]]))
