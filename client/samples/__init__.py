"""Curation: sample weights, near-duplicate merging, poisoning guard, pools, derived signals."""
