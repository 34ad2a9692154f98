# Databricks notebook source
# MAGIC %md
# MAGIC # laion-spark: the whole pipeline in a notebook
# MAGIC Web archives -> extract -> dedupe -> download -> embed -> filter -> tag -> export -> index (image and
# MAGIC text) -> report, every table under one run directory: what `laion-spark pipeline` and
# MAGIC `./spark-submit.sh pipeline` run, on the notebook's `spark` session. Run it again after a change
# MAGIC (a threshold, a hash list) and only the steps that read what changed run again; a step that was
# MAGIC cut off is redone. Install the package on the cluster first (`%pip install laion-spark[all]`, or a
# MAGIC wheel built with `pip wheel .`). One notebook per stage sits beside this one.
# MAGIC
# MAGIC Settings are the widgets at the top (a job sets them with its parameters): `input` and `run_dir`,
# MAGIC and `overrides`, any further `key=value` settings of the CLI separated by spaces or newlines, quoted as
# MAGIC on a command line where a value has spaces (`export.where="LANGUAGE = 'en'"`); they come last, so they win.

# COMMAND ----------

import json
import shlex

from laion_spark import cli
from laion_spark.io import read_json

# COMMAND ----------

# DBTITLE 1,Parameters
dbutils.widgets.text(  # noqa: F821 (notebook global)
    "input", "s3://commoncrawl/crawl-data/CC-MAIN-2024-22/warc.paths.gz",
    "Web archives: WARC / WAT files, globs, *.paths.gz (comma-separated)")
dbutils.widgets.text("run_dir", "dbfs:/tmp/laion-spark/run", "Run directory: every table, the manifest, the report")  # noqa: F821
# e.g. embed.model=ViT-B-32 embed.pretrained=laion2b_s34b_b79k (open_clip names, or checkpoint files);
# export.blocklist.url=dbfs:/lists/takedowns.txt (removal requests: export + index rerun only);
# pipeline.from=filter (force a rerun from a stage); pipeline.until=embed (stop after one)
dbutils.widgets.text(  # noqa: F821
    "overrides", "extract.paths_prefix=s3://commoncrawl/",  # on Azure or GCP: https://data.commoncrawl.org/
    "More key=value settings (laion-spark pipeline --help)")

# COMMAND ----------

overrides = [f"input={dbutils.widgets.get('input')}", f"run_dir={dbutils.widgets.get('run_dir')}",  # noqa: F821
             *shlex.split(dbutils.widgets.get("overrides"))]  # noqa: F821
# an empty input or run_dir is an error here ("input is required: ..."), before anything runs
cfg, module = cli.prepare("pipeline", [], overrides)
summary = cli.run("pipeline", cfg, module, spark)  # noqa: F821 (notebook global)
print(module.format_report(summary))

# COMMAND ----------

# what each step did, and why (run_dir/manifest.json)
manifest = read_json(summary["manifest"])
steps = [(s["step"], s["action"], s["why"], s["seconds"], json.dumps(s["counts"], sort_keys=True))
         for s in manifest["steps"]]
display(spark.createDataFrame(steps, "step string, action string, why string, seconds double, counts string"))  # noqa: F821

# COMMAND ----------

# the release (LAION-5B's columns), its first rows; the report page is run_dir/report/index.html
display(spark.read.parquet(summary["tables"]["release"]).limit(20))  # noqa: F821
