"""embed: images -> embeddings (CLIP image + text embeddings of the success rows, and their cosine).

INPUT  -> an images table (download's output) and an EmbedConfig
OUTPUT -> the embeddings table (schemas.EMBEDDINGS)

model.py (which model, checking and loading it), cache.py (one model per Python worker),
device.py (GPU from the task's resources, else CPU), encode.py (one model batch), udf.py (the
mapInPandas function), transform.py (embed_images), job.py (the stage).
"""
