# Databricks notebook source
# MAGIC %md
# MAGIC # laion-spark: takedown in a notebook
# MAGIC A finished run + a list of URLs or hashes (removal requests) -> those rows removed from its release,
# MAGIC subsets, webdataset and .npy shards and both indices, in place: only the files that hold them are
# MAGIC rewritten, every other file (and every stage's marker) stays as it was. The rows are appended to
# MAGIC `export_removed` and the takedown is recorded in `manifest.json`, so a later pipeline run cannot
# MAGIC release them again. What `laion-spark takedown` runs, on the notebook's `spark` session. Install the
# MAGIC package on the cluster first (`%pip install laion-spark[all]`).
# MAGIC
# MAGIC Settings are the widgets at the top (a job sets them with its parameters): `run_dir`, `list`, `kind`,
# MAGIC and `overrides`, any further `key=value` settings of the CLI separated by spaces or newlines, quoted as
# MAGIC on a command line where a value has spaces; they come last, so they win.

# COMMAND ----------

import shlex

from laion_spark import cli
from laion_spark.export.blocklist import KINDS
from laion_spark.pipeline.plan import table_uris

# COMMAND ----------

# DBTITLE 1,Parameters
dbutils.widgets.text("run_dir", "dbfs:/tmp/laion-spark/run", "Run directory (a finished pipeline run)")  # noqa: F821
dbutils.widgets.text("list", "", "File of URLs or hex digests, one a line")  # noqa: F821
dbutils.widgets.dropdown(  # noqa: F821 (notebook global)
    "kind", "url", list(KINDS), "What the list holds: URLs, or hex digests of URLs or image bytes")
dbutils.widgets.text("overrides", "", "More key=value settings (laion-spark takedown --help)")  # noqa: F821

# COMMAND ----------

overrides = [f"run_dir={dbutils.widgets.get('run_dir')}", f"list={dbutils.widgets.get('list')}",  # noqa: F821
             f"kind={dbutils.widgets.get('kind')}", *shlex.split(dbutils.widgets.get("overrides"))]  # noqa: F821
# an empty run_dir or list is an error here, as is a run without an export
cfg, module = cli.prepare("takedown", [], overrides)
summary = cli.run("takedown", cfg, module, spark)  # noqa: F821 (notebook global)
print(module.format_report(summary))

# COMMAND ----------

# MAGIC %md The files rewritten and the rows each lost; then the release as it is now:

# COMMAND ----------

rewritten = [(f["file"], f["removed"]) for f in summary["files"]]
display(spark.createDataFrame(rewritten, "file string, removed long"))  # noqa: F821

# COMMAND ----------

display(spark.read.parquet(table_uris(cfg.input)["release"]).orderBy("SAMPLE_ID").limit(20))  # noqa: F821
