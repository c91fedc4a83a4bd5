"""Evaluation of adapter versions: hit rate with simulated users, drift (KL) and forgetting gates."""
