"""laion-spark: LAION-style image-text datasets from web archives, on Apache Spark.

INPUT  -> web archives (WARC / ARC / WAT)
OUTPUT -> candidates, pairs, ... tables (see DESIGN.md); each stage is a DataFrame transform
"""

__version__ = "0.1.0"
