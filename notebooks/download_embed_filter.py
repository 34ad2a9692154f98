# Databricks notebook source
# MAGIC %md
# MAGIC # laion-spark: download + embed + filter in a notebook
# MAGIC pairs (dedupe's output; `extract_dedupe` writes it) -> images (one row per pair, failures included)
# MAGIC -> CLIP image and text embeddings -> dataset (the pairs whose image and alt text agree) + rejected
# MAGIC (every other images row, with its reason): the library functions that `laion-spark download` /
# MAGIC `embed` / `filter` and `spark-submit.sh` run. Install the package on the cluster first (a wheel
# MAGIC built with `pip wheel .`, or `%pip install laion-spark`); the notebook's `spark` session is used
# MAGIC as it is.
# MAGIC
# MAGIC Settings are the widgets at the top (a job sets them with its parameters): `input`, `run_dir`, the CLIP
# MAGIC model, `device`, `shown_rows`, and `overrides`, any further `key=value` settings of the CLI separated by
# MAGIC spaces or newlines, quoted as on a command line where a value has spaces; they come last, so they win.

# COMMAND ----------

import shlex

from pyspark.sql import functions as F

from laion_spark import schemas as S
from laion_spark.config import load_config
from laion_spark.download.job import task_count as download_task_count
from laion_spark.download.transform import download_images
from laion_spark.embed.job import arrow_batch_rows
from laion_spark.embed.job import task_count as embed_task_count
from laion_spark.embed.model import check_spec, model_specs
from laion_spark.embed.transform import embed_images
from laion_spark.filter import job as filter_job
from laion_spark.filter.transform import dataset_schema, filter_images, rejected_schema
from laion_spark.io import write_table

# COMMAND ----------

# DBTITLE 1,Parameters
# Tables: any URI Spark reads and writes (dbfs:/..., /Volumes/..., s3a://...).
dbutils.widgets.text("input", "dbfs:/tmp/laion-spark/pairs", "Pairs table (dedupe's output)")  # noqa: F821
dbutils.widgets.text(  # noqa: F821 (notebook global)
    "run_dir", "dbfs:/tmp/laion-spark/run1", "Run directory: images, embeddings, dataset, dataset_rejected")
# the CLIP model: an open_clip architecture and pretrained tag (fetched from the Hugging Face Hub, or found
# in the workers' cache), or a checkpoint file such as dbfs:/models/clip/ViT-B-32.pt (each worker copies it
# once); embed.model_config=URI in overrides names the JSON of a custom architecture
dbutils.widgets.text("model", "ViT-B-32", "CLIP model (embed.model)")  # noqa: F821
dbutils.widgets.text("pretrained", "laion2b_s34b_b79k", "CLIP weights: pretrained tag or checkpoint")  # noqa: F821
# auto: the GPU Spark gave the task (GPU clusters: spark.task.resource.gpu.amount), else the CPU;
# cuda: fail where a task has no GPU, rather than embed slowly on the CPU
dbutils.widgets.dropdown("device", "auto", ["auto", "cpu", "cuda"], "Embed device (embed.device)")  # noqa: F821
# the least cosine similarity of image and alt text kept, per language group (LAION-5B's for ViT-B/32);
# mode=overwrite replaces the tables of an earlier run; `laion-spark download --help`, `embed`, `filter`
dbutils.widgets.text(  # noqa: F821
    "overrides", "filter.threshold.en=0.28 filter.threshold.multi=0.26 filter.threshold.nolang=0.26",
    "More key=value settings")
dbutils.widgets.text("shown_rows", "20", "Kept rows displayed at the end")  # noqa: F821

# COMMAND ----------

pairs_uri, run_uri = dbutils.widgets.get("input").strip(), dbutils.widgets.get("run_dir").strip()  # noqa: F821
for name, value in (("input", pairs_uri), ("run_dir", run_uri)):
    if not value:
        raise ValueError(f"the {name} widget is empty: give it at the top of the notebook (or as a job parameter)")
shown_rows = int(dbutils.widgets.get("shown_rows"))  # noqa: F821
run = run_uri.rstrip("/")
images_uri, embeddings_uri, dataset_uri = f"{run}/images", f"{run}/embeddings", f"{run}/dataset"
cfg = load_config([], [f"input={pairs_uri}", f"output={dataset_uri}", f"embeddings={embeddings_uri}",
                       f"embed.model={dbutils.widgets.get('model')}",  # noqa: F821
                       f"embed.pretrained={dbutils.widgets.get('pretrained')}",  # noqa: F821
                       f"embed.device={dbutils.widgets.get('device')}",  # noqa: F821
                       *shlex.split(dbutils.widgets.get("overrides"))], stage="filter")  # noqa: F821
rejected_uri = filter_job.rejected_uri(cfg)  # filter.rejected_output, else <dataset>_rejected
# a model that cannot load (unknown tag, missing checkpoint) fails here, before anything is downloaded
for spec in dict.fromkeys(model_specs(cfg.embed).values()):
    check_spec(spec)

# COMMAND ----------

# MAGIC %md Download: the transform downloads each time it is evaluated, so it is written once and read back.

# COMMAND ----------

pairs = spark.read.parquet(cfg.input)  # noqa: F821 (notebook global)
# as many tasks as the download job gives: download.partitions, else input rows / download.rows_per_task
download_tasks = download_task_count(cfg.download, pairs.count())
downloaded = download_images(pairs, cfg.download, download_tasks)
write_table(downloaded, images_uri, S.images_schema(pairs.schema), "images", cfg.mode)
images = spark.read.parquet(images_uri)  # noqa: F821 (notebook global)
display(images.groupBy(S.STATUS).count().orderBy(S.STATUS))  # noqa: F821 (notebook global)

# COMMAND ----------

success_rows = images.filter(F.col(S.STATUS) == S.SUCCESS).count()
# as many tasks as the embed job gives; Arrow batches of embed.arrow_batch_rows rows while it runs
embed_tasks = embed_task_count(spark, cfg.embed, success_rows)  # noqa: F821 (notebook global)
with arrow_batch_rows(spark, cfg.embed.arrow_batch_rows):  # noqa: F821 (notebook global)
    write_table(embed_images(images, cfg.embed, embed_tasks), embeddings_uri, S.EMBEDDINGS, "embeddings", cfg.mode)

# COMMAND ----------

embeddings = spark.read.parquet(embeddings_uri)  # noqa: F821 (notebook global)
filtered = filter_images(images, embeddings, cfg.filter)
write_table(filtered.dataset, dataset_uri, dataset_schema(images.schema), "dataset", cfg.mode)
write_table(filtered.rejected, rejected_uri, rejected_schema(images.schema), "rejected", cfg.mode)
dataset = spark.read.parquet(dataset_uri)  # noqa: F821 (notebook global)
rejected = spark.read.parquet(rejected_uri)  # noqa: F821 (notebook global)
# every images row is in exactly one of the two tables (the filter job checks the same)
filter_job.check_counts(images.count(), dataset.count(), rejected.count())

# COMMAND ----------

# MAGIC %md The kept pairs with the highest similarity, and the rejected rows per reason
# MAGIC (`download_failed:<status>`, `not_embedded`, `below_threshold`):

# COMMAND ----------

best = dataset.orderBy(F.desc(S.SIMILARITY), S.URL).limit(shown_rows)
display(best.select(S.URL, S.TEXT, S.SIMILARITY, "width", "height", S.CLIP_MODEL))  # noqa: F821 (notebook global)

# COMMAND ----------

display(rejected.groupBy(S.REASON).count().orderBy(F.desc("count"), S.REASON))  # noqa: F821 (notebook global)
