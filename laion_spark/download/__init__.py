"""download: pairs -> images (fetch, guard, image checks, resize) as a mapInPandas UDF."""
