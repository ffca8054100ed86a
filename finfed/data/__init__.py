"""Data: reading a site's records (CSV, JSONL, Parquet, QA files), finfed's generated default data, and
partitioning records into sites."""
