"""A continuous run's schedule: a round starts from the tenants' feedback counts or after the longest interval."""

from __future__ import annotations

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedloop.server.continuous import declined_versions, new_samples
from fedloop.server.schedule_state import schedule_state
from fedloop.shared.settings import AggregationSection, ScheduleSection, Settings

SETTINGS = Settings(
    schedule=ScheduleSection(min_new_samples=3000, max_interval_s=86_400),
    aggregation=AggregationSection(min_tenants=2),
)


def test_a_round_starts_when_enough_tenants_have_enough_new_samples() -> None:
    waiting = schedule_state({"acme": 3200, "bolt": 900}, SETTINGS, now=1000.0, last_round_at=0.0, rounds_done=1)
    assert not waiting.start and waiting.ready == ["acme"] and waiting.needed == 2
    assert waiting.reason.startswith("waiting: 1 of the 2 tenants a round needs have 3000 new samples")
    assert "at the latest in 85400 s" in waiting.reason and waiting.next_due_at == 86_400
    ready = schedule_state({"acme": 3200, "bolt": 3000}, SETTINGS, now=1000.0, last_round_at=0.0, rounds_done=1)
    assert ready.start and ready.reason == "2 tenants have 3000 new samples (acme, bolt)"


def test_a_round_starts_after_the_longest_interval_and_never_by_time_when_it_is_0() -> None:
    due = schedule_state({"acme": 10, "bolt": 0}, SETTINGS, now=86_400.0, last_round_at=0.0, rounds_done=1)
    assert due.start and due.reason == "86400 s since the last round"
    never = SETTINGS.model_copy(update={"schedule": SETTINGS.schedule.model_copy(update={"max_interval_s": 0})})
    assert not schedule_state({"acme": 10}, never, now=1e9, last_round_at=0.0, rounds_done=1).start


def test_a_counts_reply_that_is_not_a_count_is_ignored() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    question = Message(RecordDict({"counts": ConfigRecord({})}), dst_node_id=5, message_type="query.counts")
    TaskIdentity.node_id = 5

    def answer(value: float) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"new-samples": value})}), reply_to=question)

    assert new_samples(answer(42)) == 42
    assert [new_samples(answer(v)) for v in (-1, float("inf"), float("nan"))] == [None, None, None]
    assert new_samples(Message(RecordDict({}), reply_to=question)) is None


def test_a_counts_reply_names_the_versions_the_tenant_declined_and_a_malformed_list_names_none() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    question = Message(RecordDict({"counts": ConfigRecord({})}), dst_node_id=5, message_type="query.counts")
    TaskIdentity.node_id = 5

    def answer(names: list[str]) -> Message:
        metrics, declined = MetricRecord({"new-samples": 1}), ConfigRecord({"declined": names})
        return Message(RecordDict({"metrics": metrics, "declined": declined}), reply_to=question)

    assert declined_versions(answer(["v0002-aa", "v0003-bb"])) == {"v0002-aa", "v0003-bb"}
    assert declined_versions(answer(["v"] * 65)) == set()  # more than a reply may name
    assert declined_versions(answer(["x" * 65, "v0004-cc"])) == {"v0004-cc"}
