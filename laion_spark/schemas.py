"""Table schemas: one named StructType per table of DESIGN.md, plus column-name constants.

INPUT  -> nothing (definitions only)
OUTPUT -> StructTypes that readers, transforms and writers use as the contract
"""

from pyspark.sql.types import (
    FloatType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

# column names used in code (a typo in a string literal is a silent bug, a typo here is an error)
URL = "url"
TEXT = "text"
PAGE_URL = "page_url"
LANGUAGE = "language"
LANGUAGE_PROB = "language_prob"
LICENSE = "license"
CRAWL_TIME = "crawl_time"
SOURCE_URI = "source_uri"
SOURCE_OFFSET = "source_offset"
SOURCE_LENGTH = "source_length"
SAMPLE_ID = "sample_id"
ERROR = "error"

CANDIDATES = StructType(
    [
        StructField(URL, StringType(), False),
        StructField(TEXT, StringType(), False),
        StructField(PAGE_URL, StringType(), True),
        StructField(LANGUAGE, StringType(), False),
        StructField(LANGUAGE_PROB, FloatType(), True),
        StructField(LICENSE, StringType(), True),
        StructField(CRAWL_TIME, TimestampType(), True),
        StructField(SOURCE_URI, StringType(), False),
        StructField(SOURCE_OFFSET, LongType(), False),
        StructField(SOURCE_LENGTH, LongType(), False),
    ]
)

EXTRACT_ERRORS = StructType(
    [
        StructField(SOURCE_URI, StringType(), False),
        StructField(SOURCE_OFFSET, LongType(), True),
        StructField(ERROR, StringType(), False),
    ]
)

# one row per input file: what the extract UDF saw and dropped, summed by the job
EXTRACT_FILE_STATS = StructType(
    [
        StructField(SOURCE_URI, StringType(), False),
        StructField("counts", MapType(StringType(), LongType()), False),
    ]
)

PAIRS = StructType([StructField(SAMPLE_ID, LongType(), False), *CANDIDATES.fields])


def nullable(schema: StructType) -> StructType:
    """StructType -> the same with every field nullable (what Parquet gives back on read)."""
    return StructType([StructField(f.name, f.dataType, True, f.metadata) for f in schema.fields])
