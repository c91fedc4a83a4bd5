"""A tenant: ingestion, privacy, the encrypted store, curation, local training, gates, release, draft serving and
the Flower ClientApp."""
