"""The tenant's store through the Python API: encrypted at rest, redacted, validated."""

from __future__ import annotations

import sqlite3

import pytest
from tamper_helpers import changed_value

from fedloop.client.ingest.recorder import Action, FeedbackError, FeedbackRecorder
from fedloop.client.samples.curation import training_examples
from fedloop.client.store import FeedbackStore
from fedloop.client.store.api import EvaluationKind, Pool, SampleQuery, SampleStatus
from fedloop.shared.crypto import CryptoError

CANARY = "CANARY-7f3a9c-should-never-be-readable"


def test_canary_is_absent_from_raw_sqlite_bytes(make_tenant) -> None:
    tenant = make_tenant()
    api = FeedbackRecorder(tenant.pipeline)
    draft_id = api.record_draft("user-" + CANARY, f"prompt {CANARY}", f"draft {CANARY}", "v0", session_id="s-" + CANARY)
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
    assert tenant.store.drafts.outcome_counts() == {"accept": 1, "edit": 1, "reject": 2}


def test_pii_is_redacted_before_storage_and_vaulted(make_tenant) -> None:
    tenant = make_tenant()
    api = FeedbackRecorder(tenant.pipeline)
    draft_id = api.record_draft("u1", "call me on 13812345678", "ok", "v0")
    api.record_outcome(draft_id, Action.EDIT, "we will call 13812345678", dwell_ms=2000)
    [example] = training_examples(tenant.store, tenant.settings.curation)
    assert example.prompt == "call me on <CN_MOBILE_1>" and example.target == "we will call <CN_MOBILE_1>"
    assert tenant.store.drafts.vault_lookup(draft_id, "<CN_MOBILE_1>") == "13812345678"


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
    assert tenant.store.drafts.outcome_counts() == {}
    api.record_outcome(draft_id, Action.ACCEPT)
    with pytest.raises(FeedbackError) as replay:
        api.record_outcome(draft_id, Action.REJECT, "other", dwell_ms=1)
    assert replay.value.status == "ALREADY_EXISTS"


@pytest.mark.parametrize(
    "edit, read",
    [
        ("UPDATE samples SET weight = 50.0", lambda store, draft_id: store.samples.find()),
        ("UPDATE samples SET pool = 'core_baseline'", lambda store, draft_id: store.samples.find()),
        (
            "UPDATE outcomes SET action = 'accept', reward = 1.0",
            lambda store, draft_id: store.drafts.get_outcome(draft_id),
        ),
        ("UPDATE drafts SET model_version = 'v9'", lambda store, draft_id: store.drafts.get_draft(draft_id)),
        ("UPDATE outcomes SET action = 'accept'", lambda store, draft_id: store.drafts.window_events(["v1"], 0, 0, 0)),
    ],
)
def test_an_sql_edit_of_a_plain_column_is_detected_on_read(make_tenant, edit: str, read) -> None:
    tenant = make_tenant()
    api = FeedbackRecorder(tenant.pipeline)
    draft_id = api.record_draft("u1", "Where is my order?", "On its way.", "v1")
    api.record_outcome(draft_id, Action.EDIT, "It ships on Monday.", dwell_ms=3000)
    assert len(tenant.store.drafts.window_events(["v1"], 0, 0, 0)[0]) == 1 and len(tenant.store.samples.find()) == 1
    with sqlite3.connect(tenant.store.path) as db:
        db.execute(edit)
    with pytest.raises(CryptoError, match=r"failed its integrity check: its plain fields .* were changed outside"):
        read(tenant.store, draft_id)


@pytest.mark.parametrize("version", ["", "v1 with spaces", "v1'; DROP TABLE drafts; --", "x" * 129, "ünïcode"])
def test_model_and_prompt_versions_must_look_like_versions(make_tenant, version: str) -> None:
    api = FeedbackRecorder(make_tenant().pipeline)
    with pytest.raises(FeedbackError, match="draft.model_version .* is not a version"):
        api.record_draft("u1", "Where is my order?", "On its way.", version)
    with pytest.raises(FeedbackError, match="draft.prompt_version .* is not a version"):
        api.record_draft("u1", "Where is my order?", "On its way.", "v1", prompt_version=version)


def test_clearing_a_row_mac_with_sql_does_not_launder_an_edit(make_tenant) -> None:
    tenant = make_tenant()
    api = FeedbackRecorder(tenant.pipeline)
    draft_id = api.record_draft("u1", "Where is my order?", "On its way.", "v1")
    api.record_outcome(draft_id, Action.REJECT, dwell_ms=3000)
    with sqlite3.connect(tenant.store.path) as db:
        db.execute("UPDATE outcomes SET action = 'accept', row_mac = NULL")
    reopened = FeedbackStore(tenant.store.path, tenant.identity.storage, tenant.identity.pseudonym_key)
    with pytest.raises(CryptoError, match="outcomes/.* failed its integrity check"):
        reopened.drafts.get_outcome(draft_id)
    reopened.close()


