"""spark-submit entry for search (it starts no Spark work): an index folder + a query -> the top-k rows.

INPUT  -> the same arguments as `laion-spark search` (input=<index dir> query="..." k=10 [format=jsonl])
OUTPUT -> the results on stdout
"""

import sys

from laion_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["search", *sys.argv[1:]]))
