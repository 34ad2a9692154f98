# Databricks notebook source
# MAGIC %md
# MAGIC # laion-spark: extract + dedupe in a notebook
# MAGIC The same library functions that `laion-spark extract` / `dedupe` and `spark-submit.sh` run.
# MAGIC Install the package on the cluster first (a wheel built with `pip wheel .`, or
# MAGIC `%pip install laion-spark`); the notebook's `spark` session is used as it is.

# COMMAND ----------

from laion_spark import schemas as S
from laion_spark.config import load_config
from laion_spark.dedupe.transform import dedupe_pairs
from laion_spark.extract.remote import expand_inputs
from laion_spark.extract.transform import extract_candidates

# Common Crawl WARC paths file (a few files for a try-out); any fsspec URI works
cfg = load_config([], [
    "input=s3://commoncrawl/crawl-data/CC-MAIN-2024-22/warc.paths.gz",
    "output=dbfs:/tmp/laion-spark/candidates",
    "extract.paths_prefix=s3://commoncrawl/",
])
files = expand_inputs([cfg.input], cfg.extract.paths_prefix)[:4]

# COMMAND ----------

paths = spark.createDataFrame([(f,) for f in files], f"{S.SOURCE_URI} string")  # noqa: F821 (notebook global)
out = extract_candidates(paths, cfg.extract, num_partitions=len(files))
pairs = dedupe_pairs(out.candidates, cfg.dedupe).pairs
display(pairs.limit(20))  # noqa: F821 (notebook global)

# COMMAND ----------

# MAGIC %md Errors of the run (unreadable records, damaged files), one row each:

# COMMAND ----------

display(out.errors)  # noqa: F821 (notebook global)
