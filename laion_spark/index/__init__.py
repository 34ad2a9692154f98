"""index: embeddings -> faiss kNN index (plan.py chooses, build.py does the faiss work, tune.py measures,
transform.py selects and checks rows, job.py runs it on Spark)."""
