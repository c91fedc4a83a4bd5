"""The simulation: HQ and simulated tenants in Flower's Simulation Engine, each tenant with a simulated product.

A product that uses both sides (it runs HQ's ServerApp beside the tenants' ClientApps, and reaches each tenant
through its draft service as a real product does); neither side imports it (import-linter, pyproject.toml).
"""
