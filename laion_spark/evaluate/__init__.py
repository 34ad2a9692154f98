"""evaluate: train a CLIP on a run's exported shards with open_clip's own trainer, and measure it."""
