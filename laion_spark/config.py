"""Stage configuration: defaults (in these dataclasses) <- YAML overlays <- `key.sub=value` overrides.

INPUT  -> a stage name, `--config FILE` paths and `key=value` strings from the command line
OUTPUT -> a frozen `JobConfig` holding the common keys and one frozen dataclass per stage

Every field carries a one-line help text (`laion-spark STAGE --help` prints it) and, where the
value is constrained, its valid choices or minimum. Unknown keys and bad values raise
`ConfigError` naming the key and what is valid, before any Spark session exists.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from laion_spark import __version__


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message names the key."""


def _opt(default, help: str, choices: tuple | None = None, minimum: float | None = None,
         output: bool = True, content: bool = False):
    """A dataclass field with its help line and constraints in the metadata.

    output=False: the key changes how a stage runs (threads, batch sizes, devices, where a table is
    written), not what it writes, so it is left out of the completion marker's output hash (a rerun
    with more threads is not a different table). content=True: the value names files (checkpoints,
    lists) that the hash takes by content, not by path.
    """
    meta = {"help": help, "choices": choices, "min": minimum, "output": output, "content": content}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults: configs are frozen")
    return field(default=default, metadata=meta)


# LAION / img2dataset decompression-bomb limit (half of Pillow's 179 Mpx error), for download and embed
MAX_PIXELS = 89_478_484


@dataclass(frozen=True)
class ExtractConfig:
    """extract: web archives (WARC / ARC / WAT) -> candidates."""

    min_alt_chars: int = _opt(5, "drop alt texts shorter than this (after whitespace collapse)", minimum=0)
    max_alt_chars: int = _opt(2000, "cut alt texts to this many characters", minimum=1)
    max_url_chars: int = _opt(2000, "drop image URLs longer than this (a cut URL is a broken one)", minimum=1)
    allowed_schemes: tuple = _opt(("http", "https"), "image URL schemes kept; data:, javascript: ... are dropped")
    denied_extensions: tuple = _opt((".svg", ".gif"), "image URL path extensions dropped (case-insensitive)")
    lazy_attributes: bool = _opt(False, "also take data-src / srcset when src is missing (LAION took src alone)")
    html_content_types: tuple = _opt(
        ("text/html", "application/xhtml+xml"), "HTTP Content-Types parsed as HTML"
    )
    max_html_bytes: int = _opt(
        8 * 1024 * 1024, "HTML payloads (and WAT JSON records) larger than this are cut before parsing; the "
        "rest of the record is never held: a worker's memory is bounded by this, not by the input", minimum=1024)
    paths_prefix: str = _opt(
        "https://data.commoncrawl.org/", "prefix for the relative paths inside a *.paths(.gz) input"
    )
    retries: int = _opt(5, "re-opens of a remote file after 503/SlowDown/reset before it counts as failed", minimum=0,
                        output=False)
    retry_backoff_s: float = _opt(0.5, "first retry wait in seconds, doubled each time", minimum=0, output=False)
    task_mb: int = _opt(
        32,
        "files are grouped into Spark tasks of about this many MB (a bigger file, or one of unknown "
        "size such as a *.paths.gz entry, is a task of its own)",
        minimum=1, output=False,
    )
    arrow_batch_rows: int = _opt(10000, "rows per Arrow batch emitted by the extract UDF", minimum=1, output=False)
    errors_output: str = _opt("", "URI of the extract_errors table (default: <output>_errors)", output=False)
    retry_from: str = _opt(
        "", "URI of an earlier candidates table: keep the rows of the files it read to their end, extract "
        "again only the files it could not open or read to the end (and input files it lacks)", output=False,
    )


@dataclass(frozen=True)
class DedupeConfig:
    """dedupe: candidates -> pairs with sample_id."""

    key: str = _opt("url_text", "what counts as a duplicate: the (url, text) pair or the url alone",
                    choices=("url_text", "url"))
    previous: str = _opt("", "comma-separated URIs of earlier pairs tables whose pairs are dropped", output=False)
    blocklist: str = _opt("", "URI of a text file, one a line: a URL, or an integer = Spark's xxhash64(url) "
                          "of the URL alone; blank lines and # comments ignored", content=True)
    hash_bits: int = _opt(64, "bits of sample_id kept (tests force collisions with a tiny hash)", minimum=2)
    max_rehash_rounds: int = _opt(4, "re-hash rounds (seeds 1..N) for colliding ids; one still colliding fails the job",
                                  minimum=1)


