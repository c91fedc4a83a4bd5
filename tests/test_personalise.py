"""Personalisation at the tenant: the src/fedloop/shared/local split of the adapter (FedSA, B kept), a tenant that keeps
its B and sends only A, the settings check, and the gates offering a personalised candidate only on evidence that
it drafts better."""

from __future__ import annotations

import random
import string
from pathlib import Path
from typing import Literal

import pytest
import torch

from fedloop.client.evaluate.candidates import Assessment, better_candidate
from fedloop.client.evaluate.drift import GateResult
from fedloop.client.evaluate.hit_rate import HitRate
from fedloop.client.ingest.recorder import Action, FeedbackRecorder
from fedloop.client.store.api import EvaluationKind, InstalledVersion
from fedloop.client.tenant import LOCAL_B, Tenant, shared_model
from fedloop.client.tenant_settings import EvaluationSection, PersonaliseSection, TenantSection, TenantSettings
from fedloop.client.train.personalise import local_part, personal_version, shared_part, with_local_part
from fedloop.shared.adapter import adapter_from_bytes, adapter_state, adapter_to_bytes
from fedloop.shared.keys import init_keys
from fedloop.shared.settings import (
    AggregationSection,
    FederationSection,
    LoraSettings,
    PathsSection,
    Settings,
    TrainSection,
)

REPLY = "Your parcel ships today."


def test_the_shared_part_is_a_and_the_local_part_is_b() -> None:
    global_state = {"q.lora_A.weight": torch.zeros(2, 4), "q.lora_B.weight": torch.zeros(4, 2)}
    trained = {"q.lora_A.weight": torch.ones(2, 4), "q.lora_B.weight": torch.full((4, 2), 2.0)}
    assert set(local_part(trained)) == {"q.lora_B.weight"}
    sent = shared_part(trained, global_state)
    assert torch.equal(sent["q.lora_A.weight"], trained["q.lora_A.weight"])  # A leaves the tenant ...
    assert torch.equal(sent["q.lora_B.weight"], global_state["q.lora_B.weight"])  # ... its B does not
    mine = with_local_part(
        {"q.lora_A.weight": torch.full((2, 4), 3.0), "q.lora_B.weight": torch.zeros(4, 2)}, local_part(trained)
    )
    assert mine["q.lora_A.weight"][0, 0] == 3.0 and mine["q.lora_B.weight"][0, 0] == 2.0


def _tenant(
    tmp_path: Path,
    tiny_model_dir: Path,
    method: Literal["none", "local_steps", "local_b"],
    merge: Literal["exact", "fedavg"] = "fedavg",
    evaluation: EvaluationSection | None = None,
) -> Tenant:
    keys = tmp_path / "keys"
    init_keys("tenant", "acme", keys)
    settings = Settings(
        federation=FederationSection(tenants=("acme",)),
        paths=PathsSection(model=str(tiny_model_dir)),
        lora=LoraSettings(rank=4, alpha=8),
        train=TrainSection(max_steps=4, batch_size=4, learning_rate=5e-2, max_seq_len=64),
        aggregation=AggregationSection(method=merge),
    )
    local = TenantSettings(
        tenant=TenantSection(name="acme", keys_dir=str(keys), data_dir=str(tmp_path / "acme")),
        evaluation=evaluation or EvaluationSection(held_out_share=0.0),
        personalise=PersonaliseSection(method=method, steps=12),
    )
    return Tenant(0, settings, local)


def _feedback(tenant: Tenant, count: int) -> None:
    recorder = FeedbackRecorder(tenant.runtime.pipeline)
    rng = random.Random(count)
    for i in range(count):  # distinct questions: each its own near-duplicate cluster, so the held-out slice is a share
        words = " ".join("".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(8))
        draft_id = recorder.record_draft(f"user{i % 5}", f"Where is my parcel {words}?", "I do not know.", "v1")
        recorder.record_outcome(draft_id, Action.EDIT, dwell_ms=4000, final_text=REPLY)


def _install_untrained(tenant: Tenant, version_id: str = "v1"):
    model, _ = shared_model(tenant.federation.paths.model, tenant.federation.lora, tenant.federation.federation.seed)
    state = {k: torch.zeros_like(v) if ".lora_B." in k else v for k, v in adapter_state(model).items()}
    return state, *tenant.install(InstalledVersion(version_id, 1, None, "digest"), adapter_to_bytes(state))


