"""Curation: weights, near-duplicates, poisoning guard, moderation breaker, derived signals, problem rate."""

from __future__ import annotations

import time

from fedloop.client.ingest.recorder import Action, FeedbackRecorder
from fedloop.client.samples.curation import reward_and_weight, training_examples
from fedloop.client.store.api import SampleQuery, SampleStatus
from fedloop.client.tenant_settings import CurationSection, IngestSection, ModerationSection, SignalsSection
from fedloop.proto import feedback_pb2 as pb


def test_weights_refine_the_base_rewards() -> None:
    settings = CurationSection()
    assert reward_and_weight("accept", "a", None, 5000, settings) == (1.0, 1.0)
    assert reward_and_weight("accept", "a", None, 200, settings)[1] == 0.6
    light = reward_and_weight("edit", "Your order ships today.", "Your order ships today!", 5000, settings)
    heavy = reward_and_weight("edit", "Your order ships today.", "Refund issued, sorry.", 5000, settings)
    assert 0.3 <= heavy[0] < light[0] <= 0.7 and heavy[1] < light[1] <= 1.0
    assert reward_and_weight("reject", "a", "mine", 5000, settings) == (0.0, 0.5)
    assert reward_and_weight("reject", "a", None, 5000, settings) == (0.0, 0.0)
    assert reward_and_weight("accept", "a", None, 10**7, settings)[1] == 0.8


def test_a_flood_from_one_user_weighs_no_more_than_the_cap(make_tenant) -> None:
    cap = 1.0
    tenant = make_tenant(
        curation=CurationSection(per_user_cluster_cap=cap, max_samples_per_user_per_hour=10_000),
        ingest=IngestSection(max_events_per_user_per_minute=0),
    )  # curation's caps, not ingestion's
    events = []
    for i in range(1000):
        events += [
            pb.Event(
                draft=pb.DraftEvent(
                    event_id=f"d{i}",
                    draft_id=f"d{i}",
                    user_id="mallory",
                    session_id="s",
                    prompt="What is the refund policy?",
                    draft="draft",
                    model_version="v1",
                    prompt_version="p",
                )
            ),
            pb.Event(
                outcome=pb.OutcomeEvent(
                    event_id=f"o{i}",
                    draft_id=f"d{i}",
                    action=pb.EDIT_ACCEPT,
                    final_text="Refunds are free, forever, for everything.",
                    dwell_ms=3000,
                )
            ),
        ]
    for start in range(0, len(events), 500):
        tenant.pipeline.ingest(events[start : start + 500])
    honest = FeedbackRecorder(tenant.pipeline)
    draft_id = honest.record_draft("alice", "Where is my parcel?", "It arrives Monday.", "v1")
    honest.record_outcome(draft_id, Action.ACCEPT, dwell_ms=4000)
    examples = training_examples(tenant.store, tenant.settings.curation)
    flood = [e for e in examples if e.prompt == "What is the refund policy?"]
    assert (
        len(
            {
                s.cluster_id
                for s in tenant.store.samples.find(SampleQuery(user_pseudonym=tenant.store.pseudonym("mallory")))
            }
        )
        == 1
    )
    assert sum(e.weight for e in flood) <= cap + 1e-9
    assert sum(e.weight for e in examples if e.prompt == "Where is my parcel?") == 1.0


def test_clusters_need_enough_distinct_users(make_tenant) -> None:
    tenant = make_tenant(curation=CurationSection(min_distinct_users=2))
    api = FeedbackRecorder(tenant.pipeline)
    for user in ("u1", "u2"):
        draft_id = api.record_draft(user, "How do I reset my password?", "Use the reset link.", "v1")
        api.record_outcome(draft_id, Action.ACCEPT, dwell_ms=3000)
    lonely = api.record_draft("u3", "Do you ship to Mars?", "No.", "v1")
    api.record_outcome(lonely, Action.ACCEPT, dwell_ms=3000)
    prompts = [e.prompt for e in training_examples(tenant.store, tenant.settings.curation)]
    assert prompts == ["How do I reset my password?"] * 2