@dataclass(frozen=True)
class DownloadConfig:
    """download: pairs (any table with url, text, sample_id) -> images, one row per input row."""

    # concurrency and politeness
    threads: int = _opt(256, "most fetches in flight in one Spark task (with adaptive_threads: the ceiling "
                        "the adaptive limit grows to)", minimum=1, output=False)
    adaptive_threads: bool = _opt(
        True, "grow the fetches in flight while throughput grows and the worker's CPU is free, back off "
        "when timeouts and connection errors rise (false: always `threads`)", output=False
    )
    start_threads: int = _opt(32, "fetches in flight a task starts with (adaptive_threads)", minimum=1,
                              output=False)
    per_host_connections: int = _opt(4, "most concurrent requests to one host from one task", minimum=1,
                                     output=False)
    max_bodies_in_flight: int = _opt(
        16, "response bodies one task holds at once (memory <= this x max_body_bytes)", minimum=1, output=False
    )
    image_threads: int = _opt(
        4, "of a task's threads, most checking/resizing images at once (CPU-bound work: more only contend "
        "for the GIL; the others keep fetching)", minimum=1, output=False
    )
    partitions: int = _opt(0, "download tasks (0: input rows / rows_per_task)", minimum=0, output=False)
    rows_per_task: int = _opt(10_000, "rows per download task when partitions=0 (a local master gets at least "
                              "one task per core); each task ends waiting for its slowest fetch, so fewer, "
                              "larger tasks leave cores idle less often", minimum=1, output=False)
    chunk_rows: int = _opt(1_000_000, "rows per committed chunk (<output>_chunks/NNNNN/, each with its marker): "
                           "a run killed in the middle keeps its finished chunks and a rerun fetches only the "
                           "rest; one chunk: written directly", minimum=1, output=False)
    host_rows_per_task: int = _opt(
        2500, "a host with more rows than this is spread (salted) over several tasks", minimum=1, output=False
    )
    max_tasks_per_host: int = _opt(
        8, "most tasks one host is spread over (total per-host load <= this x per_host_connections)", minimum=1,
        output=False,
    )
    arrow_batch_rows: int = _opt(256, "rows per Arrow batch emitted by the download UDF", minimum=1, output=False)
    # HTTP
    connect_timeout_s: float = _opt(10.0, "TCP/TLS connect timeout in seconds", minimum=0.001)
    read_timeout_s: float = _opt(10.0, "longest wait for the next bytes (headers or body) in seconds", minimum=0.001)
    deadline_s: float = _opt(30.0, "total time for one URL: all redirects, headers and body", minimum=0.001)
    max_redirects: int = _opt(5, "redirect hops followed (each hop re-checked by the address guard)", minimum=0)
    max_body_bytes: int = _opt(32 * 1024 * 1024, "bodies larger than this are cut while streaming: too_large",
                               minimum=1)
    retries: int = _opt(1, "extra attempts for timeouts, connection errors, 429 and 5xx", minimum=0)
    retry_backoff_s: float = _opt(1.0, "wait before the first extra attempt, doubled each time", minimum=0)
    retry_after_max_s: float = _opt(
        10.0, "429/503 Retry-After is honoured up to this many seconds; a longer one fails the row", minimum=0
    )
    user_agent: str = _opt(
        f"Mozilla/5.0 (compatible; laion-spark/{__version__})",
        "User-Agent header (download.contact goes inside its parentheses)", output=False,
    )
    user_agent_token: str = _opt(
        "laion-spark", "our crawler token: matched by `X-Robots-Tag: TOKEN: noai` and robots.txt"
    )
    contact: str = _opt("", "contact (URL or e-mail) appended to the User-Agent so site owners can reach you",
                        output=False)
    disallowed_header_directives: tuple = _opt(
        ("noai", "noimageai"), "X-Robots-Tag directives that opt a page out: status opted_out"
    )
    robots_txt: bool = _opt(False, "also honour robots.txt (RFC 9309; fetched once per host and task)")
    # name resolution
    dns_cache_s: float = _opt(300.0, "seconds a host's addresses are kept in the worker's DNS cache (0: no "
                              "cache); every address is still judged by the address guard", minimum=0,
                              output=False)
    dns_negative_cache_s: float = _opt(30.0, "seconds a name that does not resolve is remembered as such",
                                       minimum=0, output=False)
    # address guard
    allowed_networks: tuple = _opt(
        (), "CIDRs let through the address guard (default none: loopback, private, link-local, multicast, "
        "reserved addresses are refused); tests use 127.0.0.1/32"
    )
    connect_to: tuple = _opt(
        (), "HOST[:PORT]=ADDR:PORT: connect there instead (curl --connect-to; HOST * = any); ADDR is still "
        "checked by the address guard",
        output=False,  # routing, as DNS is: the URL names what is fetched (a new port is no new table)
    )
    # image checks (LAION's defaults)
    min_image_bytes: int = _opt(5120, "downloads smaller than this are too_small", minimum=0)
    min_image_side: int = _opt(0, "images whose shorter side is under this are too_small", minimum=0)
    max_pixels: int = _opt(MAX_PIXELS, "decompression-bomb guard, checked from the header: too_many_pixels",
                           minimum=1)
    allowed_formats: tuple = _opt(
        ("jpeg", "png", "webp"), "image formats kept (others of gif, bmp, tiff, ...: unsupported_format)"
    )
    # resize and encode (img2dataset's modes)
    image_size: int = _opt(256, "target side in pixels", minimum=1)
    resize_mode: str = _opt(
        "border", "no | border (fit, pad to a square) | keep_ratio (shorter side = image_size) | "
        "keep_ratio_largest (longer side = image_size) | center_crop",
        choices=("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"),
    )
    resize_only_if_bigger: bool = _opt(False, "never upscale: resize only images larger than the target")
    encode_format: str = _opt("jpg", "stored image format", choices=("jpg", "webp", "png"))
    encode_quality: int = _opt(95, "JPEG/WebP quality", minimum=1)
    keep_exif: bool = _opt(False, "keep the original's EXIF / XMP / IPTC metadata (GPS included) where its "
                           "bytes are stored as downloaded (resize_mode=no); off: stripped, pixels untouched")
    # reruns
    url_col: str = _opt("", "the input's URL column (empty: url, else LAION's URL)", output=True)
    caption_col: str = _opt("", "the input's caption column (empty: text, else LAION's TEXT, else Re-LAION's "
                            "caption)")
    retry_from: str = _opt(
        "", "URI of an earlier images table: keep its successes and final failures, re-download only its "
        "retryable failures (and input rows it lacks)", output=False,
    )


