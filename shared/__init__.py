"""Code used by HQ and tenants: GM crypto envelope, keys, adapter (de)serialisation, CLI."""
