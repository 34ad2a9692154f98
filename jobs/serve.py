"""spark-submit entry for serve: index folder(s) [+ images] -> an HTTP search service and a web page.

INPUT  -> the same arguments as `laion-spark serve` (input=<index dir> [images=<images or dataset>] [port=N] ...)
OUTPUT -> a server on serve.host:serve.port until SIGINT/SIGTERM (no Spark session: serve reads with pyarrow)
"""

import sys

from laion_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