@dataclass(frozen=True)
class ExportSubsets:
    """Subsets of the release: a Spark SQL condition over the release's columns each (empty: not written).
    They remove nothing from the release: LAION-5B shipped every pair with its scores."""

    en: str = _opt("LANGUAGE = 'en'", "laion2B-en: English pairs")
    multi: str = _opt("LANGUAGE IS NOT NULL AND LANGUAGE NOT IN ('en', 'nolang', '')",
                      "laion2B-multi: pairs in another language CLD3 identified")
    nolang: str = _opt("LANGUAGE IS NULL OR LANGUAGE IN ('nolang', '')", "laion1B-nolang: no language identified")
    high_resolution: str = _opt("WIDTH >= 1024 AND HEIGHT >= 1024", "laion-high-resolution: both sides >= 1024")
    aesthetic: str = _opt("AESTHETIC_SCORE >= 6 AND punsafe < 0.5 AND pwatermark < 0.8",
                          "laion-aesthetics 6+ (unscored rows are not in it)")
    research_safe: str = _opt("punsafe IS NOT NULL AND punsafe <= 0.45",
                              "Re-LAION's research-safe: punsafe above 0.45 out (unscored rows too: unknown is not "
                              "safe)")


@dataclass(frozen=True)
class ExportBlocklist:
    """Lists of URLs or hex digests (one a line, # comments): a row matching any is removed from every
    output, with reason blocklisted:<the file's name without extension>."""

    url: tuple = _opt((), "files of URLs (matched as written and normalised)", content=True)
    url_md5: tuple = _opt((), "files of hex MD5s of URLs", content=True)
    url_sha256: tuple = _opt((), "files of hex SHA-256s of URLs", content=True)
    image_md5: tuple = _opt((), "files of hex MD5s of the downloaded image bytes", content=True)
    image_sha1: tuple = _opt((), "files of hex SHA-1s of the downloaded image bytes", content=True)
    image_sha256: tuple = _opt((), "files of hex SHA-256s of the downloaded image bytes", content=True)
    sample_id: tuple = _opt((), "files of the run's sample ids, one integer a line (what a takedown recorded)",
                            content=True)


@dataclass(frozen=True)
class ExportConfig:
    """export: dataset + tags (+ embeddings) -> a LAION-style release (parquet, subsets, webdataset
    shards, .npy shards, a dataset card); or, with format=webdataset, any images table -> shards."""

    format: str = _opt("release", "release: the layout below <output> (laion/, subsets/, webdataset/, emb/, "
                       "README.md); webdataset: shards of the input table directly in <output>",
                       choices=("release", "webdataset"))
    tags: str = _opt("", "URI of the tags table (tag's output; tags=URI); empty: the score columns are null",
                     output=False)
    embeddings: str = _opt("", "URI of the embeddings table (embeddings=URI), for emb/", output=False)
    outputs: tuple = _opt((), "what the release writes, of laion, webdataset, emb (empty: all, emb where "
                          "embeddings are given)")
    columns: str = _opt("laion5b", "the release's columns: LAION-5B's, or LAION-400M's (with NSFW)",
                        choices=("laion5b", "laion400m"))
    where: str = _opt("", "a Spark SQL condition over the dataset's columns; rows failing it are removed "
                      "(reason excluded:<condition>)")
    subsets: ExportSubsets = field(default_factory=ExportSubsets)
    blocklist: ExportBlocklist = field(default_factory=ExportBlocklist)
    removed_output: str = _opt("", "URI of the removed rows with their reason (default: <output>_removed)",
                               output=False)
    samples_per_shard: int = _opt(10000, "rows per webdataset shard (successes go in the tar, every row in the "
                                  "parquet)", minimum=1)
    npy_dtype: str = _opt("float16", "dtype of the .npy shards in emb/", choices=("float16", "float32"))
    npy_rows_per_shard: int = _opt(100000, "rows per .npy shard (about)", minimum=1)


@dataclass(frozen=True)
class SearchConfig:
    """search: an index folder (index's output) + a query -> the top-k rows with their metadata."""

    query: str = _opt("", "the text to search for (query=...)", output=False)
    image: str = _opt("", "a local image file to search with instead of text (image=...)", output=False)
    k: int = _opt(10, "results to return (k=...)", minimum=1, output=False)
    format: str = _opt("table", "table (for people) or jsonl (one JSON object a line, for scripts)",
                       choices=("table", "jsonl"), output=False)
    deduplicate: bool = _opt(True, "drop a result whose embedding is within dedup_threshold of a better one",
                             output=False)
    dedup_threshold: float = _opt(0.94, "cosine above which two results are one image (clip-retrieval's 0.94)",
                                  minimum=0, output=False)
    unique_urls: bool = _opt(True, "drop a result whose URL a better result has", output=False)
    max_punsafe: float = _opt(-1.0, "drop results with punsafe above this (where the metadata has it; < 0: off)",
                              output=False)
    max_pwatermark: float = _opt(-1.0, "drop results with pwatermark above this (where present; < 0: off)",
                                 output=False)
    cache_dir: str = _opt("", "local folder for copies of remote indices and the metadata lookup files "
                          "(default: $LAION_SPARK_CACHE_DIR/search or ~/.cache/laion-spark/search)", output=False)


