"""The tenant's ClientApp as Flower's Simulation Engine runs it: simulated tenants, each with a simulated product.

Each node plays the tenant of its partition id, all in one run directory.
Before a round trains, the tenant's simulated product sends that round's users
through the tenant's draft service (`fedloop.simulation.product`), so the
feedback the tenant trains on arrives the way a real product's does.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from flwr.app import Context
from flwr.clientapp import ClientApp

from fedloop.client.app import RoundTraffic, TenantResolver, build_client_app, tenant_at
from fedloop.client.serve.drafts import DraftService
from fedloop.client.serve.transformers_engine import TransformersEngine
from fedloop.client.tenant import Tenant
from fedloop.client.tenant_settings import TenantSection, TenantSettings, load_tenant_settings
from fedloop.shared.logs import configure_logging
from fedloop.shared.run_layout import RunLayout
from fedloop.shared.settings import Settings
from fedloop.simulation.product import SimulatedProduct, TenantTraffic, UserJudgement


def simulated_tenant_settings(settings: Settings, layout: RunLayout, name: str) -> TenantSettings:
    """A simulated tenant's own settings: `simulation.tenant_config` (or the defaults), living in the run directory."""
    base = (
        load_tenant_settings(Path(settings.simulation.tenant_config))
        if settings.simulation.tenant_config
        else TenantSettings()
    )
    return base.model_copy(
        update={"tenant": TenantSection(name=name, keys_dir=str(layout.keys), data_dir=str(layout.tenant(name)))}
    )


def simulated_tenants(settings: Settings, layout: RunLayout) -> TenantResolver:
    """Each node plays the tenant of its partition id."""

    def resolve(context: Context) -> Tenant:
        configure_logging()
        index = int(context.node_config["partition-id"])
        name = settings.federation.tenants[index]
        return tenant_at(index, settings, simulated_tenant_settings(settings, layout, name))

    return resolve


@cache
def draft_service(tenant: Tenant) -> DraftService:
    """The tenant's draft service (what its HTTP endpoint calls), with its own copy of the base model (one per
    tenant: the simulated product drafts through it every round)."""
    federation = tenant.federation
    engine = TransformersEngine(Path(federation.paths.model), federation.lora, tenant.placement, tenant.settings.serve)
    return DraftService(tenant.runtime, engine)


def simulated_product(tenant: Tenant, settings: Settings, layout: RunLayout | None = None) -> SimulatedProduct:
    """Tenant `tenant`'s simulated product: its users' judgement from `settings.simulation`."""
    sim = settings.simulation
    return SimulatedProduct(
        tenant.name,
        draft_service(tenant),
        UserJudgement(sim.accept_threshold, sim.edit_threshold),
        tenant.settings.serve.model_alias,
        sim.max_new_tokens,
        sim.prompt_version,
        layout.product_log(tenant.name) if layout else None,
    )


def simulated_traffic(settings: Settings, layout: RunLayout) -> RoundTraffic:
    """Before round N trains, `simulation.conversations_per_round` simulated users ask the tenant for drafts.

    Tenant i's users share the hidden reply style `simulation.styles[i mod n]`.
    """
    sim = settings.simulation

    def send(tenant: Tenant, round_: int) -> None:
        if sim.conversations_per_round:
            traffic = TenantTraffic(tenant.name, sim.styles[tenant.index % len(sim.styles)], settings.federation.seed)
            simulated_product(tenant, settings, layout).serve(
                traffic.conversations(sim.conversations_per_round, round_), round_
            )

    return send


def simulation_client_app(settings: Settings, layout: RunLayout) -> ClientApp:
    """The ClientApp of a simulated run."""
    return build_client_app(simulated_tenants(settings, layout), simulated_traffic(settings, layout))
