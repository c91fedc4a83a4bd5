"""HQ's Flower ServerApp: enrol tenants, seed version 0, run SealedMerge, write the summary."""

from __future__ import annotations

import json
import logging
import secrets
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedloop.server.continuous import ContinuousRun
from fedloop.server.registry import VersionRecord, VersionRegistry
from fedloop.server.replies import ReplyRefused, enrol_claim
from fedloop.server.round_ledger import RoundLedger
from fedloop.server.strategy import SealedMerge
from fedloop.server.tracking import MlflowTracker
from fedloop.shared.adapter import (
    AdapterState,
    adapter_from_bytes,
    adapter_state,
    adapter_to_bytes,
    attach_lora,
    load_base_model,
)
from fedloop.shared.echo import echoed
from fedloop.shared.keys import Keyring, PartyPublicKey, load_identity
from fedloop.shared.protocol import ENROL, enrol_statement
from fedloop.shared.run_layout import HQ_NAME, RunLayout
from fedloop.shared.settings import Settings

log = logging.getLogger(__name__)


class RunStartError(RuntimeError):
    """A run cannot start: too few tenants enrolled, or the registry does not fit the settings."""


def enrol_nodes(
    grid: Grid, trusted: Keyring, run_id: int, node_ids: list[int], reply_timeout_s: float
) -> dict[int, PartyPublicKey]:
    """Challenge each of `node_ids`; keep those that prove they hold a trusted tenant key (see enrol_tenants)."""
    challenges = {n: secrets.token_hex(32) for n in node_ids}
    queries = [
        Message(
            content=RecordDict({ENROL: ConfigRecord({"challenge": challenges[n]})}),
            dst_node_id=n,
            message_type=f"{MessageType.QUERY}.{ENROL}",
        )
        for n in node_ids
    ]
    tenants: dict[int, PartyPublicKey] = {}
    for reply in grid.send_and_receive(queries, timeout=reply_timeout_s):
        node = reply.metadata.src_node_id
        if reply.has_error():
            log.warning("node %s failed to enrol: %s", node, reply.error.reason)
            continue
        try:
            claim = enrol_claim(reply.content)
        except ReplyRefused as err:
            log.warning("node %s answered enrolment with a malformed reply (%s); not enrolled", node, err)
            continue
        key = trusted.get(claim.key_id)
        if key is None or key.role != "tenant" or key.name != claim.tenant:
            log.warning("node %s claims tenant %s with an untrusted key; not enrolled", node, echoed(claim.tenant))
            continue
        statement = enrol_statement(challenges.get(node, ""), run_id, node, key.name, key.key_id)
        if not key.key.verify(statement, bytes.fromhex(claim.signature)):
            log.warning(
                "node %s claims tenant %r but did not prove it holds that key (bad challenge signature); not enrolled",
                node,
                key.name,
            )
            continue
        tenants[node] = key
    return tenants


def enrol_tenants(
    grid: Grid, trusted: Keyring, run_id: int, expected: int, minimum: int, wait_s: float, reply_timeout_s: float
) -> dict[int, PartyPublicKey]:
    """Wait up to `wait_s` for `expected` nodes, challenge each, keep those that prove they hold a trusted key.

    Each node gets a fresh random challenge and must return its SM2 signature over the challenge, this run's id,
    its own node id, its tenant name and key id (`enrol_statement`): a claimed key id without the private key, or
    a signature replayed from another run or node, is not enrolled. The run starts with at least `minimum`
    enrolled tenants (aggregation.min_tenants); fewer is an error.
    """
    deadline = time.monotonic() + wait_s
    node_ids = list(grid.get_node_ids())
    while len(node_ids) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
        node_ids = list(grid.get_node_ids())
    tenants = enrol_nodes(grid, trusted, run_id, node_ids, reply_timeout_s)
    if len(tenants) < minimum:
        raise RunStartError(
            f"only {len(tenants)} of {expected} tenants enrolled within {wait_s:.0f} s, "
            f"fewer than aggregation.min_tenants = {minimum}; check that the tenants' SuperNodes are "
            "up and their public keys are in HQ's keyring"
        )
    if len(tenants) < expected:
        log.warning(
            "only %d of %d tenants enrolled; the run goes on with them (aggregation.min_tenants = %d)",
            len(tenants),
            expected,
            minimum,
        )
    log.info("enrolled tenants: %s", ", ".join(sorted(t.name for t in tenants.values())))
    return tenants