@dataclass(frozen=True)
class ServeConfig:
    """serve: index folder(s) [+ images] -> an HTTP service (clip-retrieval's /knn-service) and a web page."""

    images: str = _opt("", "images or dataset table whose stored bytes the page shows (images=...); empty: the "
                       "result URLs", output=False)
    host: str = _opt("127.0.0.1", "address to bind (127.0.0.1: this machine only)", output=False)
    port: int = _opt(1234, "port to bind (0: any free one)", minimum=0, output=False)
    max_k: int = _opt(1000, "largest num_images a request may ask for", minimum=1, output=False)
    allow_image_url: bool = _opt(False, "fetch a request's image_url (through download's address guard and "
                                 "limits); off: a search page must not become a way into its network",
                                 output=False)
    allowed_origins: tuple = _opt((), "origins (scheme://host[:port]) besides the server's own whose pages may use "
                                  "it, such as a reverse proxy's public origin; a request from any other Origin "
                                  "is refused", output=False)
    max_body_bytes: int = _opt(8 * 2**20, "largest request body (a base64 image is 4/3 of its bytes); larger: 413 "
                               "before it is read", minimum=1024, output=False)
    max_query_pixels: int = _opt(16_777_216, "largest query image, in pixels from its header (a decoded pixel takes "
                                 "3-4 bytes); larger: 413 before it is decoded", minimum=1, output=False)
    threads: int = _opt(4, "requests worked on at once (searches, image decodes, thumbnails)", minimum=1,
                        output=False)
    max_requests: int = _opt(16, "requests taken at once: reading their body, waiting for a thread or worked on; "
                             "one more gets 503 with Retry-After (memory for bodies <= this x max_body_bytes)",
                             minimum=1, output=False)


@dataclass(frozen=True)
class EmbedGroupModels:
    """Per language group: MODEL,PRETRAINED[,MODEL_CONFIG] replacing embed.model / pretrained / model_config."""

    en: tuple = _opt((), "the model for `en` rows: MODEL,PRETRAINED[,MODEL_CONFIG] (empty: embed.model)",
                     content=True)
    multi: tuple = _opt((), "the model for `multi` rows (every language but en): MODEL,PRETRAINED[,MODEL_CONFIG]",
                        content=True)
    nolang: tuple = _opt((), "the model for `nolang` rows (CLD3 unreliable): MODEL,PRETRAINED[,MODEL_CONFIG]",
                         content=True)


@dataclass(frozen=True)
class EmbedConfig:
    """embed: images -> embeddings (CLIP image + text embeddings of the success rows)."""

    model: str = _opt("ViT-B-32", "open_clip architecture name (open_clip.list_models(), or the name in model_config)")
    pretrained: str = _opt("laion2b_s34b_b79k", "open_clip pretrained tag (needs the hub or its cache) or a local "
                           "checkpoint file (.pt / .bin / .safetensors)", content=True)
    model_config: str = _opt("", "JSON model config of a custom architecture, registered with open_clip under `model`",
                             content=True)
    models: EmbedGroupModels = field(default_factory=EmbedGroupModels)
    model_batch_size: int = _opt(256, "images (and texts) per forward pass", minimum=1, output=False)
    device: str = _opt("auto", "auto: the GPU Spark gave the task, else CPU; cpu; cuda",
                       choices=("auto", "cpu", "cuda"), output=False)
    precision: str = _opt("auto", "auto: fp16 autocast on CUDA, fp32 on CPU", choices=("auto", "fp32", "fp16", "bf16"))
    cpu_threads: int = _opt(0, "torch threads per task on CPU (0: the executor's cores / its concurrent tasks)",
                            minimum=0, output=False)
    arrow_batch_rows: int = _opt(1024, "rows per Arrow batch handed to the embed UDF", minimum=1, output=False)
    partitions: int = _opt(0, "embed tasks (0: success rows / rows_per_task, and at least a local master's cores)",
                           minimum=0, output=False)
    rows_per_task: int = _opt(2048, "success rows per embed task when partitions=0", minimum=1, output=False)
    chunk_rows: int = _opt(1_000_000, "success rows per committed chunk (<output>_chunks/NNNNN/, each with its "
                           "marker): a run killed in the middle keeps its finished chunks and a rerun embeds only "
                           "the rest; one chunk: written directly", minimum=1, output=False)
    max_pixels: int = _opt(MAX_PIXELS, "decompression-bomb guard: stored images with more pixels (from the "
                           "header) are not decoded: too_many_pixels", minimum=1)
    trim_text: bool = _opt(True, "run the text tower without the tokenizer's padding where that gives the same "
                           "features (causal text towers pooled at end-of-text, e.g. every OpenAI/LAION CLIP)",
                           output=False)


@dataclass(frozen=True)
class FilterThresholds:
    """Cosine-similarity thresholds per language group: rows below are rejected (below_threshold)."""

    en: float = _opt(0.28, "threshold for `en` rows (LAION-5B: 0.28 with ViT-B/32)")
    multi: float = _opt(0.26, "threshold for `multi` rows (LAION-5B: 0.26 with a multilingual CLIP)")
    nolang: float = _opt(0.26, "threshold for `nolang` rows (LAION-5B: 0.26)")


