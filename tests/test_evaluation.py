"""Evaluation gates: KL to the serving version, forgetting against the base model, stored evaluations."""

from __future__ import annotations

import random
import string
from pathlib import Path

import torch

from fedloop.client.evaluate.drift import forgetting_gate, general_texts, kl_gate, mean_token_kl
from fedloop.client.tenant_settings import EvaluationSection
from fedloop.shared.adapter import adapter_state, attach_lora, load_base_model
from fedloop.shared.settings import LoraSettings

REFERENCES = ["Where is my order 12345?\nYour order 12345 has shipped.", "How do I reset my password?\nUse the link."]


def _model(tiny_model_dir: Path):
    model, tokenizer = load_base_model(tiny_model_dir)
    return attach_lora(model, LoraSettings(rank=4, alpha=8), seed=0), tokenizer


def _drifted(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {k: v + scale * torch.randn(v.shape, generator=generator) for k, v in state.items()}


def test_kl_gate_refuses_a_deliberately_drifted_adapter(tiny_model_dir: Path) -> None:
    model, tokenizer = _model(tiny_model_dir)
    serving = adapter_state(model)
    assert mean_token_kl(model, tokenizer, serving, serving, REFERENCES) < 1e-9
    bound = 0.02  # the product default
    slight = kl_gate(model, tokenizer, _drifted(serving, 1e-3), serving, REFERENCES, bound=bound)
    drifted = kl_gate(model, tokenizer, _drifted(serving, 1.0), serving, REFERENCES, bound=bound)
    assert slight.passed and slight.value < 1e-4
    assert not drifted.passed and drifted.value > bound
    assert all(torch.equal(v, adapter_state(model)[k]) for k, v in serving.items()), "model adapter restored"


def test_forgetting_gate_compares_with_the_base_model(tiny_model_dir: Path) -> None:
    model, tokenizer = _model(tiny_model_dir)
    assert len(general_texts()) >= 20
    unchanged = forgetting_gate(model, tokenizer, adapter_state(model), bound=0.10)
    assert unchanged.passed and abs(unchanged.value) < 1e-6
    broken = forgetting_gate(model, tokenizer, _drifted(adapter_state(model), 1.0), bound=0.10)
    assert not broken.passed


def test_evaluations_are_stored_with_their_version(make_tenant) -> None:
    tenant = make_tenant()
    tenant.store.versions.record_evaluation("v0001-abc", "hit_rate", {"hit-rate": 0.5, "num-examples": 16})
    tenant.store.versions.record_evaluation("v0001-abc", "kl_to_serving", {"value": 0.01, "passed": True})
    tenant.store.versions.record_evaluation("v0002-def", "hit_rate", {"hit-rate": 0.7, "num-examples": 16})
    assert tenant.store.versions.evaluations("v0001-abc") == [
        ("hit_rate", {"hit-rate": 0.5, "num-examples": 16}),
        ("kl_to_serving", {"passed": True, "value": 0.01}),
    ]


def _distinct_questions(tenant, count: int, seed: int, askers: int = 1) -> None:
    """`count` questions in words of their own (one near-duplicate cluster each), each asked by `askers` users in
    nearly the same words and answered by an edit."""
    from fedloop.client.ingest.recorder import Action, FeedbackRecorder

    recorder = FeedbackRecorder(tenant.pipeline)
    rng = random.Random(seed)
    for index in range(count):
        words = " ".join("".join(rng.choices(string.ascii_lowercase, k=7)) for _ in range(12))
        for user in range(askers):
            draft_id = recorder.record_draft(f"user-{index}-{user}", f"Question {words}?", "A draft.", "v1")
            recorder.record_outcome(draft_id, Action.EDIT, f"Final reply: {words[::-1]}{'!' * user}", 3000)


def test_the_held_out_slice_is_fixed_keyed_and_never_trained_on(make_tenant) -> None:
    from fedloop.client.samples.curation import training_examples
    from fedloop.client.samples.held_out import held_out_references

    tenant = make_tenant(evaluation=EvaluationSection(held_out_share=0.2, held_out_after_clusters=20))
    _distinct_questions(tenant, 200, seed=1)  # 200 distinct questions: 200 clusters of one
    held_out = held_out_references(tenant.store, limit=1000)
    assert 15 <= len(held_out) <= 60  # about 20 % of the 180 clusters after the first 20
    assert held_out == held_out_references(tenant.store, limit=1000)  # the same slice on every call
    trained = [e.prompt for e in training_examples(tenant.store, tenant.settings.curation)]
    assert not set(trained) & {r.prompt for r in held_out} and len(trained) + len(held_out) == 200
    first = [s.prompt for s in tenant.store.samples.find()][:20]
    assert trained[:20] == first  # the tenant's first 20 clusters all train
    assert all(r.final.startswith("Final reply") for r in held_out)  # the user's own final text is the reference
    assert len(held_out_references(tenant.store, limit=5)) == 5


def test_near_duplicate_twins_of_a_held_out_sample_never_train(make_tenant) -> None:
    """Issue 30: the slice was chosen per draft id, so a near-duplicate twin of a held-out sample trained."""
    from fedloop.client.samples.curation import training_examples
    from fedloop.client.samples.held_out import held_out_references

    tenant = make_tenant(evaluation=EvaluationSection(held_out_share=0.25, held_out_after_clusters=0))
    _distinct_questions(tenant, 40, seed=3, askers=4)  # 40 topics, each asked by 4 users in nearly the same words
    samples = tenant.store.samples.find()
    clusters = {s.prompt: s.cluster_id for s in samples}
    assert len(set(clusters.values())) == 40  # the twins share clusters
    held_out = {clusters[r.prompt] for r in held_out_references(tenant.store, limit=1000)}
    trained = {clusters[e.prompt] for e in training_examples(tenant.store, tenant.settings.curation)}
    assert held_out and trained and not held_out & trained
    assert len(held_out) + len(trained) == 40


def test_a_tenant_whose_feedback_forms_few_clusters_trains_on_all_of_it(make_tenant) -> None:
    """Held out per cluster from the first sample on, a tenant with one or two clusters held out all of its
    feedback at the share's odds (it failed deployment-test rounds that way): its first clusters always train."""
    from fedloop.client.samples.curation import training_examples
    from fedloop.client.samples.held_out import held_out_references

    tenant = make_tenant(evaluation=EvaluationSection(held_out_share=0.9))
    _distinct_questions(tenant, 2, seed=4, askers=30)
    assert len(training_examples(tenant.store, tenant.settings.curation)) == 60
    assert held_out_references(tenant.store, limit=1000) == []  # no held-out finals: the canary decides


def test_a_sample_near_both_a_held_out_and_a_training_cluster_stands_apart(make_tenant) -> None:
    """LSH clusters are not transitive: a sample can be a near-duplicate of a held-out sample and of a training
    sample at once; it neither trains nor is evaluated on."""
    from fedloop.client.samples.held_out import cluster_of_new_sample
    from fedloop.client.store.api import Slice, cluster_slice

    tenant = make_tenant(evaluation=EvaluationSection(held_out_share=0.5, held_out_after_clusters=0))
    evaluation = tenant.settings.evaluation
    held_out, training = "held-out:s-a", "s-b"
    assert cluster_of_new_sample(tenant.store, "s-x", {held_out, training}, 9, evaluation) == "apart:s-x"
    assert cluster_of_new_sample(tenant.store, "s-x", {held_out, "apart:s-c"}, 9, evaluation) == held_out
    assert cluster_of_new_sample(tenant.store, "s-x", {training, "s-0"}, 9, evaluation) == "s-0"
    assert cluster_slice("apart:s-x") == Slice.APART and cluster_slice("s-legacy") == Slice.TRAIN
    new = {cluster_slice(cluster_of_new_sample(tenant.store, f"s-{i}", set(), 9, evaluation)) for i in range(40)}
    assert new == {Slice.TRAIN, Slice.HELD_OUT}  # a new cluster past the warm-up draws its slice
    warm_up = EvaluationSection(held_out_share=0.5, held_out_after_clusters=10)
    assert {cluster_of_new_sample(tenant.store, f"s-{i}", set(), 9, warm_up) for i in range(40)} == {
        f"s-{i}" for i in range(40)
    }


def test_the_gates_leave_out_references_that_a_compared_version_drafted(make_tenant) -> None:
    """Issue 30: an accepted draft of the serving version is its own greedy output, which it reproduces offline:
    a candidate could at best tie on those references."""
    from fedloop.client.ingest.recorder import Action, FeedbackRecorder
    from fedloop.client.samples.held_out import held_out_references

    tenant = make_tenant(evaluation=EvaluationSection(held_out_share=0.9, held_out_after_clusters=0))
    recorder = FeedbackRecorder(tenant.pipeline)
    kinds = [("v1", Action.ACCEPT), ("v1", Action.EDIT), ("v0", Action.ACCEPT)] * 10
    for index, (version, action) in enumerate(kinds):
        words = "".join(random.Random(index).choices(string.ascii_lowercase, k=40))
        draft_id = recorder.record_draft(f"u{index}", f"Question {index} about {words}", "Draft.", version)
        recorder.record_outcome(draft_id, action, None if action == Action.ACCEPT else f"Edited {index}.", 3000)
    every = held_out_references(tenant.store, limit=100)
    assert {r.drafted_by for r in every} == {"v1", None, "v0"}
    fair = held_out_references(tenant.store, limit=100, compared=frozenset({"v1", "v2"}))
    assert fair == [r for r in every if r.drafted_by != "v1"]  # v1's own accepted drafts are out; v0's are fair


def test_the_hit_rate_gate_refuses_only_a_version_worse_with_confidence() -> None:
    from fedloop.client.evaluate.hit_rate import HitRate, hit_rate_gate

    def rate(hits: int, count: int) -> HitRate:
        return HitRate(tuple(i < hits for i in range(count)), 0.5)

    assert hit_rate_gate(rate(2, 10), rate(9, 10), min_samples=30, confidence=0.95).verdict == "insufficient evidence"
    assert hit_rate_gate(rate(10, 40), rate(30, 40), min_samples=30, confidence=0.95).verdict == "refuse"
    assert hit_rate_gate(rate(18, 40), rate(20, 40), min_samples=30, confidence=0.95).verdict == "pass"
    assert hit_rate_gate(rate(30, 40), rate(10, 40), min_samples=30, confidence=0.95).verdict == "pass"
    low, high = rate(20, 40).interval()
    assert 0.34 < low < 0.36 and 0.64 < high < 0.66  # Wilson 95 % around 0.5 at n=40


def test_looping_and_empty_drafts_are_degenerate_and_a_version_that_loops_more_is_refused() -> None:
    """Issue 14: a promoted canary drafted `Click on "Account Settings" > "Account Settings" > ...`."""
    from fedloop.client.evaluate.degeneration import degeneration, degeneration_gate

    loop = (
        'Click on "Account Settings" > "Account Settings" > "Account Settings" > "Account Settings" > '
        '"Account Settings"'
    )
    fine = [
        "Your order ships tomorrow; the tracking number follows by e-mail.",
        "您的订单明天发货，物流单号稍后发送到您的邮箱。",
    ]
    assert degeneration(loop) == "loop" and degeneration("") == "empty" and degeneration("  \n") == "empty"
    assert degeneration("好的好的好的好的好的好的好的好的好的好的") == "loop"
    assert [degeneration(text) for text in fine] == [None, None]
    refused = degeneration_gate([loop, fine[0], loop, fine[1]], fine * 2, 0.05)
    assert refused.verdict == "refuse" and refused.value == 0.5
    assert degeneration_gate(fine * 2, fine * 2, 0.05).verdict == "pass"
    assert degeneration_gate([loop] * 4, [loop] * 4, 0.05).verdict == "pass"  # no worse than what serves now
    assert degeneration_gate([], [], 0.05).verdict == "insufficient evidence"


def test_the_tenant_report_plots_its_users_hit_rate_per_version_and_the_kl_bound(make_tenant) -> None:
    """Issue 14: the report shows what the tenant's users did with each version, and the KL bound it gated with."""
    from fedloop.client.ingest.recorder import Action, FeedbackRecorder
    from fedloop.client.report_data import add_tenant
    from fedloop.shared.report import ReportData, render_report

    tenant = make_tenant()
    recorder = FeedbackRecorder(tenant.pipeline)
    for version, accepted in (("base", 3), ("v0001-abc", 8)):
        for index in range(10):
            draft_id = recorder.record_draft(f"user-{version}-{index}", f"Question {index}", "A draft.", version)
            action = Action.ACCEPT if index < accepted else Action.REJECT
            recorder.record_outcome(draft_id, action, "", 3000)
    recorder.record_draft("user-late", "Question without an outcome", "A draft.", "v0001-abc")
    tenant.store.versions.record_evaluation(
        "v0001-abc", "kl_to_serving", {"value": 0.21, "bound": 0.5, "verdict": "pass"}
    )
    data = ReportData("report", "test")
    add_tenant(data, "acme", tenant.store)
    assert data.served == {"acme": {"base": (3, 10), "v0001-abc": (8, 10)}}  # drafts without an outcome left out
    assert data.kl_bounds == {"acme": 0.5}
    page = render_report(data)
    assert "Hit rate with users per version (their outcomes)" in page and "8 / 10" in page
    assert "[49.0%, 94.3%]" in page  # the 95 % Wilson interval of 8 / 10
