"""search: an index folder (the index stage's output) + a query -> the top-k rows with their metadata."""