@dataclass(frozen=True)
class FilterConfig:
    """filter: images + embeddings -> dataset (kept) + rejected (every other row, with its reason)."""

    embeddings: str = _opt("", "URI of the embeddings table (the embed stage's output; embeddings=URI)", output=False)
    threshold: FilterThresholds = field(default_factory=FilterThresholds)
    rejected_output: str = _opt("", "URI of the rejected table (default: <output>_rejected)", output=False)
    npy: bool = _opt(False, "also write clip-retrieval style img_emb / text_emb .npy shards + metadata parquet")
    npy_output: str = _opt("", "folder of the .npy shards (default: <output>_emb)", output=False)
    npy_dtype: str = _opt("float16", "dtype of the .npy shards", choices=("float16", "float32"))
    npy_rows_per_shard: int = _opt(100000, "rows per .npy shard (about)", minimum=1)


@dataclass(frozen=True)
class IndexConfig:
    """index: embeddings (+ the table of the rows to index) -> a faiss index, its metadata and index_infos.json."""

    dataset: str = _opt("", "URI of the table whose sample_ids are indexed (filter's dataset, export's release; "
                        "dataset=URI); empty: every embeddings row", output=False)
    field: str = _opt("image", "which embedding is indexed", choices=("image", "text"))
    clip_model: str = _opt("", "the embedding space indexed when the table holds several (its clip_model value)")
    per_model: bool = _opt(False, "one index per clip_model, each in <output>/<model name made safe for a path>/")
    max_index_memory: str = _opt("4G", "most bytes search may hold (K/M/G/T = 2^10/2^20/2^30/2^40); the index "
                                 "chosen is the most accurate that fits")
    key: str = _opt("", "a faiss factory key of the IVF family to use instead of the chosen one "
                    "(e.g. IVF4096,SQ8 or OPQ64_512,IVF4096_HNSW32,PQ64x8); several separated by ';' are "
                    "measured on a sample and the one with the best recall is built")
    candidates: int = _opt(2, "index plans that fit the budget measured on a sample before one is built (the "
                           "best recall@10 wins); 1: the most accurate by the rule, unmeasured", minimum=1)
    trial_vectors: int = _opt(10_000, "sampled vectors the candidates are built on and measured with (at least "
                              "the 9,984 a PQ code needs are taken)", minimum=100)
    trial_seconds: float = _opt(60.0, "most seconds one candidate's trial may take; one that runs past it is not "
                                "taken (OPQ's training can take minutes)", minimum=1)
    shards: int = _opt(0, "keep N index shards (<output>/shards/knn_00000.index ...) instead of one merged index",
                       minimum=0)
    ondisk: str = _opt("auto", "inverted lists in knn.ivfdata beside knn.index (memory-mapped by search): auto "
                       "does it above 1G", choices=("auto", "true", "false"))
    target_recall: float = _opt(0.95, "recall@10 the search parameters are tuned to reach", minimum=0)
    max_query_ms: float = _opt(10.0, "p99 time of one query the tuning may spend to reach target_recall",
                               minimum=0.001)
    eval_queries: int = _opt(1000, "held-out vectors sampled from the input that the reported recall (with its 95% "
                             "interval) is measured on: never used to choose the plan or nprobe (each searched "
                             "without itself; at most half the rows)", minimum=1)
    tune_queries: int = _opt(1000, "other sampled vectors the plan and nprobe are chosen on (disjoint from the "
                             "held-out ones)", minimum=1)
    load_clients: int = _opt(8, "concurrent clients (threads) the latency under load is measured with; 0: not "
                             "measured", minimum=0)
    max_train_vectors: int = _opt(1_000_000, "most vectors in the random training sample (at least 39 per list "
                                  "are taken whatever this says)", minimum=1)
    seed: int = _opt(0, "seed of the training and evaluation samples", minimum=0)
    partitions: int = _opt(0, "add tasks (0: vectors / rows_per_task); with shards=N, N", minimum=0, output=False)
    rows_per_task: int = _opt(250_000, "vectors per add task when partitions=0", minimum=1, output=False)
    rejected_output: str = _opt("", "URI of the rows left out with their reason (default: <output>_rejected)",
                                output=False)


@dataclass(frozen=True)
class TagHead:
    """One score head over the CLIP image embedding; an empty architecture leaves its column null."""

    architecture: str = _opt("", "linear (LAION's aesthetic v1), aesthetic_v2, h14_nsfw (clip-retrieval's), mlp "
                             "(ours, and converted autokeras detectors); empty: not configured, a null column",
                             choices=("", "linear", "aesthetic_v2", "h14_nsfw", "mlp"))
    checkpoint: str = _opt("", "PyTorch state dict (file or URI) of the head", content=True)
    dimension: int = _opt(0, "embedding size the head takes (0: read from the checkpoint)", minimum=0)
    clip_model: str = _opt("", "the embedding space it was trained on (a clip_model value; empty: any of its size)")
    l2_normalize: bool = _opt(True, "L2-normalise the embedding first (LAION's heads expect it)")
    sigmoid: bool = _opt(False, "apply a sigmoid to the output (h14_nsfw's module has none; converted autokeras "
                         "detectors need one)")


