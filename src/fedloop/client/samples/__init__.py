"""Curation: sample weights, near-duplicate clusters and the held-out slice, poisoning guard, pools and review,
derived signals."""
