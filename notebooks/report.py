# Databricks notebook source
# MAGIC %md
# MAGIC # laion-spark: report in a notebook
# MAGIC A run directory -> `<run_dir>/report/index.html`: the funnel with every rejection reason, plots and
# MAGIC sample kept and rejected pairs, what `laion-spark report` runs, on the notebook's `spark` session.
# MAGIC The page is a folder (index.html, plots/, samples/): open it from the workspace's files, or copy it
# MAGIC out (`dbutils.fs.cp(..., recurse=True)`). Install the package on the cluster first
# MAGIC (`%pip install laion-spark[all]`).
# MAGIC
# MAGIC Settings are the widgets at the top (a job sets them with its parameters): `run_dir`, `output`, and
# MAGIC `overrides`, any further `key=value` settings of the CLI separated by spaces or newlines, quoted as on a
# MAGIC command line where a value has spaces; they come last, so they win.

# COMMAND ----------

import shlex

from laion_spark import cli

# COMMAND ----------

# DBTITLE 1,Parameters
dbutils.widgets.text("run_dir", "dbfs:/tmp/laion-spark/run", "Run directory (pipeline's, or stages' by hand)")  # noqa: F821
dbutils.widgets.text("output", "", "Report folder (empty: <run_dir>/report, rewritten)")  # noqa: F821
# e.g. report.samples=16 (kept and rejected pairs shown with their images, each)
dbutils.widgets.text("overrides", "", "More key=value settings (laion-spark report --help)")  # noqa: F821

# COMMAND ----------

overrides = [f"run_dir={dbutils.widgets.get('run_dir')}", f"output={dbutils.widgets.get('output')}",  # noqa: F821
             *shlex.split(dbutils.widgets.get("overrides"))]  # noqa: F821
# an empty run_dir is an error here ("run_dir is required: ..."), as is one that does not exist
cfg, module = cli.prepare("report", [], overrides)
summary = cli.run("report", cfg, module, spark)  # noqa: F821 (notebook global)
print(module.format_report(summary))
print(f"the report: {summary['report']}")

# COMMAND ----------

# MAGIC %md The funnel: rows at each step of the run (the report shows what each step removed, and why):

# COMMAND ----------

display(spark.createDataFrame(list(summary["funnel"].items()), "table string, rows long"))  # noqa: F821