@dataclass(frozen=True)
class TagZeroShot:
    """nsfw_zero_shot: LAION-400M's NSFW column (UNLIKELY / UNSURE / NSFW) from CLIP prompts and the top-2 rule."""

    enabled: bool = _opt(True, "compute the column (needs the embeddings' CLIP model, named by its _summary.json)")
    prompts: str = _opt("laion400m", "laion400m (as LAION ran it, with its lost comma), laion400m_fixed, or a file: "
                        "neutral prompts, a line ---, then the NSFW prompts", content=True)


@dataclass(frozen=True)
class TagWatermark:
    """pwatermark: an image classifier over the stored image (LAION's: timm efficientnet_b3a, 256 x 256)."""

    architecture: str = _opt("", "timm architecture of the detector (LAION's: efficientnet_b3, timm's name for "
                             "efficientnet_b3a); empty: not configured, a null column")
    checkpoint: str = _opt("", "its PyTorch state dict (file or URI; LAION's model.pt {'weights': ...} too)",
                           content=True)
    image_size: int = _opt(256, "images are resized to this square (no crop), as LAION's detector", minimum=8)
    device: str = _opt("auto", "auto: the GPU Spark gave the task, else CPU; cpu; cuda",
                       choices=("auto", "cpu", "cuda"), output=False)
    batch_size: int = _opt(32, "images per forward pass", minimum=1, output=False)


@dataclass(frozen=True)
class TagConfig:
    """tag: dataset + embeddings -> tags (punsafe, aesthetic_score, pwatermark, nsfw_zero_shot; scores only)."""

    embeddings: str = _opt("", "URI of the embeddings table (embeddings=URI)", output=False)
    dataset: str = _opt("", "URI of filter's dataset (dataset=URI): the rows pwatermark classifies, their image "
                        "bytes read from it; empty: the input is the dataset", output=False)
    punsafe: TagHead = field(default_factory=TagHead)
    aesthetic_score: TagHead = field(default_factory=TagHead)
    pwatermark: TagWatermark = field(default_factory=TagWatermark)
    nsfw_zero_shot: TagZeroShot = field(default_factory=TagZeroShot)
    rows_per_task: int = _opt(100_000, "rows per task of the embedding heads (the watermark detector's tasks follow "
                              "the dataset's file splits)", minimum=1, output=False)


@dataclass(frozen=True)
class DemoConfig:
    """demo: a generated crawl -> extract -> dedupe -> download (loopback images) -> embed + filter (the toy
    CLIP) -> export of the kept pairs, all under `output`."""

    seed: int = _opt(0, "seed of the generated crawl (record ids, dates, page order)", minimum=0)
    rows: int = _opt(8, "rows of pairs shown in the printed report", minimum=0, output=False)
    # the toy shop: 40 scenes keep the demo brisk; a few thousand with noisier alt texts make the
    # filter's effect measurable by `evaluate` (conf/demo-evaluate.yaml)
    toy_images: int = _opt(40, "toy-world scenes in the toy shop (the planted unsafe / watermarked ones come on top)",
                           minimum=1)
    wrong_captions: float = _opt(0.25, "share of the toy scenes whose alt text gets one attribute wrong", minimum=0)
    unrelated_captions: float = _opt(0.0, "share of the toy scenes whose alt text is unrelated (shop boilerplate, "
                                          "another scene's caption)", minimum=0)


@dataclass(frozen=True)
class ReportConfig:
    """report: a run directory -> run_dir/report/index.html (plots, the funnel, sample pairs)."""

    samples: int = _opt(8, "kept and rejected pairs shown with their images (each)", minimum=0, output=False)


@dataclass(frozen=True)
class EvaluateConfig:
    """evaluate: a run directory (or shards) -> a CLIP trained from scratch on the filtered pairs and on
    baselines with open_clip's own trainer, each measured on held-out toy-world images."""

    train: str = _opt("", "webdataset shards (a folder or comma-separated .tar files) to evaluate instead of "
                          "run_dir's export (train=); no baselines then")
    subsets: tuple = _opt(("filtered", "all", "random"), "what to train on: filtered (the release's shards), all "
                                                         "(every downloaded pair), random (as many of them as "
                                                         "filtered holds, drawn with seed)")
    model: str = _opt("", "open_clip model config (.json) or name to train from scratch; empty: the toy CLIP's "
                          "architecture", content=True)
    epochs: int = _opt(4, "training epochs (open_clip_train --epochs)", minimum=1)
    samples_per_epoch: int = _opt(4096, "samples per epoch, the same for every subset: small subsets repeat "
                                        "(open_clip_train --train-num-samples)", minimum=1)
    batch_size: int = _opt(32, "training batch size; a subset smaller than one batch is an error", minimum=1)
    lr: float = _opt(1e-3, "peak learning rate (cosine schedule)", minimum=0)
    warmup: int = _opt(20, "warm-up steps", minimum=0)
    weight_decay: float = _opt(0.1, "AdamW weight decay", minimum=0)
    seed: int = _opt(0, "seed of the model's initialisation, the sample shuffle and the random subset", minimum=0)
    heldout_images: int = _opt(500, "held-out toy-world images (the validation stream, in no demo crawl) to "
                                    "measure on", minimum=1)
    device: str = _opt("auto", "where to train and measure (auto: cuda when there is one)",
                       choices=("auto", "cpu", "cuda"), output=False)
    threads: int = _opt(1, "torch threads of each training (1: bit-for-bit repeatable on CPU)", minimum=1,
                        output=False)
    timeout_s: float = _opt(3600.0, "longest one training may take", minimum=1, output=False)


