"""tag: dataset + embeddings -> tags (punsafe, pwatermark, aesthetic_score, nsfw_zero_shot)."""
