"""Extract stage: WARC records -> image URL + alt-text candidates (row logic and transforms)."""
