"""fedloop: federated, on-premise LoRA fine-tuning from users' accept / edit / reject feedback on drafted replies.

`shared` (both sides: crypto, envelopes, keys, adapters, settings, the command line's root), `client` (a tenant:
ingestion, privacy, store, curation, training, evaluation, release, serving), `server` (HQ: Flower ServerApp,
aggregation, version registry), `simulation` (a product that runs HQ beside simulated tenants), `proto` (gRPC).
"""
