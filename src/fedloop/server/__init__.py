"""HQ: the Flower ServerApp, the SealedMerge strategy and aggregation, the version registry, continuous runs and
the gateway."""
