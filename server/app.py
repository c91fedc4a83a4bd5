"""HQ's Flower ServerApp: enrol tenants, seed version 0, run SealedFedAvg, write the summary."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedloop.server.registry import VersionRegistry
from fedloop.server.strategy import SealedFedAvg
from fedloop.shared.adapter import adapter_state, adapter_to_bytes, attach_lora, load_base_model
from fedloop.shared.keys import Keyring, PartyPublicKey, load_identity
from fedloop.shared.protocol import ENROL
from fedloop.shared.run_layout import HQ_NAME, RunLayout
from fedloop.shared.settings import Settings

log = logging.getLogger(__name__)
ENROL_TIMEOUT_S = 120.0


class EnrolmentError(RuntimeError):
    """Too few tenants could be enrolled to start a run."""


def enrol_tenants(grid: Grid, trusted: Keyring, expected: int) -> dict[int, PartyPublicKey]:
    """Wait for `expected` nodes, ask each who it is, and keep those whose key HQ trusts."""
    deadline = time.monotonic() + ENROL_TIMEOUT_S
    node_ids = list(grid.get_node_ids())
    while len(node_ids) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
        node_ids = list(grid.get_node_ids())
    queries = [Message(content=RecordDict({ENROL: ConfigRecord({"hello": "hq"})}),
                       dst_node_id=n, message_type=f"{MessageType.QUERY}.{ENROL}") for n in node_ids]
    tenants: dict[int, PartyPublicKey] = {}
    for reply in grid.send_and_receive(queries, timeout=ENROL_TIMEOUT_S):
        if reply.has_error():
            log.warning("node %s failed to enrol: %s", reply.metadata.src_node_id, reply.error.reason)
            continue
        claim = reply.content.config_records[ENROL]
        key = trusted.get(str(claim["key_id"]))
        if key is None or key.role != "tenant" or key.name != claim["tenant"]:
            log.warning("node %s claims tenant %r with an untrusted key; not enrolled",
                        reply.metadata.src_node_id, claim["tenant"])
            continue
        tenants[reply.metadata.src_node_id] = key
    if len(tenants) < expected:
        raise EnrolmentError(f"only {len(tenants)} of {expected} tenants enrolled within {ENROL_TIMEOUT_S:.0f} s; "
                             "check that every tenant's public key is in HQ's keyring")
    log.info("enrolled tenants: %s", ", ".join(sorted(t.name for t in tenants.values())))
    return tenants


def run_hq(grid: Grid, settings: Settings, layout: RunLayout) -> None:
    """The whole HQ side of a federated run."""
    hq = load_identity(layout.keys, HQ_NAME)
    trusted = Keyring.from_directory(layout.keys)
    registry = VersionRegistry(layout.hq, hq)
    try:
        tenants = enrol_tenants(grid, trusted, len(settings.federation.tenants))
        model, _ = load_base_model(Path(settings.paths.model))
        initial = adapter_state(attach_lora(model, settings.lora, settings.federation.seed))
        genesis = registry.create(adapter_to_bytes(initial), None, settings.federation.run_name, 0, {}, "init",
                                  {"lora": asdict(settings.lora)})
        log.info("version 0: %s (LoRA r=%d initialised, equal to the base model)", genesis.id, settings.lora.rank)
        strategy = SealedFedAvg(registry, hq, trusted, tenants, settings.federation.run_name, genesis, initial,
                                settings.lora, settings.aggregation)
        arrays = ArrayRecord(initial)
        before = grid.send_and_receive(strategy.configure_evaluate(0, arrays, ConfigRecord(), grid))
        strategy.aggregate_evaluate(0, before)
        strategy.start(grid, arrays, num_rounds=settings.federation.rounds)
        summary = {
            "run": settings.federation.run_name,
            "tenants": sorted(t.name for t in tenants.values()),
            "rounds": [asdict(strategy.reports[r]) for r in sorted(strategy.reports)],
            "lineage": [asdict(v) for v in registry.lineage(strategy.current.id)],
            "signatures_valid": all(registry.signature_valid(v.id) for v in registry.versions()),
        }
        layout.summary.write_text(json.dumps(summary, indent=2))
    finally:
        registry.close()


def build_server_app(settings: Settings, layout: RunLayout) -> ServerApp:
    """A ServerApp bound to these settings and run directory."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_hq(grid, settings, layout)

    return app
