# Databricks notebook source
# MAGIC %md
# MAGIC # laion-spark: extract + dedupe in a notebook
# MAGIC WARC files -> candidates (image URL + alt text) -> pairs: the same library functions that
# MAGIC `laion-spark extract` / `dedupe` and `spark-submit.sh` run. Install the package on the cluster
# MAGIC first (a wheel built with `pip wheel .`, or `%pip install laion-spark`); the notebook's `spark`
# MAGIC session is used as it is. The pairs table it writes is the input of `download_embed_filter`.
# MAGIC
# MAGIC Settings are the widgets at the top (a job sets them with its parameters): `input`, `output`,
# MAGIC `max_files`, and `overrides`, any further `key=value` settings of the CLI separated by spaces or
# MAGIC newlines, quoted as on a command line where a value has spaces; they come last, so they win.

# COMMAND ----------

import shlex

from laion_spark import schemas as S
from laion_spark.config import load_config
from laion_spark.dedupe.transform import dedupe_pairs
from laion_spark.extract.job import errors_uri
from laion_spark.extract.remote import expand_inputs
from laion_spark.extract.transform import extract_candidates
from laion_spark.io import read_table, write_table

# COMMAND ----------

# DBTITLE 1,Parameters
# Tables: any URI Spark writes (dbfs:/..., /Volumes/..., s3a://...); WARC files are read with fsspec.
dbutils.widgets.text(  # noqa: F821 (notebook global)
    "input", "s3://commoncrawl/crawl-data/CC-MAIN-2024-22/warc.paths.gz",
    "WARC files: a Common Crawl paths file (lines relative to extract.paths_prefix), globs, a folder")
dbutils.widgets.text("output", "dbfs:/tmp/laion-spark/pairs", "Pairs table")  # noqa: F821
dbutils.widgets.text("max_files", "4", "Files read: the first few of the list (empty: all)")  # noqa: F821
# e.g. extract.errors_output=URI (unreadable records and files, one row each; default <output>_errors),
# mode=overwrite (replaces the tables of an earlier run); `laion-spark extract --help`, `dedupe --help`
dbutils.widgets.text(  # noqa: F821
    "overrides", "extract.paths_prefix=s3://commoncrawl/",  # on Azure or GCP: https://data.commoncrawl.org/
    "More key=value settings")

# COMMAND ----------

input_uri, output_uri = dbutils.widgets.get("input").strip(), dbutils.widgets.get("output").strip()  # noqa: F821
max_files = dbutils.widgets.get("max_files").strip()  # noqa: F821
for name, value in (("input", input_uri), ("output", output_uri)):
    if not value:
        raise ValueError(f"the {name} widget is empty: give it at the top of the notebook (or as a job parameter)")
if max_files and not max_files.isdigit():
    raise ValueError(f"the max_files widget is {max_files!r}: a whole number, or empty for every file")
cfg = load_config([], [f"input={input_uri}", f"output={output_uri}",
                       *shlex.split(dbutils.widgets.get("overrides"))])  # noqa: F821
# input may be comma-separated, as on the command line
files = expand_inputs(cfg.input.split(","), cfg.extract.paths_prefix)[:int(max_files) if max_files else None]
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
