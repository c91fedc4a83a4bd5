"""The tenant's Flower ClientApp.

train:    verify and install the global version, train LoRA locally from it on
          the feedback the tenant's product sent (less the held-out slice),
          reply with the sealed update and its sample count.
evaluate: verify and install the global version, report its hit rate on the
          tenant's held-out finals, run the hit-rate, KL and forgetting gates,
          and offer a version none of them refuses to the release controller.
query enrol: tell HQ which tenant and key this node is.
query counts: how many new training samples the tenant has since the version it
          holds (a continuous run starts rounds from these counts), and which
          versions it refused or rolled back.

The same app runs in deployment (deployed.py) and in the Simulation Engine
(src/fedloop/simulation/client_app.py), where a simulated product sends each round's
traffic through the tenant's draft service before training.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedloop.client.tenant import Tenant
from fedloop.client.tenant_settings import TenantSettings, load_tenant_settings
from fedloop.shared.adapter import adapter_state, adapter_to_bytes
from fedloop.shared.envelope import seal
from fedloop.shared.logs import configure_logging
from fedloop.shared.protocol import (
    COUNTS,
    DECLINED,
    ENROL,
    MAX_DECLINED,
    METRICS,
    NEW_SAMPLES,
    NUM_EXAMPLES,
    enrol_statement,
    update_binding,
    update_content,
)
from fedloop.shared.run_layout import HQ_NAME
from fedloop.shared.settings import ConfigError, Settings, load_settings


@cache
def tenant_at(index: int, settings: Settings, local: TenantSettings) -> Tenant:
    """The process's one `Tenant` for these settings (its store and models are opened once)."""
    return Tenant(index, settings, local)


TenantResolver = Callable[[Context], Tenant]
RoundTraffic = Callable[[Tenant, int], None]  # what a product sends a tenant before round N trains


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
    settings_file, tenant_file = Path(str(config["settings"])), Path(str(config["tenant-config"]))
    settings = load_settings(settings_file)
    local = load_tenant_settings(tenant_file)
    name = local.tenant.name
    if name not in settings.federation.tenants:
        raise ConfigError(
            f"{tenant_file}: tenant.name {name!r} is not in federation.tenants "
            f"{list(settings.federation.tenants)} of {settings_file}: ask HQ to add it there, or "
            "correct tenant.name"
        )
    return tenant_at(settings.federation.tenants.index(name), settings, local)


def build_client_app(tenant_for: TenantResolver, traffic: RoundTraffic | None = None) -> ClientApp:
    """The tenant's ClientApp; `tenant_for` says which tenant a node is (simulation or deployment).

    `traffic` (simulation only) lets a simulated product use the tenant through its draft service after the
    global version is installed and before training; a deployed tenant's product talks to its services instead.
    """
    app = ClientApp()

    @app.query(ENROL)
    def enrol(message: Message, context: Context) -> Message:
        tenant = tenant_for(context)
        key_id = tenant.identity.public.key_id
        statement = enrol_statement(
            str(message.content.config_records[ENROL]["challenge"]),
            context.run_id,
            context.node_id,
            tenant.name,
            key_id,
        )
        claim = ConfigRecord(
            {"tenant": tenant.name, "key_id": key_id, "signature": tenant.identity.signing_key.sign(statement).hex()}
        )
        return Message(RecordDict({ENROL: claim}), reply_to=message)

    @app.query(COUNTS)
    def counts(message: Message, context: Context) -> Message:
        tenant = tenant_for(context)
        declined = list(tenant.release.declined())[-MAX_DECLINED:]  # the newest refusals and rollbacks
        content = RecordDict(
            {
                METRICS: MetricRecord({NEW_SAMPLES: tenant.new_samples()}),
                DECLINED: ConfigRecord({DECLINED: declined}),
            }
        )
        return Message(content, reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        tenant = tenant_for(context)
        run = tenant.federation.federation.run_name
        round_, version_id, model, tokenizer = tenant.install_global(message, run)
        if traffic is not None:
            traffic(tenant, round_)
        outcome = tenant.train_round(model, tokenizer, version_id, round_)
        binding = update_binding(tenant.name, run, round_, version_id, outcome.examples, outcome.dataset_version)
        envelope = seal(
            adapter_to_bytes(adapter_state(model)), binding, tenant.identity, tenant.hq_keyring.by_name("hq", HQ_NAME)
        )
        return Message(
            update_content(envelope, {NUM_EXAMPLES: outcome.examples, "train-loss": outcome.loss}), reply_to=message
        )

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        tenant = tenant_for(context)
        _, version_id, model, tokenizer = tenant.install_global(message, tenant.federation.federation.run_name)
        metrics: dict[str, int | float | list[int] | list[float]] = dict(
            tenant.evaluate_version(model, tokenizer, version_id)
        )
        return Message(RecordDict({METRICS: MetricRecord(metrics)}), reply_to=message)

    return app
