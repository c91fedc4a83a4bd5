"""The tenant's ClientApp as Flower's Deployment Engine loads it (`fedloop.client.deployed:app`).

The SuperNode's node config (set by `fedloop tenant up`) names the tenant, its
home directory and its settings file; see `fedloop.client.app.deployed_tenant`.
"""

from fedloop.client.app import build_client_app, deployed_tenant

app = build_client_app(deployed_tenant)
