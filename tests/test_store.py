"""The tenant's store through the Python API: encrypted at rest, redacted, validated."""

from __future__ import annotations

import pytest

from fedloop.client.feedback import Action, FeedbackError, FeedbackRecorder
from fedloop.client.samples.curation import training_examples

CANARY = "CANARY-7f3a9c-should-never-be-readable"


def test_canary_is_absent_from_raw_sqlite_bytes(make_tenant) -> None:
    tenant = make_tenant()
    api = FeedbackRecorder(tenant.pipeline)
    draft_id = api.record_draft("user-" + CANARY, f"prompt {CANARY}", f"draft {CANARY}", "v0",
                                session_id="s-" + CANARY)
    api.record_outcome(draft_id, Action.EDIT, f"final {CANARY}", dwell_ms=3000)
    assert [e.target for e in training_examples(tenant.store, tenant.settings.curation)] == [f"final {CANARY}"]
    path = tenant.store.path
    tenant.close()
    files = list(path.parent.glob("feedback.db*"))
    assert files
    for file in files:
        raw = file.read_bytes()
        assert CANARY.encode() not in raw and b"CANARY" not in raw


def test_rewards_and_training_targets(make_tenant) -> None:
    tenant = make_tenant()
    api = FeedbackRecorder(tenant.pipeline)
    accepted = api.record_draft("u1", "q1", "draft one", "v0")
    edited = api.record_draft("u2", "q2", "draft two", "v0")
    rejected = api.record_draft("u3", "q3", "draft three", "v0")
    silent = api.record_draft("u4", "q4", "draft four", "v0")
    assert api.record_outcome(accepted, "accept", dwell_ms=5000) == 1.0
    assert api.record_outcome(edited, Action.EDIT, "edited two", dwell_ms=5000) == 0.3
    assert api.record_outcome(rejected, Action.REJECT, "my own reply", dwell_ms=5000) == 0.0
    assert api.record_outcome(silent, Action.REJECT, dwell_ms=5000) == 0.0
    targets = {e.prompt: e.target for e in training_examples(tenant.store, tenant.settings.curation)}
    assert targets == {"q1": "draft one", "q2": "edited two", "q3": "my own reply"}
    assert tenant.store.outcome_counts() == {"accept": 1, "edit": 1, "reject": 2}


def test_pii_is_redacted_before_storage_and_vaulted(make_tenant) -> None:
    tenant = make_tenant()
    api = FeedbackRecorder(tenant.pipeline)
    draft_id = api.record_draft("u1", "call me on 13812345678", "ok", "v0")
    api.record_outcome(draft_id, Action.EDIT, "we will call 13812345678", dwell_ms=2000)
    [example] = training_examples(tenant.store, tenant.settings.curation)
    assert example.prompt == "call me on <CN_MOBILE_1>" and example.target == "we will call <CN_MOBILE_1>"
    assert tenant.store.vault_lookup(draft_id, "<CN_MOBILE_1>") == "13812345678"


def test_bad_outcomes_are_refused_and_nothing_is_stored(make_tenant) -> None:
    tenant = make_tenant()
    api = FeedbackRecorder(tenant.pipeline)
    with pytest.raises(FeedbackError, match="unknown draft_id") as info:
        api.record_outcome("nope", Action.ACCEPT)
    assert info.value.status == "NOT_FOUND"
    draft_id = api.record_draft("u1", "q", "d", "v0")
    with pytest.raises(FeedbackError, match="final_text is missing"):
        api.record_outcome(draft_id, Action.EDIT)
    with pytest.raises(FeedbackError, match="unknown action"):
        api.record_outcome(draft_id, "maybe")
    with pytest.raises(FeedbackError, match="prompt is missing"):
        api.record_draft("u1", " ", "d", "v0")
    assert tenant.store.outcome_counts() == {}
    api.record_outcome(draft_id, Action.ACCEPT)
    with pytest.raises(FeedbackError) as replay:
        api.record_outcome(draft_id, Action.REJECT, "other", dwell_ms=1)
    assert replay.value.status == "ALREADY_EXISTS"
