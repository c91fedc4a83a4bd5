"""What HQ and tenants both use: GM crypto and sealed envelopes, keys, adapters, settings, audit log, row MACs,
and the command line's root."""
