"""filter: images + embeddings -> dataset (kept) + rejected (with the reason), and optional .npy shards."""
