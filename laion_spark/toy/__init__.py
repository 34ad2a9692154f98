"""A toy CLIP for tests and the demo: synthetic world (world.py) -> trained open_clip checkpoint (train.py)."""
