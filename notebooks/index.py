# Databricks notebook source
# MAGIC %md
# MAGIC # laion-spark: index in a notebook
# MAGIC embeddings (+ the rows to index: export's release by default) -> a faiss index per embedding
# MAGIC (image and text, each in `<output>/<field>/`, as a run directory holds them), with its metadata and
# MAGIC `index_infos.json` (the index chosen, its measured recall and latency); then a sample text search
# MAGIC of each. What `laion-spark index` and `laion-spark search` run, on the notebook's `spark` session.
# MAGIC Install the package on the cluster first (`%pip install laion-spark[all]`).
# MAGIC
# MAGIC Settings are the widgets at the top (a job sets them with its parameters): the tables `input`,
# MAGIC `dataset` and `output`, the `fields` indexed, a `query`, and `overrides`, any further `key=value`
# MAGIC settings of the CLI separated by spaces or newlines, quoted as on a command line where a value has
# MAGIC spaces; they come last, so they win.

# COMMAND ----------

import shlex

from laion_spark import cli
from laion_spark.io import read_json

# COMMAND ----------

# DBTITLE 1,Parameters
# Tables: any URI Spark reads and writes (dbfs:/..., /Volumes/..., s3a://...); a run directory's by default.
dbutils.widgets.text("input", "dbfs:/tmp/laion-spark/run/embeddings", "Embeddings (embed's output)")  # noqa: F821
dbutils.widgets.text(  # noqa: F821 (notebook global)
    "dataset", "dbfs:/tmp/laion-spark/run/export/laion", "Rows to index: release or dataset (empty: every row)")
dbutils.widgets.text("output", "dbfs:/tmp/laion-spark/run/index", "Index folder: one sub-folder per field")  # noqa: F821
dbutils.widgets.dropdown("fields", "image,text", ["image,text", "image", "text"], "Embeddings indexed")  # noqa: F821
dbutils.widgets.text("query", "a photo of a cat", "Text searched in each index (empty: no search)")  # noqa: F821
# e.g. index.max_index_memory=16G, index.key=IVF4096,PQ64x8, index.candidates=1 (no trial builds),
# index.target_recall=0.9, mode=overwrite
dbutils.widgets.text("overrides", "", "More key=value settings (laion-spark index --help)")  # noqa: F821

# COMMAND ----------

output = dbutils.widgets.get("output").strip().rstrip("/")  # noqa: F821
common = [f"input={dbutils.widgets.get('input')}", f"dataset={dbutils.widgets.get('dataset')}"]  # noqa: F821
more = shlex.split(dbutils.widgets.get("overrides"))  # noqa: F821
# every field's settings are checked before any is built; an empty input or output is an error here
prepared = {field: cli.prepare("index", [], [*common, f"output={output}/{field}" if output else "output=",
                                             f"index.field={field}", *more])
            for field in dbutils.widgets.get("fields").split(",")}  # noqa: F821
summaries = {}
for field, (cfg, module) in prepared.items():
    summaries[field] = cli.run("index", cfg, module, spark)  # noqa: F821 (notebook global)
    print(module.format_report(summaries[field]))

# COMMAND ----------

# MAGIC %md What each index is and how well it finds the exact nearest neighbours (from its `index_infos.json`):

# COMMAND ----------

measured = []
for field, summary in summaries.items():
    for model in summary["models"].values():
        infos = read_json(f"{model['folder']}/index_infos.json")
        measured.append((field, infos["clip_model"], infos["index_key"], infos["index_param"], infos["nb_vectors"],
                         infos["dimension"], infos["size_bytes"], infos["recall_at_1"], infos["recall_at_10"],
                         infos["latency_ms_p50"], infos["latency_ms_p99"], model["folder"]))
display(spark.createDataFrame(measured, "field string, clip_model string, index_key string, index_param string, "  # noqa: F821
                              "nb_vectors long, dimension long, size_bytes long, recall_at_1 double, "
                              "recall_at_10 double, latency_ms_p50 double, latency_ms_p99 double, folder string"))

# COMMAND ----------

# MAGIC %md The query searched in each index (the CLIP that encodes it is the one `index_infos.json` names):

# COMMAND ----------

query = dbutils.widgets.get("query").strip()  # noqa: F821
if query:
    found = []
    for field, summary in summaries.items():
        for model in summary["models"].values():
            search_cfg, search = cli.prepare("search", [], [f"input={model['folder']}", f"query={query}"])
            for rows in cli.run("search", search_cfg, search)["results"].values():
                found += [(field, rank, row["similarity"], row["sample_id"], row.get("url"), row.get("text"))
                          for rank, row in enumerate(rows, 1)]
    display(spark.createDataFrame(found, "field string, rank int, similarity double, sample_id long, "  # noqa: F821
                                  "url string, text string"))