@dataclass(frozen=True)
class TakedownConfig:
    """takedown: a finished run + a list -> those released rows removed from every output, in place."""

    list: str = _opt("", "the file of URLs or hex digests to remove (list=; export's list format)", content=True)
    kind: str = _opt("url", "what the list holds (kind=)",
                     choices=("url", "url_md5", "url_sha256", "image_md5", "image_sha1", "image_sha256", "sample_id"))


@dataclass(frozen=True)
class PipelineConfig:
    """pipeline: archives -> every stage under run_dir (`run_dir=`), a finished stage skipped on a rerun."""

    rerun_from: str = _opt("", "pipeline.from=STAGE (or from=): rerun this stage and every later one even where "
                           "complete", output=False)
    until: str = _opt("", "stop after this stage (until=)", output=False)
    previous: str = _opt("", "earlier run directories, comma-separated: pairs they hold are not fetched again "
                         "(dedupe.previous = their pairs)", output=False)


@dataclass(frozen=True)
class PlanConfig:
    """plan: a finished run's measured costs (manifest.json, table sizes, index_infos.json) -> what a run of the
    target size would take: core-hours, bytes per table, the index and its memory, wall time on a cluster."""

    target: str = _opt("laion5b", "what to plan for (target=): laion5b (about 50B candidates, LAION's reported "
                       "figure), cc-snapshot (one Common Crawl snapshot's WAT files: plan.wat_files x "
                       "plan.wat_file_bytes), or a number of candidates (2e9, 500M, 10k)")
    executors: int = _opt(300, "workers of the planned cluster (LAION's download: 300)", minimum=1)
    cores_per_executor: int = _opt(2, "cores (vCPUs) per worker (LAION's: 2)", minimum=1)
    gpus: int = _opt(0, "GPUs for embed (0: embed on the CPUs, scaled from this run)", minimum=0)
    download_mbps_per_worker: float = _opt(10.0, "download bandwidth per worker in Mbit/s (LAION's: 10)",
                                           minimum=0.001)
    embed_images_per_s_per_gpu: float = _opt(
        1000.0, "images one GPU embeds per second, decode included (an assumption, not measured: set it from a "
        "run on your card); used when plan.gpus > 0", minimum=0.001)
    run_cores: int = _opt(0, "cores the measured run had (0: this machine's CPUs, right for a local[*] run here); "
                          "core-hours = a step's wall seconds x these cores", minimum=0)
    step_overhead_s: float = _opt(0.0, "seconds of each measured step that do not grow with rows (session and "
                                  "model start), taken off before scaling", minimum=0)
    dedupe_keep_rate: float = _opt(-1.0, "pairs per candidate after dedupe (-1: this run's)", minimum=-1)
    download_success_rate: float = _opt(-1.0, "downloads that succeed, per pair (-1: this run's)", minimum=-1)
    filter_keep_rate: float = _opt(-1.0, "pairs the CLIP filter keeps, per downloaded image (-1: this run's)",
                                   minimum=-1)
    bytes_per_download: int = _opt(0, "bytes fetched per download attempt (0: this run's bytes_downloaded per "
                                   "fetch)", minimum=0)
    wat_files: int = _opt(90_000, "WAT files in one Common Crawl snapshot (target=cc-snapshot; an assumption: "
                          "recent snapshots list 80,000 - 100,000)", minimum=1)
    wat_file_bytes: str = _opt("0.35G", "compressed bytes of one WAT file (target=cc-snapshot; an assumption; "
                               "K/M/G/T = 2^10/2^20/2^30/2^40)")
    candidates_per_wat_file: int = _opt(0, "candidates one WAT file yields (0: this run's candidates per input "
                                        "byte x plan.wat_file_bytes)", minimum=0)
    index_memory: str = _opt("800G", "memory budget of the planned index (default: the 800 GB LAION reported for "
                             "5.85B x 768)")
    dimension: int = _opt(0, "embedding dimension of the planned index (0: the run's index_infos.json)", minimum=0)


