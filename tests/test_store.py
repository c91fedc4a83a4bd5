"""The tenant's feedback store: encrypted at rest, redacted, validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedloop.client.feedback import Action, FeedbackError, FeedbackRecorder
from fedloop.client.privacy import Redactor
from fedloop.client.store import FeedbackStore

CANARY = "CANARY-7f3a9c-should-never-be-readable"


@pytest.fixture()
def recorder(tmp_path: Path) -> tuple[FeedbackRecorder, FeedbackStore]:
    store = FeedbackStore(tmp_path / "feedback.db", b"k" * 16)
    return FeedbackRecorder(store, Redactor()), store


def test_canary_is_absent_from_raw_sqlite_bytes(recorder, tmp_path: Path) -> None:
    api, store = recorder
    draft_id = api.record_draft("user-" + CANARY, f"prompt {CANARY}", f"draft {CANARY}", "v0")
    api.record_outcome(draft_id, Action.EDIT, f"final {CANARY}")
    assert [e.target for e in store.training_examples()] == [f"final {CANARY}"]
    store.close()
    files = list(tmp_path.glob("feedback.db*"))
    assert files
    for path in files:
        raw = path.read_bytes()
        assert CANARY.encode() not in raw and b"CANARY" not in raw


def test_rewards_and_training_targets(recorder) -> None:
    api, store = recorder
    accepted = api.record_draft("u1", "q1", "draft one", "v0")
    edited = api.record_draft("u2", "q2", "draft two", "v0")
    rejected = api.record_draft("u3", "q3", "draft three", "v0")
    silent = api.record_draft("u4", "q4", "draft four", "v0")
    assert api.record_outcome(accepted, "accept") == 1.0
    assert api.record_outcome(edited, Action.EDIT, "edited two") == 0.3
    assert api.record_outcome(rejected, Action.REJECT, "my own reply") == 0.0
    assert api.record_outcome(silent, Action.REJECT) == 0.0
    targets = {e.prompt: (e.target, e.reward) for e in store.training_examples()}
    assert targets == {"q1": ("draft one", 1.0), "q2": ("edited two", 0.3), "q3": ("my own reply", 0.0)}
    assert store.outcome_counts() == {"accept": 1, "edit": 1, "reject": 2}


def test_pii_is_redacted_before_storage(recorder) -> None:
    api, store = recorder
    draft_id = api.record_draft("u1", "call me on 13812345678", "ok", "v0")
    api.record_outcome(draft_id, Action.EDIT, "we will call 13812345678")
    [example] = store.training_examples()
    assert example.prompt == "call me on <CN_MOBILE>" and example.target == "we will call <CN_MOBILE>"


def test_bad_outcomes_are_refused_and_nothing_is_stored(recorder) -> None:
    api, store = recorder
    with pytest.raises(FeedbackError, match="unknown draft id"):
        api.record_outcome("nope", Action.ACCEPT)
    draft_id = api.record_draft("u1", "q", "d", "v0")
    with pytest.raises(FeedbackError, match="needs final_text"):
        api.record_outcome(draft_id, Action.EDIT)
    with pytest.raises(FeedbackError, match="unknown action"):
        api.record_outcome(draft_id, "maybe")
    with pytest.raises(FeedbackError, match="empty"):
        api.record_draft("u1", " ", "d", "v0")
    assert store.outcome_counts() == {}
    api.record_outcome(draft_id, Action.ACCEPT)
    with pytest.raises(FeedbackError, match="already has an outcome"):
        api.record_outcome(draft_id, Action.REJECT)
