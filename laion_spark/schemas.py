"""Table schemas: one named StructType per table of DESIGN.md, plus column-name constants.

INPUT  -> nothing (definitions only)
OUTPUT -> StructTypes that readers, transforms and writers use as the contract
"""

from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    DoubleType,
    FloatType,
    IntegerType,
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
STATUS = "status"
ERROR_MESSAGE = "error_message"
HTTP_STATUS = "http_status"
RETRYABLE = "retryable"
IMAGE = "image"

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
        # null where no byte range holds the record alone (a file gzipped whole, past its first record)
        StructField(SOURCE_OFFSET, LongType(), True),
        StructField(SOURCE_LENGTH, LongType(), True),
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


# download statuses (DESIGN.md, images table); every row of `images` has exactly one
SUCCESS = "success"
DOWNLOAD_STATUSES = (
    SUCCESS,
    "invalid_url",
    "blocked_address",
    "dns_error",
    "connect_error",
    "timeout",
    "http_error",
    "too_many_redirects",
    "too_large",
    "truncated",
    "opted_out",
    "not_image",
    "unsupported_format",
    "too_small",
    "too_many_pixels",
    "decode_error",
)
# failures worth another try later (download.retry_from); http_error only with 429 or 5xx
RETRYABLE_STATUSES = ("timeout", "connect_error", "dns_error", "truncated")

# the columns download adds to its input's (the input's own columns are carried along unchanged)
DOWNLOAD_FIELDS = [
    StructField(STATUS, StringType(), False),
    StructField(ERROR_MESSAGE, StringType(), True),
    StructField(RETRYABLE, BooleanType(), False),
    StructField(HTTP_STATUS, IntegerType(), True),
    StructField("final_url", StringType(), True),
    StructField("content_type", StringType(), True),
    StructField("fetched_at", TimestampType(), True),
    StructField(IMAGE, BinaryType(), True),
    StructField("image_format", StringType(), True),
    StructField("width", IntegerType(), True),
    StructField("height", IntegerType(), True),
    StructField("bytes", LongType(), True),
    StructField("original_width", IntegerType(), True),
    StructField("original_height", IntegerType(), True),
    StructField("original_format", StringType(), True),
    StructField("original_bytes", LongType(), True),
    StructField("sha256", StringType(), True),
    StructField("md5", StringType(), True),
    StructField("sha1", StringType(), True),  # the digest hash lists (Re-LAION's) are given in, with md5
]
DOWNLOAD_COLUMNS = tuple(f.name for f in DOWNLOAD_FIELDS)

IMAGES = StructType([*PAIRS.fields, *DOWNLOAD_FIELDS])


def images_schema(input_schema: StructType) -> StructType:
    """Schema of the download input -> the images schema: its columns (minus any earlier download
    columns) followed by DOWNLOAD_FIELDS."""
    kept = [f for f in input_schema.fields if f.name not in DOWNLOAD_COLUMNS]
    return StructType([*kept, *DOWNLOAD_FIELDS])


def is_retryable(status: str, http_status: int | None) -> bool:
    """A failed row's status (+ HTTP status) -> whether a later attempt may succeed."""
    if status in RETRYABLE_STATUSES:
        return True
    return status == "http_error" and http_status is not None and (http_status == 429 or http_status >= 500)


def nullable(schema: StructType) -> StructType:
    """StructType -> the same with every field nullable (what Parquet gives back on read)."""
    return StructType([StructField(f.name, f.dataType, True, f.metadata) for f in schema.fields])


# --- embed -> embeddings; filter -> dataset + rejected -------------------------------------------

IMAGE_EMBEDDING = "image_embedding"
TEXT_EMBEDDING = "text_embedding"
SIMILARITY = "similarity"
CLIP_MODEL = "clip_model"
REASON = "reason"

# Language groups (LAION-5B's split): thresholds and models are keyed by group
LANGUAGE_GROUPS = ("en", "multi", "nolang")


def language_group(language: str | None) -> str:
    """A language code (CLD3's, or 'nolang' / None) -> 'en', 'multi' or 'nolang'."""
    if language is None or language == "" or language == "nolang":
        return "nolang"
    return "en" if language == "en" else "multi"


# One row per success row of `images` (others are never embedded). A success row the model could
# not take (its stored image does not decode, ...) has null embeddings and says why in
# error_message, so the filter can give that reason instead of losing the row.
EMBEDDINGS = StructType(
    [
        StructField(SAMPLE_ID, LongType(), False),
        StructField(IMAGE_EMBEDDING, ArrayType(FloatType(), False), True),  # L2-normalised
        StructField(TEXT_EMBEDDING, ArrayType(FloatType(), False), True),  # L2-normalised
        StructField(SIMILARITY, FloatType(), True),  # cosine of the two
        StructField(CLIP_MODEL, StringType(), True),  # which embedding space: "MODEL/PRETRAINED"
        StructField(ERROR_MESSAGE, StringType(), True),
    ]
)

# what the filter adds to the rows of images it keeps, and to those it rejects (with the reason:
# download_failed:<status>, not_embedded, below_threshold)
FILTER_FIELDS = [StructField(SIMILARITY, FloatType(), True), StructField(CLIP_MODEL, StringType(), True)]
REJECT_FIELDS = [*FILTER_FIELDS, StructField(REASON, StringType(), False)]


# One row per dataset row (tag): scores only, null where a head is not configured or the row has no
# embedding; taggers names the versioned tagger of each value (architecture/checkpoint hash)
TAGS = StructType(
    [
        StructField(SAMPLE_ID, LongType(), False),
        StructField("punsafe", FloatType(), True),
        StructField("pwatermark", FloatType(), True),
        StructField("aesthetic_score", FloatType(), True),
        StructField("nsfw_zero_shot", StringType(), True),  # UNLIKELY / UNSURE / NSFW (LAION-400M's NSFW column)
        StructField("taggers", MapType(StringType(), StringType()), True),
    ]
)


# --- export: the release's columns, as LAION published them (peers-index-tag-export.md, section 4) ---

# LAION-5B (laion2B-en / -multi / laion1B-nolang joined with their tags): one type per column, exactly
RELEASE_LAION5B = StructType(
    [
        StructField("SAMPLE_ID", LongType(), False),
        StructField("URL", StringType(), False),
        StructField("TEXT", StringType(), True),  # a null caption stays null (hash reads it as '')
        StructField("WIDTH", IntegerType(), True),  # the original image's (LAION's raw metadata had them swapped)
        StructField("HEIGHT", IntegerType(), True),
        StructField("similarity", DoubleType(), True),
        StructField("LANGUAGE", StringType(), True),
        StructField("punsafe", FloatType(), True),
        StructField("pwatermark", FloatType(), True),
        StructField("AESTHETIC_SCORE", FloatType(), True),
        StructField("LICENSE", StringType(), True),  # null where the page had none
        StructField("hash", LongType(), False),  # mmh3.hash64((URL + TEXT).encode())[0]
    ]
)

# LAION-400M (cah_stats_spark.py's columns and order; NSFW = the zero-shot tag)
RELEASE_LAION400M = StructType(
    [
        StructField("SAMPLE_ID", LongType(), False),
        StructField("URL", StringType(), False),
        StructField("TEXT", StringType(), True),
        StructField("HEIGHT", IntegerType(), True),
        StructField("WIDTH", IntegerType(), True),
        StructField("LICENSE", StringType(), True),
        StructField("NSFW", StringType(), True),
        StructField("similarity", DoubleType(), True),
    ]
)

RELEASES = {"laion5b": RELEASE_LAION5B, "laion400m": RELEASE_LAION400M}
