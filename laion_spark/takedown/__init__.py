"""takedown: remove rows from a finished run's release, subsets, shards and indices, in place."""
