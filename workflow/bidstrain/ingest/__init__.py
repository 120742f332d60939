"""Ingestion: header and sidecar validation of a subject's images (the ingest record each
normalize job writes first) and the manifest of every image and its store."""