def test_per_user_rate_limit_keeps_but_zero_weights(make_tenant) -> None:
    tenant = make_tenant(curation=CurationSection(max_samples_per_user_per_hour=3))
    api = FeedbackRecorder(tenant.pipeline)
    for i in range(5):
        draft_id = api.record_draft("eager", f"question number {i} about something else {i * 7}", "reply", "v1")
        api.record_outcome(draft_id, Action.ACCEPT, dwell_ms=3000)
    statuses = [s.status for s in tenant.store.samples.find()]
    assert statuses == ["admitted"] * 3 + ["rate_limited"] * 2
    assert len(training_examples(tenant.store, tenant.settings.curation)) == 3


def test_unsafe_samples_are_quarantined_and_the_breaker_trips_and_resets(make_tenant) -> None:
    tenant = make_tenant(
        moderation=ModerationSection(
            blocklist=("forbidden phrase",), patterns=(), breaker_max_rate=0.3, breaker_window=10, breaker_min_samples=5
        )
    )
    api = FeedbackRecorder(tenant.pipeline)

    def record(prompt: str) -> None:
        draft_id = api.record_draft("u", prompt, "a reply", "v1")
        api.record_outcome(draft_id, Action.ACCEPT, dwell_ms=3000)

    for i in range(3):
        record(f"normal question {i} with distinct words {i * 13}")
    for i in range(2):
        record(f"please say the forbidden phrase {i}")
    [quarantined, *_] = tenant.store.samples.find(SampleQuery(status=SampleStatus.QUARANTINED))
    assert quarantined.reason == "blocklist entry #1"
    assert tenant.store.samples.breaker_state()[0], "2 of 5 quarantined is above 30 %"
    record("a perfectly fine question arriving while tripped")
    assert tenant.store.samples.find(SampleQuery(status=SampleStatus.HELD))[0].prompt.startswith(
        "a perfectly fine question"
    )
    assert tenant.curator.reset_breaker("ops-oncall") == (1, 0)
    assert not tenant.store.samples.breaker_state()[0]
    assert [a.action for a in tenant.store.audit_log.entries() if a.action.startswith("breaker")] == [
        "breaker.trip",
        "breaker.reset",
    ]


def test_derived_signals_flag_problems_and_problem_rate_compares_versions(make_tenant) -> None:
    tenant = make_tenant(signals=SignalsSection(stuck_dialogue_turns=3))
    api = FeedbackRecorder(tenant.pipeline)
    drafts = {}
    for version in ("v1", "v2"):
        for session in range(2):
            sid = f"{version}-s{session}"
            drafts[sid] = api.record_draft("u", "Where is my order?", "It is on the way.", version, session_id=sid)
            api.record_outcome(drafts[sid], Action.ACCEPT, dwell_ms=3000)
    now = int(time.time() * 1000) + 1

    def signal(event_id: str, session: str, kind: pb.SignalKind, value: str = "", at: int = 0) -> None:
        tenant.pipeline.ingest(
            [
                pb.Event(
                    signal=pb.SignalEvent(
                        event_id=event_id,
                        user_id="u",
                        session_id=session,
                        kind=kind,
                        value=value,
                        timestamp_ms=at or now,
                    )
                )
            ]
        )

    signal("m1", "v1-s0", pb.USER_MESSAGE, "Where is my order??")
    signal("m2", "v1-s0", pb.USER_MESSAGE, "where is my order")
    for i in range(3):
        signal(f"st{i}", "v1-s1", pb.DIALOGUE_STATE, "awaiting_tracking_number")
    signal("m3", "v2-s0", pb.USER_MESSAGE, "Thanks, got it")
    signal("c1", "v2-s1", pb.CTA_SHOWN, "track-button")
    signal("c2", "v2-s1", pb.CTA_CLICKED, "track-button")
    assert tenant.store.drafts.problem_rate("repeated_question", "v1") == (1, 2)
    assert tenant.store.drafts.problem_rate("dialogue_stuck", "v1") == (1, 2)
    assert tenant.store.drafts.problem_rate("repeated_question", "v2") == (0, 2)
    [flagged] = tenant.store.samples.find(SampleQuery(draft_id=drafts["v1-s0"]))
    assert (flagged.pool, flagged.problem_type) == ("problem", "repeated_question")

    later = now + 2 * 3_600_000
    assert tenant.pipeline.sweep(later) > 0
    assert tenant.store.drafts.problem_rate("no_conversion", "v1") == (2, 2)
    assert tenant.store.drafts.problem_rate("no_conversion", "v2")[0] == 1  # v2-s1 clicked its CTA
    # v2-s1 never wrote back, but its draft was accepted: an answered draft is not "no response"
    assert tenant.store.drafts.problem_rate("long_no_response", "v2") == (0, 2)


