"""HQ side of fedloop: Flower ServerApp, aggregation strategy and version registry."""
