"""export: images -> webdataset shards (and, later, LAION-5B parquet and .npy)."""
