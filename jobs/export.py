"""spark-submit entry for export: images -> webdataset shards.

INPUT  -> the same arguments as `laion-spark export` (input=... output=... export.samples_per_shard=...)
OUTPUT -> {shard}.tar / .parquet / _stats.json per shard and <output>/_summary.json
"""

import sys

from laion_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
