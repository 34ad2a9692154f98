# Databricks notebook source
# MAGIC %md
# MAGIC # laion-spark: export in a notebook
# MAGIC dataset + tags (+ embeddings) -> a LAION-style release: `<output>/laion/` (LAION-5B's columns),
# MAGIC `subsets/`, `webdataset/` shards, `emb/` .npy shards, a `README.md` dataset card, and
# MAGIC `<output>_removed` (every dataset row not released, with its reason: blocklists, `export.where`).
# MAGIC What `laion-spark export` and `./spark-submit.sh export` run, on the notebook's `spark` session.
# MAGIC Install the package on the cluster first (`%pip install laion-spark[all]`).
# MAGIC
# MAGIC Settings are the widgets at the top (a job sets them with its parameters): the tables `input`, `tags`,
# MAGIC `embeddings` and `output`, and `overrides`, any further `key=value` settings of the CLI separated by
# MAGIC spaces or newlines, quoted as on a command line where a value has spaces; they come last, so they win.

# COMMAND ----------

import shlex

from pyspark.sql import functions as F

from laion_spark import cli
from laion_spark import schemas as S

# COMMAND ----------

# DBTITLE 1,Parameters
# Tables: any URI Spark reads and writes (dbfs:/..., /Volumes/..., s3a://...); a run directory's by default.
dbutils.widgets.text("input", "dbfs:/tmp/laion-spark/run/dataset", "Dataset (filter's output)")  # noqa: F821
dbutils.widgets.text("tags", "dbfs:/tmp/laion-spark/run/tags", "Tags (empty: null scores)")  # noqa: F821
dbutils.widgets.text(  # noqa: F821 (notebook global)
    "embeddings", "dbfs:/tmp/laion-spark/run/embeddings", "Embeddings, for emb/ (empty: no .npy shards)")
dbutils.widgets.text("output", "dbfs:/tmp/laion-spark/run/export", "Export folder written")  # noqa: F821
# e.g. export.blocklist.url=dbfs:/lists/takedowns.txt (and url_md5, image_sha256, ...: one file a list),
# export.outputs=laion (the parquet release alone), export.columns=laion400m,
# export.where="LANGUAGE = 'en'", mode=overwrite
dbutils.widgets.text("overrides", "", "More key=value settings (laion-spark export --help)")  # noqa: F821

# COMMAND ----------

overrides = [f"input={dbutils.widgets.get('input')}", f"tags={dbutils.widgets.get('tags')}",  # noqa: F821
             f"embeddings={dbutils.widgets.get('embeddings')}", f"output={dbutils.widgets.get('output')}",  # noqa: F821
             *shlex.split(dbutils.widgets.get("overrides"))]  # noqa: F821
# an empty input or output is an error here ("input is required: ..."), as is a blocklist that does not parse
cfg, module = cli.prepare("export", [], overrides)
summary = cli.run("export", cfg, module, spark)  # noqa: F821 (notebook global)
print(module.format_report(summary))
print(f"dataset card: {summary['card']}")

# COMMAND ----------

# MAGIC %md The release's first rows, and its rows per subset:

# COMMAND ----------

release = spark.read.parquet(summary["release"])  # noqa: F821 (notebook global)
display(release.orderBy("SAMPLE_ID").limit(20))  # noqa: F821

# COMMAND ----------

subsets = [(name, s["rows"], s["where"]) for name, s in summary["subsets"].items()]
display(spark.createDataFrame(subsets, "subset string, rows long, `where` string"))  # noqa: F821

# COMMAND ----------

# MAGIC %md The dataset rows not released, per reason (`blocklisted:<list>`, `excluded:<where>`):

# COMMAND ----------

removed = spark.read.parquet(summary["removed_output"])  # noqa: F821
display(removed.groupBy(S.REASON).count().orderBy(F.desc("count"), S.REASON))  # noqa: F821
