"""Every kind of bad update is refused with its reason, counted, and the round goes on without it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedloop.server.registry import VersionRegistry
from fedloop.server.round_ledger import RoundLedger
from fedloop.server.strategy import SealedMerge
from fedloop.shared.adapter import adapter_to_bytes
from fedloop.shared.envelope import seal
from fedloop.shared.keys import Identity, Keyring, init_keys
from fedloop.shared.protocol import update_binding, update_content
from fedloop.shared.settings import AggregationSection, LoraSettings

RUN = "refusal-run"
TENANTS = ("honest1", "honest2", "unknown", "badsig", "tampered", "wrongad", "replay", "shape", "dtype", "nonfinite")


def adapter(scale: float = 0.0) -> dict[str, torch.Tensor]:
    return {"m.q_proj.lora_A.weight": torch.full((2, 6), 0.1), "m.q_proj.lora_B.weight": torch.full((6, 2), scale)}


@pytest.fixture
def strategy(tmp_path: Path) -> tuple[SealedMerge, Identity, dict[str, Identity]]:
    keys = tmp_path / "keys"
    hq = init_keys("hq", "hq", keys)
    tenants = {name: init_keys("tenant", name, keys) for name in TENANTS if name != "unknown"}
    tenants["unknown"] = init_keys("tenant", "unknown", tmp_path / "elsewhere")  # HQ never trusted it
    trusted = Keyring.from_directory(keys)
    registry = VersionRegistry(tmp_path / "hq", hq)
    genesis = registry.create(adapter_to_bytes(adapter()), None, RUN, 0, {}, "init")
    nodes = {index: tenants[name].public for index, name in enumerate(TENANTS, start=1)}
    sealed = SealedMerge(
        RoundLedger(registry, RUN, {}),
        hq,
        trusted,
        nodes,
        RUN,
        genesis,
        adapter(),
        LoraSettings(rank=2, alpha=4),
        AggregationSection(method="fedavg", min_tenants=1),
    )
    return sealed, hq, tenants


def reply(node_id: int, envelope: bytes) -> Message:
    """A train reply as node `node_id` would send it (Flower stamps ids from the task identity)."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    instruction = Message(RecordDict({"x": ConfigRecord({})}), dst_node_id=node_id, message_type="train")
    TaskIdentity.node_id = node_id
    answer = Message(update_content(envelope, {"num-examples": 10}), reply_to=instruction)
    assert answer.metadata.src_node_id == node_id
    return answer


def sealed_update(
    hq: Identity,
    tenant: Identity,
    name: str,
    state: dict[str, torch.Tensor],
    base: str,
    round_: int = 1,
    run: str = RUN,
) -> bytes:
    """Tenant `name`'s update `state` of version `base`, sealed to HQ as its client seals it."""
    return seal(adapter_to_bytes(state), update_binding(name, run, round_, base, 10), tenant, hq.public)


def test_each_bad_update_is_refused_with_its_reason_and_the_round_goes_on(strategy) -> None:
    sealed, hq, tenants = strategy
    base = sealed.current.id

    def update(name: str, state: dict[str, torch.Tensor], round_: int = 1, run: str = RUN) -> bytes:
        return sealed_update(hq, tenants[name], name, state, base, round_, run)

    def flipped(envelope: bytes, position: int) -> bytes:
        altered = bytearray(envelope)
        altered[position] ^= 0x01
        return bytes(altered)

    replies = {
        "honest1": update("honest1", adapter(0.2)),
        "honest2": update("honest2", adapter(0.4)),
        "unknown": update("unknown", adapter(0.2)),
        "badsig": flipped(update("badsig", adapter(0.2)), -1),  # a byte of the signature itself
        "tampered": flipped(update("tampered", adapter(0.2)), 400),  # a byte of the ciphertext
        "wrongad": update("wrongad", adapter(0.2), run="another-run"),
        "replay": update("replay", adapter(0.2), round_=0),
        "shape": update("shape", {**adapter(0.2), "m.q_proj.lora_B.weight": torch.zeros(6, 3)}),
        "dtype": update("dtype", {k: v.half() for k, v in adapter(0.2).items()}),
        "nonfinite": update("nonfinite", {**adapter(0.2), "m.q_proj.lora_B.weight": torch.full((6, 2), float("nan"))}),
    }
    arrays, metrics = sealed.aggregate_train(1, [reply(TENANTS.index(n) + 1, e) for n, e in replies.items()])

    report = sealed.reports[1]
    assert report.contributors == {"honest1": 10, "honest2": 10}
    assert report.refused_by_reason == {
        "unknown-key": 1,
        "bad-signature": 2,
        "wrong-associated-data": 1,
        "replay": 1,
        "shape-or-dtype": 2,
        "non-finite": 1,
    }
    assert set(report.refused) == set(TENANTS) - {"honest1", "honest2"}
    assert metrics["tenants"] == 2 and report.version == sealed.current.id
    merged = arrays.to_torch_state_dict()["m.q_proj.lora_B.weight"]
    assert torch.allclose(merged, torch.full((6, 2), 0.3))
    audit = sealed.ledger.registry.audit_log
    assert not [e for e in audit.entries() if e.action == "update.refused"]  # aggregation itself records nothing
    sealed.aggregate_evaluate(1, [])  # the round ends: the ledger records it, refusals included
    refused = sorted(e.subject.rsplit(" ", 2)[-2:] for e in audit.entries() if e.action == "update.refused")
    assert refused == sorted([f"{name}:", reason] for name, reason in report.refusal_reasons.items())
    assert len(refused) == 8


