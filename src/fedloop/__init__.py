"""fedloop: federated, on-premise LoRA fine-tuning from users' accept / edit / reject feedback on drafted replies.

`cli` (the command line's root, the one module that sees every side), `shared` (both sides: crypto, envelopes,
keys, adapters, settings), `client` (a tenant: ingestion, privacy, store, curation, training, evaluation,
release, serving), `server` (HQ: Flower ServerApp, aggregation, version registry), `simulation` (a product that
runs HQ beside simulated tenants), `proto` (gRPC).
"""
