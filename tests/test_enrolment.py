"""Enrolment with proof of possession, in Flower's Simulation Engine: naming a trusted key is not enough."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedloop.server.app import enrol_tenants
from fedloop.shared.keys import Keyring, init_keys, key_paths, load_identity, load_public_key
from fedloop.shared.protocol import ENROL, enrol_statement
from fedloop.shared.sm2 import SM2PrivateKey
from fedloop.simulation.federation import simulate


def _claims(keys: Path) -> ClientApp:
    """Node 0 is acme and proves it; node 1 names bolt's key without holding it; node 2 holds acme's key but
    answers with a proof made for another run (a replayed signature)."""
    app = ClientApp()

    @app.query(ENROL)
    def enrol(message: Message, context: Context) -> Message:
        node = int(context.node_config["partition-id"])
        acme = load_identity(keys, "acme")
        challenge = str(message.content.config_records[ENROL]["challenge"])
        if node == 1:
            bolt = load_public_key(key_paths(keys, "bolt")["public"])
            signature = SM2PrivateKey.generate().sign(
                enrol_statement(challenge, context.run_id, context.node_id, "bolt", bolt.key_id)
            )
            claim = {"tenant": "bolt", "key_id": bolt.key_id, "signature": signature.hex()}
        else:
            run = context.run_id if node == 0 else context.run_id + 1
            signature = acme.signing_key.sign(
                enrol_statement(challenge, run, context.node_id, "acme", acme.public.key_id)
            )
            claim = {"tenant": "acme", "key_id": acme.public.key_id, "signature": signature.hex()}
        return Message(RecordDict({ENROL: ConfigRecord(dict[str, Any](claim))}), reply_to=message)

    return app


@pytest.mark.slow
def test_only_a_node_that_signs_this_runs_challenge_with_the_named_key_is_enrolled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = tmp_path / "keys"
    for tenant in ("acme", "bolt"):
        init_keys("tenant", tenant, keys)
    enrolled: list[list[str]] = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        tenants = enrol_tenants(grid, Keyring.from_directory(keys), context.run_id, 3, 1, 60, 60)
        enrolled.append(sorted(key.name for key in tenants.values()))

    with caplog.at_level(logging.WARNING, logger="fedloop"):
        simulate(server, _claims(keys), 3)
    assert enrolled == [["acme"]]
    refusals = [r.getMessage() for r in caplog.records if "did not prove it holds that key" in r.getMessage()]
    print("\n".join(refusals))
    assert len(refusals) == 2 and any("'bolt'" in r for r in refusals) and any("'acme'" in r for r in refusals)


def test_a_tenant_missing_from_the_federation_list_is_an_error_naming_it_and_the_files(tmp_path: Path) -> None:
    """It used to play tenant 0 silently."""
    from fedloop.client.app import deployed_tenant
    from fedloop.shared.settings import ConfigError

    settings, tenant = tmp_path / "settings.toml", tmp_path / "tenant.toml"
    settings.write_text('[federation]\ntenants = ["acme", "bolt"]\n')
    tenant.write_text('[tenant]\nname = "zenith"\n')
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"settings": str(settings), "tenant-config": str(tenant)},
        state=RecordDict(),
        run_config={},
    )
    with pytest.raises(ConfigError) as refused:
        deployed_tenant(context)
    message = str(refused.value)
    assert "'zenith'" in message and str(tenant) in message and str(settings) in message
    assert "federation.tenants" in message and "['acme', 'bolt']" in message