def test_a_local_b_tenant_keeps_its_b_and_sends_only_a(tmp_path: Path, tiny_model_dir: Path) -> None:
    tenant = _tenant(tmp_path, tiny_model_dir, "local_b")
    _feedback(tenant, 12)
    global_state, model, tokenizer = _install_untrained(tenant)
    tenant.train_round(model, tokenizer, "v1", 1)
    sent = adapter_state(model)
    kept = adapter_from_bytes(tenant.store.versions.local_part(LOCAL_B) or b"")
    assert set(kept) == set(local_part(global_state)) and all(".lora_B." in k for k in kept)
    assert any(not torch.equal(kept[k], global_state[k]) for k in kept)  # B trained, and kept at the tenant
    assert all(torch.equal(sent[k], global_state[k]) for k in kept)  # what HQ gets has the global B
    assert any(not torch.equal(sent[k], global_state[k]) for k in sent if ".lora_A." in k)  # and the trained A
    assert b"lora_B" not in tenant.store.raw_connection().execute("SELECT part FROM local_parts").fetchone()[0]
    tenant.runtime.close()


def test_local_b_needs_hq_to_average_the_factors(tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match='aggregation.method = "fedavg"'):
        _tenant(tmp_path, tiny_model_dir, "local_b", merge="exact")


def _assessed(rate: float, verdict: str = "pass", prompts: int = 30) -> Assessment:
    hits = tuple(k < round(rate * prompts) for k in range(prompts))
    return HitRate(hits, 0.5), [GateResult(EvaluationKind.KL_TO_SERVING, 0.1, 0.4, verdict)]


def test_a_personalised_candidate_is_offered_only_when_it_drafts_better_with_confidence() -> None:
    clearly_better = {"v1": _assessed(0.2), "v1+personal": _assessed(0.6)}  # 12 prompts only it hits: p < 0.001
    assert better_candidate(clearly_better, "v1", 0.95) == "v1+personal"
    # what the benchmark's dirichlet split showed: 9 against 7 of 16 validation prompts picked a candidate that
    # then drafted 23 points worse; two more hits are not evidence (p = 0.25), the shared version is offered
    assert (
        better_candidate(
            {"v1": _assessed(7 / 16, prompts=16), "v1+personal": _assessed(9 / 16, prompts=16)}, "v1", 0.95
        )
        == "v1"
    )
    assert better_candidate({"v1+personal": _assessed(0.4), "v1": _assessed(0.4)}, "v1", 0.95) == "v1"  # a tie
    assert better_candidate({"v1": _assessed(0.2), "v1+personal": _assessed(0.6, "refuse")}, "v1", 0.95) == "v1"
    assert (
        better_candidate({"v1": _assessed(0.6, "refuse"), "v1+personal": _assessed(0.2)}, "v1", 0.95) == "v1+personal"
    )
    assert better_candidate({"v1": _assessed(0.6, "refuse")}, "v1", 0.95) is None


def test_a_tenant_gates_both_candidates_and_offers_one(tmp_path: Path, tiny_model_dir: Path) -> None:
    lenient = EvaluationSection(
        held_out_share=0.3,
        held_out_after_clusters=0,
        min_held_out=1,
        kl_bound=1e6,
        forgetting_bound=1e6,
        degenerate_bound=0.99,
        max_new_tokens=8,
    )
    tenant = _tenant(tmp_path, tiny_model_dir, "local_steps", evaluation=lenient)
    _feedback(tenant, 30)
    _, model, tokenizer = _install_untrained(tenant)
    metrics = tenant.evaluate_version(model, tokenizer, "v1")
    personal = personal_version("v1")
    assert {"hit-rate", "personalised-hit-rate", "offered-personalised", "gates-passed"} <= set(metrics)
    assert [v.parent for v in tenant.store.versions.installed() if v.version_id == personal] == ["v1"]
    assert {kind for kind, _ in tenant.store.versions.evaluations(personal)} >= {"hit_rate", "hit_rate_vs_serving"}
    offered = personal if metrics["offered-personalised"] else "v1"
    state = tenant.release.state()
    assert state is not None and state.serving == offered  # the first offer bootstraps the serving version
    other = "v1" if offered == personal else personal
    assert any(
        e.action == "release-passed-over" and e.subject.startswith(f"{other}:")
        for e in tenant.store.audit_log.entries()
    )
    tenant.runtime.close()
