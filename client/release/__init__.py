"""Tenant-side release of global versions: canary routing, promotion and rollback."""
