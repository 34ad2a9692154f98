# Databricks notebook source
# MAGIC %md
# MAGIC # laion-spark: search in a notebook
# MAGIC An index folder (the index stage's output; a folder of several searches each) + a text, or an image
# MAGIC file -> the top-k rows with their metadata, what `laion-spark search` runs. The CLIP that encodes
# MAGIC the query is the one `index_infos.json` names. Runs on the driver: no Spark job. Install the package
# MAGIC on the cluster first (`%pip install laion-spark[all]`).
# MAGIC
# MAGIC Settings are the widgets at the top (a job sets them with its parameters): `input`, `query` (or
# MAGIC `image`), `k`, and `overrides`, any further `key=value` settings of the CLI separated by spaces or
# MAGIC newlines, quoted as on a command line where a value has spaces; they come last, so they win.

# COMMAND ----------

import shlex

from laion_spark import cli

# COMMAND ----------

# DBTITLE 1,Parameters
dbutils.widgets.text("input", "dbfs:/tmp/laion-spark/run/index/image", "Index folder (index's output)")  # noqa: F821
dbutils.widgets.text("query", "a photo of a cat", "Text searched for")  # noqa: F821
dbutils.widgets.text("image", "", "Or an image file searched with (a local path, /dbfs/...)")  # noqa: F821
dbutils.widgets.text("k", "10", "Results per index")  # noqa: F821
# e.g. search.max_punsafe=0.5 search.deduplicate=false search.cache_dir=/local_disk0/search
dbutils.widgets.text("overrides", "", "More key=value settings (laion-spark search --help)")  # noqa: F821

# COMMAND ----------

overrides = [f"input={dbutils.widgets.get('input')}", f"query={dbutils.widgets.get('query')}",  # noqa: F821
             f"image={dbutils.widgets.get('image')}", f"k={dbutils.widgets.get('k')}",  # noqa: F821
             *shlex.split(dbutils.widgets.get("overrides"))]  # noqa: F821
# an empty input is an error here ("input is required: ..."), as is both or neither of query and image
cfg, module = cli.prepare("search", [], overrides)
summary = cli.run("search", cfg, module)

# COMMAND ----------

found = [(name, rank, row["similarity"], row["sample_id"], row.get("url"), row.get("text"))
         for name, rows in summary["results"].items() for rank, row in enumerate(rows, 1)]
display(spark.createDataFrame(found, "index string, rank int, similarity double, sample_id long, "  # noqa: F821
                              "url string, text string"))
