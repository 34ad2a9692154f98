"""pipeline: web archives -> every stage under one run directory, resumable between stages."""