@dataclass(frozen=True)
class JobConfig:
    """The keys every stage takes, plus one section per stage."""

    input: str = _opt("", "input URI(s): a table, or archive files / globs / *.paths.gz, comma-separated",
                      output=False)
    output: str = _opt("", "output URI of the stage's main table", output=False)
    mode: str = _opt("error", "what to do when the output exists", choices=("error", "overwrite"), output=False)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    dedupe: DedupeConfig = field(default_factory=DedupeConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    tag: TagConfig = field(default_factory=TagConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    takedown: TakedownConfig = field(default_factory=TakedownConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)


COMMON_KEYS = ("input", "output", "mode")


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _leaf_fields(cls, prefix: str = ""):
    """-> (dotted key, Field, type) for every leaf field of a config dataclass, nested ones included."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _leaf_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, hints[f.name]


def _section_of(stage: str) -> str | None:
    from laion_spark.stages import get

    return get(stage).section


def iter_keys(stage: str | None = None):
    """-> (dotted key, default, help) for the common keys and one stage's section (all if None)."""
    own = _section_of(stage) if stage is not None else None
    for key, f, _ in _leaf_fields(JobConfig):
        section = key.split(".", 1)[0] if "." in key else None
        if stage is not None and section is not None and section != own:
            continue
        yield key, f.default, f.metadata.get("help", "")


def _coerce(key: str, value: Any, typ: Any, meta: dict) -> Any:
    """One raw value (YAML scalar/list or override string) -> the field's type, or ConfigError."""
    try:
        if typ is bool:
            if isinstance(value, bool):
                out = value
            elif str(value).strip().lower() in ("true", "1", "yes", "on"):
                out = True
            elif str(value).strip().lower() in ("false", "0", "no", "off"):
                out = False
            else:
                raise ValueError
        elif typ is int:
            if isinstance(value, bool):
                raise ValueError
            out = int(str(value).strip())
        elif typ is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(str(value).strip())
        elif typ is tuple:
            if isinstance(value, (list, tuple)):
                out = tuple(str(v) for v in value)
            else:
                text = str(value).strip()
                out = tuple(p.strip() for p in text.split(",") if p.strip()) if text else ()
        else:
            if isinstance(value, (list, tuple)):
                value = ",".join(str(v) for v in value)
            out = "" if value is None else str(value)
    except ValueError:
        raise ConfigError(f"bad value for {key}: {value!r} is not a valid {typ.__name__}") from None
    choices = meta.get("choices")
    if choices and out not in choices:
        raise ConfigError(f"bad value for {key}: {out!r}; valid values: {', '.join(choices)}")
    minimum = meta.get("min")
    if minimum is not None and out < minimum:
        raise ConfigError(f"bad value for {key}: {out!r}; must be >= {minimum}")
    return out


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in (data or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def _valid_keys() -> dict[str, tuple[Any, dict]]:
    """dotted key -> (type, metadata) for every leaf key."""
    return {key: (typ, dict(f.metadata)) for key, f, typ in _leaf_fields(JobConfig)}


def _unknown(key: str, valid: dict) -> ConfigError:
    section = key.split(".")[0]
    near = [k for k in valid if k.split(".")[0] == section] or list(valid)
    return ConfigError(f"unknown key {key!r}; valid keys: {', '.join(near)}")


def _build(cls, values: dict[str, Any]):
    """{dotted key relative to cls: coerced value} -> cls(...), nested dataclasses built the same way."""
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            kwargs[head] = value
    for name, sub in nested.items():
        kwargs[name] = _build(hints[name], sub)
    return cls(**kwargs)


def build_config(values: dict[str, Any]) -> JobConfig:
    """Flat {dotted key: raw value} -> JobConfig (validated)."""
    valid = _valid_keys()
    coerced: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in valid:
            raise _unknown(key, valid)
        typ, meta = valid[key]
        coerced[key] = _coerce(key, raw, typ, meta)
    return _build(JobConfig, coerced)


def parse_override(text: str, aliases: dict[str, str] | None = None) -> tuple[str, str]:
    """'key.sub=value' -> (key.sub, value); a stage's short spelling (filter's embeddings=) -> its full key."""
    if "=" not in text:
        raise ConfigError(f"expected key=value, got {text!r} (see --help for the keys)")
    key, value = text.split("=", 1)
    key = key.strip()
    return (aliases or {}).get(key, key), value


def load_config(config_files: list[str] = (), overrides: list[str] = (), stage: str | None = None) -> JobConfig:
    """YAML overlay URIs (in order) + 'key=value' overrides (with `stage`'s short table keys) -> JobConfig."""
    import fsspec

    from laion_spark.stages import get

    aliases = get(stage).aliases if stage else {}

    values: dict[str, Any] = {}
    for uri in config_files:
        try:
            with fsspec.open(uri, "r", encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {uri}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {uri} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {uri} must hold a mapping of keys")
        values.update(_flatten(data))
    for text in overrides:
        key, value = parse_override(text, aliases)
        values[key] = value
    return build_config(values)


def stage_values(cfg: JobConfig, stage: str) -> dict[str, Any]:
    """JobConfig -> flat dict of the common keys and one stage's keys (for summaries)."""
    out = {k: getattr(cfg, k) for k in COMMON_KEYS}
    name = _section_of(stage)
    section = getattr(cfg, name, None) if name else None
    if section is not None:
        out.update(_flatten(dataclasses.asdict(section), f"{name}."))
    return out


def output_values(cfg: JobConfig, stage: str, file_hash=None) -> dict[str, Any]:
    """JobConfig -> the stage's keys that change what it writes (metadata output=True), with the files
    of content keys (checkpoints, lists) given by `file_hash(uri)` instead of their path.

    file_hash: URI -> content hash, or None when the value is not a file (a hub tag, a model name).
    """
    valid = _valid_keys()
    out: dict[str, Any] = {}
    for key, value in stage_values(cfg, stage).items():
        meta = valid[key][1]
        if not meta.get("output", True):
            continue
        if meta.get("content") and file_hash is not None:
            value = _by_content(value, file_hash)
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def _by_content(value, file_hash):
    """A content key's value (a URI, or MODEL,PRETRAINED[,CONFIG] parts) -> each file part as 'sha256:HASH'."""
    parts = list(value) if isinstance(value, tuple) else [value]
    done = []
    for part in parts:
        digest = file_hash(part) if part else None
        done.append(f"sha256:{digest}" if digest else part)
    return tuple(done) if isinstance(value, tuple) else done[0]
