"""Feedback ingestion: validation, the pipeline from event to sample, its runtime, the gRPC service and the recorder."""