def test_a_round_below_the_minimum_keeps_the_current_version(strategy) -> None:
    sealed, hq, tenants = strategy
    sealed.aggregation = AggregationSection(min_tenants=2)
    before = sealed.current.id
    envelope = sealed_update(hq, tenants["honest1"], "honest1", adapter(0.2), before)
    assert sealed.aggregate_train(1, [reply(1, envelope)]) == (None, None)
    assert sealed.current.id == before and sealed.reports[1].contributors == {}


def test_the_same_sealed_delta_twice_in_a_round_counts_once(strategy) -> None:
    sealed, hq, tenants = strategy
    first = sealed_update(hq, tenants["honest1"], "honest1", adapter(0.2), sealed.current.id)
    second = sealed_update(hq, tenants["honest1"], "honest1", adapter(0.9), sealed.current.id)
    sealed.aggregate_train(1, [reply(1, first), reply(1, first), reply(1, second)])
    report = sealed.reports[1]
    assert report.contributors == {"honest1": 10} and report.refused_by_reason["replay"] == 2  # others: no-reply
    merged = sealed.current_state["m.q_proj.lora_B.weight"]
    assert torch.allclose(merged, torch.full((6, 2), 0.2))  # the first update alone, counted once


def test_a_reply_without_a_sealed_array_is_refused_as_malformed(strategy) -> None:
    """The sealed update must be the raw-bytes Array of `sealed`: a ConfigRecord of bytes (one object of any size
    at the SuperLink) or a NumPy array are refused, and the round goes on."""
    sealed, hq, tenants = strategy
    envelope = sealed_update(hq, tenants["honest1"], "honest1", adapter(0.2), sealed.current.id)
    as_config = reply(1, envelope)
    as_config.content = RecordDict({"sealed": ConfigRecord({"envelope": envelope})})
    as_numpy = reply(2, envelope)
    as_numpy.content = RecordDict({"sealed": ArrayRecord({"envelope": Array(np.frombuffer(envelope, np.uint8))})})
    sealed.aggregate_train(1, [as_config, as_numpy])
    report = sealed.reports[1]
    assert {report.refusal_reasons[name] for name in ("honest1", "honest2")} == {"malformed"}
    assert "stored as 'numpy.ndarray'" in report.refused["honest2"]


def evaluation_reply(node_id: int, declined: int) -> Message:
    """An evaluation reply of node `node_id`: no held-out finals yet, and whether it declines the version."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    instruction = Message(RecordDict({"x": ConfigRecord({})}), dst_node_id=node_id, message_type="evaluate")
    TaskIdentity.node_id = node_id
    metrics = MetricRecord({"num-examples": 0, "gates-passed": 1 - declined, "declined": declined})
    return Message(RecordDict({"metrics": metrics}), reply_to=instruction)


def test_a_version_every_tenant_declined_is_not_where_training_or_the_next_run_continues(strategy) -> None:
    """Issue 30: v0006, refused by the KL gate at both tenants, was HQ's `newest`, where the next run continued."""
    sealed, hq, tenants = strategy
    genesis = sealed.current.id
    for round_, declined_by in ((1, {"honest1"}), (2, {"honest1", "honest2"})):
        updates = [
            reply(
                TENANTS.index(name) + 1, sealed_update(hq, tenants[name], name, adapter(0.1), sealed.current.id, round_)
            )
            for name in ("honest1", "honest2")
        ]
        sealed.aggregate_train(round_, updates)
        made = sealed.current.id
        replies = [evaluation_reply(TENANTS.index(n) + 1, int(n in declined_by)) for n in ("honest1", "honest2")]
        sealed.aggregate_evaluate(round_, replies)
    registry = sealed.ledger.registry
    first, second = (v for v in registry.versions() if v.id != genesis)
    assert (first.status, second.status) == ("candidate", "declined") and made == second.id
    assert sealed.current.id == first.id  # the next round trains from the last version someone kept
    assert registry.latest().id == first.id  # and so does the next run
    entry = registry.audit_log.entries()[-1]
    assert entry.action == "version.declined" and "declined by honest1, honest2" in entry.subject


def test_declining_a_version_that_is_not_the_current_one_leaves_training_where_it_is(strategy) -> None:
    """A continuous run hears of rollbacks between rounds (the counts query): an older version every tenant rolled
    back is marked, and training goes on from the current version."""
    sealed, hq, tenants = strategy
    genesis = sealed.current.id
    updates = [
        reply(TENANTS.index(n) + 1, sealed_update(hq, tenants[n], n, adapter(0.1), genesis))
        for n in ("honest1", "honest2")
    ]
    sealed.aggregate_train(1, updates)
    current = sealed.current.id
    sealed.decline(genesis, ["honest1", "honest2"])
    assert sealed.current.id == current and sealed.ledger.registry.get(genesis).status == "declined"
    sealed.decline(current, ["honest1", "honest2"])
    assert sealed.current.id == genesis  # every ancestor declined too: training goes back to the first version
