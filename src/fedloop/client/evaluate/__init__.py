"""Evaluation of a received version on the tenant's own held-out feedback: offline hit rate, KL to the serving
version, forgetting, degeneration, and the choice between the global and the personalised candidate."""