def starting_version(registry: VersionRegistry, settings: Settings) -> tuple[VersionRecord, AdapterState]:
    """Continue from the registry's newest version, or record version 0 (B = 0: the base model) if it is empty.

    HQ killed mid-run leaves only complete versions behind (blob before row), so
    a restarted run picks up from the last one the registry holds.
    """
    latest = registry.latest()
    if latest is None:
        model, _ = load_base_model(Path(settings.paths.model))
        initial = adapter_state(attach_lora(model, settings.lora, settings.federation.seed))
        genesis = registry.create(
            adapter_to_bytes(initial),
            None,
            settings.federation.run_name,
            0,
            {},
            "init",
            {"lora": settings.lora.model_dump()},
        )
        log.info("version 0: %s (LoRA r=%d initialised, equal to the base model)", genesis.id, settings.lora.rank)
        return genesis, initial
    recorded = {**latest.settings.get("lora", {})}
    if recorded and recorded != json.loads(json.dumps(settings.lora.model_dump())):
        raise RunStartError(
            f"the registry's newest version {latest.id} has LoRA settings {recorded}, but the "
            f"settings ask for {settings.lora.model_dump()}: use the same [lora] or a new registry"
        )
    log.info(
        "continuing from version %s (round %d of run %s), the newest in the registry",
        latest.id,
        latest.round,
        latest.run,
    )
    return latest, adapter_from_bytes(registry.load_adapter(latest.id))


def run_hq(grid: Grid, settings: Settings, layout: RunLayout, run_id: int) -> None:
    """The whole HQ side of federated run `run_id` (Flower's id, bound into each tenant's enrolment proof)."""
    hq = load_identity(layout.keys, HQ_NAME)
    trusted = Keyring.from_directory(layout.keys)
    registry = VersionRegistry(layout.hq, hq)
    federation, tracking = settings.federation, settings.tracking
    try:
        tenants = enrol_tenants(
            grid,
            trusted,
            run_id,
            len(federation.tenants),
            settings.aggregation.min_tenants,
            federation.enrol_timeout_s,
            federation.round_timeout_s,
        )
        start, initial = starting_version(registry, settings)
        with (
            MlflowTracker(
                tracking.mlflow_uri,
                tracking.experiment,
                tracking.artifacts,
                federation.run_name,
                settings.lora,
                settings.paths.model,
            )
            if tracking.mlflow_uri
            else nullcontext()
        ) as tracker:
            ledger = RoundLedger(
                registry,
                federation.run_name,
                {"aggregation": settings.aggregation.model_dump(), "lora": settings.lora.model_dump()},
                tracker,
            )
            strategy = SealedMerge(
                ledger, hq, trusted, tenants, federation.run_name, start, initial, settings.lora, settings.aggregation
            )
            arrays = ArrayRecord(initial)
            timeout = federation.round_timeout_s
            before = grid.send_and_receive(
                strategy.configure_evaluate(0, arrays, ConfigRecord(), grid), timeout=timeout
            )
            strategy.aggregate_evaluate(0, before)
            hit_rates, train_metrics = {}, {}
            if settings.schedule.continuous:
                ContinuousRun(
                    grid,
                    strategy,
                    lambda nodes: enrol_nodes(grid, trusted, run_id, nodes, timeout),
                    settings,
                    layout.schedule,
                ).run()
            else:
                result = strategy.start(grid, arrays, num_rounds=federation.rounds, timeout=timeout)
                hit_rates = {str(r): dict(m) for r, m in result.evaluate_metrics_clientapp.items()}
                train_metrics = {str(r): dict(m) for r, m in result.train_metrics_clientapp.items()}
        summary = {
            "run": federation.run_name,
            "tenants": sorted(t.name for t in tenants.values()),
            "rounds": [asdict(strategy.reports[r]) for r in sorted(strategy.reports)],
            "lineage": [asdict(v) for v in registry.lineage(strategy.current.id)],
            "signatures_valid": all(registry.signature_valid(v.id) for v in registry.versions()),
            "hit_rate_by_round": hit_rates,
            "train_by_round": train_metrics,
        }
        layout.summary.write_text(json.dumps(summary, indent=2))
    finally:
        registry.close()


def build_server_app(settings: Settings, layout: RunLayout) -> ServerApp:
    """A ServerApp bound to these settings and run directory."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_hq(grid, settings, layout, context.run_id)

    return app
