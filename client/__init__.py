"""Tenant side of fedloop: feedback store, privacy, local training, Flower ClientApp."""