def test_samples_are_asked_in_types_and_come_back_typed(make_tenant) -> None:
    """A SampleQuery, not an SQL fragment: what a PostgreSQL store would implement the same way."""
    tenant = make_tenant()
    api = FeedbackRecorder(tenant.pipeline)
    accepted = api.record_draft("u1", "Where is my order?", "It ships today.", "v1")
    api.record_outcome(accepted, Action.ACCEPT, dwell_ms=3000)
    rejected = api.record_draft("u2", "Can I return it?", "No.", "v1")
    api.record_outcome(rejected, Action.REJECT, dwell_ms=3000)
    samples = tenant.store.samples
    everything = samples.find()
    assert [s.draft_id for s in everything] == [accepted, rejected]
    assert all(isinstance(s.pool, Pool) and isinstance(s.status, SampleStatus) for s in everything)
    [one] = samples.find(SampleQuery(draft_id=rejected))
    assert one.pool is Pool.CANDIDATE and one.status is SampleStatus.ADMITTED and one.target is None
    assert [s.draft_id for s in samples.find(SampleQuery(trainable=True))] == [accepted]  # the rejection has no reply
    samples.move(one.id, Pool.CORE_BASELINE)
    assert [s.draft_id for s in samples.find(SampleQuery(pools=(Pool.CORE_BASELINE,)))] == [rejected]
    samples.set_status(one.id, SampleStatus.REJECTED, "by ana on review")
    assert samples.find(SampleQuery(status=SampleStatus.REJECTED))[0].reason == "by ana on review"
    assert samples.counts() == {
        (SampleStatus.ADMITTED, Pool.CANDIDATE): 1,
        (SampleStatus.REJECTED, Pool.CORE_BASELINE): 1,
    }
    assert tenant.store.drafts.outcome_counts() == {Action.ACCEPT: 1, Action.REJECT: 1}


def _every_table_filled(tenant) -> dict[str, object]:
    """One row or more in every table of the store, through the store's own writes; what the readers need."""
    from fedloop.client.release.controller import ReleaseController
    from fedloop.client.store.api import InstalledVersion, SignalRecord

    store = tenant.store
    api = FeedbackRecorder(tenant.pipeline)
    draft_id = api.record_draft("u1", "Where is my order?", "On its way.", "v1", session_id="s1")
    api.record_outcome(draft_id, Action.EDIT, "It ships on Monday.", dwell_ms=3000)
    session = store.pseudonym("s1")
    store.drafts.insert_signal(SignalRecord("sig-1", store.pseudonym("u1"), session, "cta_shown", draft_id, "x", 5))
    store.drafts.record_problem(draft_id, "repeated_question", "v1", 7)
    store.samples.set_breaker(True, "quarantine rate 40%")
    store.versions.install(InstalledVersion("v1", 1, "v0", "digest-v1"), b"adapter")
    store.versions.keep_local_part("local_b", b"part")
    store.versions.record_evaluation("v1", EvaluationKind.HIT_RATE, {"hit-rate": 0.4})
    ReleaseController(store, tenant.settings.release).offer("v1", "gates passed")
    return {"draft_id": draft_id, "session": session}


# How each authenticated table is read: every row MAC is checked on these reads (a row whose lookup column was
# edited is read under its new value).
READERS = {
    "drafts": lambda store, known: store.drafts.get_draft(known["draft_id"]),
    "outcomes": lambda store, known: store.drafts.get_outcome(known["draft_id"]),
    "samples": lambda store, known: store.samples.find(),
    "events": lambda store, known: [
        store.drafts.event_mac(event_id)
        for (event_id,) in store.raw_connection().execute("SELECT event_id FROM events").fetchall()
    ],
    "signals": lambda store, known: [
        store.drafts.session_signals(s) for s in (known["session"], known["session"] + "x")
    ],
    "problems": lambda store, known: (store.drafts.window_events(["v1"], 0, 0, 0), store.drafts.user_rates(0, 2**62)),
    "breaker": lambda store, known: store.samples.breaker_state(),
    "evaluations": lambda store, known: (
        store.versions.evaluations("v1"),
        store.versions.evaluations_of_kind(EvaluationKind.HIT_RATE),
    ),
    "installed_versions": lambda store, known: store.versions.installed(),
    "local_parts": lambda store, known: store.versions.local_part("local_b"),
    "releases": lambda store, known: store.versions.release_state(),
}


def test_every_table_is_authenticated_or_says_why_not(make_tenant) -> None:
    """Listed from the schema: a new table that is neither MACed nor explained fails here."""
    from fedloop.client.store.schema import MACED_COLUMNS, UNMACED_TABLES

    tenant = make_tenant()
    _every_table_filled(tenant)
    rows = tenant.store.raw_connection().execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    tables = {row[0] for row in rows}
    assert tables == set(MACED_COLUMNS) | set(UNMACED_TABLES), tables ^ (set(MACED_COLUMNS) | set(UNMACED_TABLES))
    assert set(READERS) == set(MACED_COLUMNS)
    for table in MACED_COLUMNS:
        (count,) = tenant.store.raw_connection().execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        assert count >= 1, f"the tamper test below never edits {table}: fill it in _every_table_filled"


def _plain_columns() -> list[tuple[str, str]]:
    from fedloop.client.store.schema import MACED_COLUMNS

    return [(table, column) for table, columns in MACED_COLUMNS.items() for column in columns[1:]]


@pytest.mark.parametrize(("table", "column"), _plain_columns())
def test_an_sql_edit_of_any_authenticated_column_of_any_table_is_caught_on_read(
    make_tenant, table: str, column: str
) -> None:
    """The release pointer, problems, the breaker, evaluations, installed versions, signals and events too: they
    used to carry no MAC, so an SQL edit could move a release or reset the breaker."""
    tenant = make_tenant()
    known = _every_table_filled(tenant)
    READERS[table](tenant.store, known)  # intact: reads
    changed = changed_value(column)
    if (table, column) == ("outcomes", "action"):
        changed = "CASE WHEN action = 'accept' THEN 'reject' ELSE 'accept' END"
    with sqlite3.connect(tenant.store.path) as db:
        assert db.execute(f"UPDATE {table} SET {column} = {changed}").rowcount >= 1
    with pytest.raises(CryptoError, match=rf"row {table}/.* failed its integrity check"):
        READERS[table](tenant.store, known)
