# Databricks notebook source
# MAGIC %md
# MAGIC # laion-spark: tag in a notebook
# MAGIC dataset + embeddings -> tags: one row per dataset row with punsafe, pwatermark, aesthetic_score and
# MAGIC nsfw_zero_shot (scores only; export applies the thresholds), what `laion-spark tag` and
# MAGIC `./spark-submit.sh tag` run, on the notebook's `spark` session. A head left unconfigured gives a null
# MAGIC column. Install the package on the cluster first (`%pip install laion-spark[all]`).
# MAGIC
# MAGIC Settings are the widgets at the top (a job sets them with its parameters): the tables `input`,
# MAGIC `embeddings` and `output`, and `overrides`, any further `key=value` settings of the CLI separated by
# MAGIC spaces or newlines, quoted as on a command line where a value has spaces; they come last, so they win.

# COMMAND ----------

import shlex

from pyspark.sql import functions as F

from laion_spark import cli
from laion_spark.report.data import histogram
from laion_spark.tag import transform as TT

# COMMAND ----------

# DBTITLE 1,Parameters
# Tables: any URI Spark reads and writes (dbfs:/..., /Volumes/..., s3a://...); a run directory's by default.
dbutils.widgets.text("input", "dbfs:/tmp/laion-spark/run/dataset", "Dataset (filter's output)")  # noqa: F821
dbutils.widgets.text("embeddings", "dbfs:/tmp/laion-spark/run/embeddings", "Embeddings (embed's output)")  # noqa: F821
dbutils.widgets.text("output", "dbfs:/tmp/laion-spark/run/tags", "Tags table written")  # noqa: F821
# the heads, e.g. tag.punsafe.architecture=h14_nsfw tag.punsafe.checkpoint=dbfs:/models/nsfw.pt
# tag.aesthetic_score.architecture=linear tag.aesthetic_score.checkpoint=... tag.pwatermark.architecture=
# efficientnet_b3 tag.pwatermark.checkpoint=...; tag.nsfw_zero_shot.enabled=false; mode=overwrite
dbutils.widgets.text("overrides", "", "More key=value settings (laion-spark tag --help)")  # noqa: F821

# COMMAND ----------

overrides = [f"input={dbutils.widgets.get('input')}", f"embeddings={dbutils.widgets.get('embeddings')}",  # noqa: F821
             f"output={dbutils.widgets.get('output')}", *shlex.split(dbutils.widgets.get("overrides"))]  # noqa: F821
# an empty table widget is an error here ("input is required: ..."), as is a head whose checkpoint does not load
cfg, module = cli.prepare("tag", [], overrides)
summary = cli.run("tag", cfg, module, spark)  # noqa: F821 (notebook global)
print(module.format_report(summary))

# COMMAND ----------

# MAGIC %md The first rows of the tags table, each score with the tagger (and checkpoint hash) that gave it:

# COMMAND ----------

tags = spark.read.parquet(cfg.output)  # noqa: F821 (notebook global)
display(tags.orderBy("sample_id").limit(20))  # noqa: F821

# COMMAND ----------

# MAGIC %md Each score's histogram (rows per bin, the bins of the run report's plots; null scores left out),
# MAGIC and the zero-shot NSFW categories:

# COMMAND ----------

ranges = {TT.PUNSAFE: (0.0, 1.0), TT.PWATERMARK: (0.0, 1.0), TT.AESTHETIC: (0.0, 10.0)}
bins = []
for column, (low, high) in ranges.items():
    hist = histogram(tags, column, low, high, 20)
    edges = hist["edges"]
    bins += [(column, edges[i], edges[i + 1], n) for i, n in enumerate(hist["counts"].get("all", []))]
display(spark.createDataFrame(bins, "score string, low double, high double, rows long"))  # noqa: F821

# COMMAND ----------

display(tags.groupBy(TT.NSFW_ZERO_SHOT).count().orderBy(F.desc("count"), TT.NSFW_ZERO_SHOT))  # noqa: F821