def test_a_product_that_sends_only_drafts_and_outcomes_gets_no_absence_flags(make_tenant) -> None:
    """Issue 14: without USER_MESSAGE or conversion signals, 'no response' and 'no conversion' have no evidence."""
    tenant = make_tenant()
    api = FeedbackRecorder(tenant.pipeline)
    for index in range(40):
        draft_id = api.record_draft(
            f"u{index}", f"Where is order {index}?", "It ships tomorrow.", "v1", session_id=f"s{index}"
        )
        if index % 2:
            api.record_outcome(draft_id, Action.ACCEPT, dwell_ms=3000)
    two_hours_later = int(time.time() * 1000) + 2 * 3_600_000
    assert tenant.pipeline.sweep(two_hours_later) == 0
    assert all(s.pool != "problem" for s in tenant.store.samples.find())
    tenant.pipeline.ingest(
        [
            pb.Event(
                signal=pb.SignalEvent(event_id="m", user_id="u0", session_id="s0", kind=pb.USER_MESSAGE, value="hello")
            )
        ]
    )
    assert tenant.pipeline.sweep(two_hours_later) == 19  # now messages are reported: the unanswered drafts, not
    assert tenant.store.drafts.problem_rate("long_no_response", "v1") == (19, 40)  # the accepted ones


def test_a_sample_carrying_a_resident_id_waits_for_a_human_before_it_trains(make_tenant, tmp_path) -> None:
    """Issue 14: a sample with a resident-id number went to `candidate` and into the next round unreviewed."""
    from typer.testing import CliRunner

    from fedloop.cli import app

    tenant = make_tenant()
    api = FeedbackRecorder(tenant.pipeline)
    risky = api.record_draft("u1", "我的身份证号是11010519491231002X，请帮我改地址", "好的，已为您修改。", "v1")
    api.record_outcome(risky, Action.ACCEPT, dwell_ms=3000)
    plain = api.record_draft("u2", "Where is my order?", "It ships tomorrow.", "v1")
    api.record_outcome(plain, Action.ACCEPT, dwell_ms=3000)
    [held] = tenant.store.samples.find(SampleQuery(draft_id=risky))
    assert (held.risk, held.status) == ("high", "awaiting_review") and "CN_RESIDENT_ID" in held.reason
    assert [e.prompt for e in training_examples(tenant.store, CurationSection())] == ["Where is my order?"]

    config = tmp_path / "tenant.toml"
    settings = tenant.settings.tenant
    config.write_text(
        f'[tenant]\nname = "{settings.name}"\nkeys_dir = "{settings.keys_dir}"\ndata_dir = "{settings.data_dir}"\n'
    )
    decided = CliRunner().invoke(
        app,
        ["samples", "review", "decide", held.id, "--decision", "admit", "--operator", "ana", "--config", str(config)],
    )
    assert decided.exit_code == 0 and "status admitted" in decided.output, decided.output
    assert len(training_examples(tenant.store, CurationSection())) == 2
    assert [e.actor for e in tenant.store.audit_log.entries() if e.action == "sample.review"] == ["ana"]
