# Databricks notebook source
# MAGIC %md
# MAGIC # laion-spark: extract + dedupe in a notebook
# MAGIC WARC files -> candidates (image URL + alt text) -> pairs: the same library functions that
# MAGIC `laion-spark extract` / `dedupe` and `spark-submit.sh` run. Install the package on the cluster
# MAGIC first (a wheel built with `pip wheel .`, or `%pip install laion-spark`); the notebook's `spark`
# MAGIC session is used as it is. The pairs table it writes is the input of `download_embed_filter`.
# MAGIC
# MAGIC Every setting is in the **Parameters** cell, as plain assignments. A test or a job runs this
# MAGIC notebook with its own values by assigning them right after that cell, the way papermill injects
# MAGIC parameters (tests/test_notebooks.py does so); so no value there is computed from another.

# COMMAND ----------

from laion_spark import schemas as S
from laion_spark.config import load_config
from laion_spark.dedupe.transform import dedupe_pairs
from laion_spark.extract.job import errors_uri
from laion_spark.extract.remote import expand_inputs
from laion_spark.extract.transform import extract_candidates
from laion_spark.io import read_table, write_table

# COMMAND ----------

# DBTITLE 1,Parameters
# The same key=value settings as the CLI (`laion-spark extract --help`, `laion-spark dedupe --help`).
# Tables: any URI Spark writes (dbfs:/..., /Volumes/..., s3a://...); WARC files are read with fsspec.
overrides = [
    # a Common Crawl paths file (its lines are relative to extract.paths_prefix), a glob or a folder of WARC files
    "input=s3://commoncrawl/crawl-data/CC-MAIN-2024-22/warc.paths.gz",
    "extract.paths_prefix=s3://commoncrawl/",  # on Azure or GCP: https://data.commoncrawl.org/
    "output=dbfs:/tmp/laion-spark/pairs",  # the pairs table
    "extract.errors_output=dbfs:/tmp/laion-spark/extract_errors",  # unreadable records and files, one row each
    # "mode=overwrite",  # replaces the tables of an earlier run
]
max_files = 4  # a try-out: the first few files of the list (None: all of them)

# COMMAND ----------

cfg = load_config([], overrides)
# input may be comma-separated, as on the command line
files = expand_inputs(cfg.input.split(","), cfg.extract.paths_prefix)[:max_files]
if not files:
    raise ValueError(f"no input files match {cfg.input}")

# COMMAND ----------

# one task per file: a Common Crawl WARC file is about 1 GB
paths = spark.createDataFrame([(f,) for f in files], f"{S.SOURCE_URI} string")  # noqa: F821 (notebook global)
out = extract_candidates(paths, cfg.extract, num_partitions=len(files))
pairs = dedupe_pairs(out.candidates, cfg.dedupe).pairs

# COMMAND ----------

out.raw.persist()  # one parse of the files feeds both tables, as in the extract job
try:
    write_table(pairs, cfg.output, S.PAIRS, "pairs", cfg.mode)
    write_table(out.errors, errors_uri(cfg), S.EXTRACT_ERRORS, "extract_errors", cfg.mode)
finally:
    out.raw.unpersist()

# COMMAND ----------

# MAGIC %md A few pairs, read back from the written table (showing the lazy `pairs` would parse the files again):

# COMMAND ----------

display(read_table(spark, cfg.output, S.PAIRS).limit(20))  # noqa: F821 (notebook globals)

# COMMAND ----------

# MAGIC %md Errors of the run (unreadable records, damaged files), one row each:

# COMMAND ----------

display(read_table(spark, errors_uri(cfg), S.EXTRACT_ERRORS))  # noqa: F821 (notebook globals)
