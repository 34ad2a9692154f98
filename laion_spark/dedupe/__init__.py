"""Dedupe stage: candidates -> pairs (exact duplicates, earlier pairs and blocked URLs removed; sample_id set)."""
