"""The tenant's Flower ClientApp.

train:    verify and install the global version, serve this round's simulated
          users with the version the release controller routes each one to
          (recording their feedback), train LoRA locally from the global
          version on all feedback, reply with the sealed delta and its sample
          count, then let the release controller widen, promote or roll back.
evaluate: verify and install the global version, report its hit rate on the
          tenant's held-out prompts, run the KL and forgetting gates, and offer
          a version that passes them to the release controller (canary).
query enrol: tell HQ which tenant and key this node is.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedloop.client.tenant import Tenant
from fedloop.client.tenant_settings import TenantSection, TenantSettings, load_tenant_settings
from fedloop.shared.adapter import adapter_state, adapter_to_bytes
from fedloop.shared.envelope import seal
from fedloop.shared.logs import configure_logging
from fedloop.shared.protocol import ENROL, METRICS, NUM_EXAMPLES, delta_binding, delta_content
from fedloop.shared.run_layout import HQ_NAME, RunLayout
from fedloop.shared.settings import Settings, load_settings


@lru_cache(maxsize=None)
def _tenant_at(index: int, settings: Settings, local: TenantSettings) -> Tenant:
    return Tenant(index, settings, local)


TenantResolver = Callable[[Context], Tenant]


def simulated_tenant_settings(settings: Settings, layout: RunLayout, name: str) -> TenantSettings:
    """A simulated tenant's own settings: `simulation.tenant_config` (or the defaults), living in the run directory."""
    base = load_tenant_settings(Path(settings.simulation.tenant_config)) if settings.simulation.tenant_config \
        else TenantSettings()
    return replace(base, tenant=TenantSection(name, str(layout.keys), str(layout.tenant(name))))


def simulated_tenants(settings: Settings, layout: RunLayout) -> TenantResolver:
    """Simulation: each node plays the tenant of its partition id, all in one run directory."""
    def resolve(context: Context) -> Tenant:
        configure_logging()
        index = int(context.node_config["partition-id"])
        name = settings.federation.tenants[index]
        return _tenant_at(index, settings, simulated_tenant_settings(settings, layout, name))
    return resolve


def deployed_tenant(context: Context) -> Tenant:
    """Deployment: the SuperNode's node config names the tenant's own TOML and the federation settings.

    `fedloop tenant up` sets `tenant-config` (keys, store, gates, release), `settings`, and `workdir`
    (where it was started: relative paths in both files mean what they mean on its command line).
    """
    configure_logging()
    config = context.node_config
    missing = [k for k in ("tenant-config", "settings") if k not in config]
    if missing:
        raise ValueError(f"SuperNode node config lacks {missing}: start it with `fedloop tenant up`")
    if config.get("workdir"):
        os.chdir(str(config["workdir"]))
    settings = load_settings(Path(str(config["settings"])))
    local = load_tenant_settings(Path(str(config["tenant-config"])))
    name = local.tenant.name
    index = settings.federation.tenants.index(name) if name in settings.federation.tenants else 0
    return _tenant_at(index, settings, local)


def build_client_app(tenant_for: TenantResolver) -> ClientApp:
    """The tenant's ClientApp; `tenant_for` says which tenant a node is (simulation or deployment)."""
    app = ClientApp()

    @app.query(ENROL)
    def enrol(message: Message, context: Context) -> Message:
        tenant = tenant_for(context)
        claim = ConfigRecord({"tenant": tenant.name, "key_id": tenant.identity.public.key_id})
        return Message(RecordDict({ENROL: claim}), reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        tenant = tenant_for(context)
        run = tenant.settings.federation.run_name
        round_, version_id, model, tokenizer = tenant.install_global(message, run)
        outcome = tenant.train_round(model, tokenizer, version_id, round_)
        binding = delta_binding(tenant.name, run, round_, version_id, outcome.examples, outcome.dataset_version)
        envelope = seal(adapter_to_bytes(adapter_state(model)), binding, tenant.identity,
                        tenant.hq_keyring.by_name("hq", HQ_NAME))
        return Message(delta_content(envelope, {NUM_EXAMPLES: outcome.examples, "train-loss": outcome.loss,
                                                "served-hit-rate": outcome.served_hit_rate}), reply_to=message)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        tenant = tenant_for(context)
        _, version_id, model, tokenizer = tenant.install_global(message, tenant.settings.federation.run_name)
        metrics = tenant.evaluate_version(model, tokenizer, version_id)
        return Message(RecordDict({METRICS: MetricRecord(metrics)}), reply_to=message)

    return app
