"""The simulation: HQ and simulated tenants in Flower's Simulation Engine, each tenant with a simulated product.

This is the one package that sees both sides (it runs HQ's ServerApp beside the tenants' ClientApps); the
import-linter contracts in pyproject.toml allow nothing else in `fedloop.client` to import `fedloop.server`.
"""
