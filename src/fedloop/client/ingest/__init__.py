"""Feedback ingestion: validation, the pipeline from event to sample, the gRPC service."""
