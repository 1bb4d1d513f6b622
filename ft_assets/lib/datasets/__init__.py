"""datasets/<dataset>: raw rows cleaned, redacted, deduplicated and split in DuckDB SQL (cleaning, redaction)."""
