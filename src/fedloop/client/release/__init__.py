"""Releasing global versions to the tenant's users: the ramp (canary, widening, promotion), the guard after it,
the user-level sequential test, rollback, and export for an inference server."""
