"""Artifact store (local folder or S3), key layout, sources and the Parquet catalog."""
