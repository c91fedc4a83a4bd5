"""What HQ and tenants both use: GM crypto and sealed envelopes, keys, adapters, settings and their
overrides, audit log, row MACs, and the `keys`, `certs` and `model` commands."""
