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


def test_a_tenant_that_leaves_is_dropped_and_its_new_node_enrolled_once_it_comes_back(tmp_path) -> None:
    """A tenant's SuperNode restarts under a new node id: the run drops the old node and enrols the new one (a
    fresh challenge); a node that fails enrolment is not challenged again at every poll."""
    from dataclasses import dataclass, field
    from typing import Any, cast

    from fedloop.server.continuous import ContinuousRun
    from fedloop.shared.keys import init_keys

    acme, bolt = (init_keys("tenant", name, tmp_path / "keys").public for name in ("acme", "bolt"))

    @dataclass
    class Nodes:  # what the SuperLink reports as connected; only get_node_ids is asked here
        ids: set[int]

        def get_node_ids(self) -> list[int]:
            return sorted(self.ids)

    @dataclass
    class Enrolled:
        tenants: dict[int, Any] = field(default_factory=dict)

    challenged: list[list[int]] = []

    def enrol(nodes: list[int]) -> dict[int, Any]:
        challenged.append(nodes)
        return {node: {11: acme, 12: bolt, 21: bolt}[node] for node in nodes if node != 99}

    grid, strategy = Nodes({11, 12}), Enrolled({11: acme, 12: bolt})
    run = ContinuousRun(cast(Any, grid), cast(Any, strategy), enrol, SETTINGS, tmp_path / "schedule.json")
    grid.ids = {11}  # bolt's machine went away
    run._follow_nodes()
    assert strategy.tenants == {11: acme}
    grid.ids = {11, 21, 99}  # bolt is back under a new node id; node 99 is no tenant of ours
    run._follow_nodes()
    run._follow_nodes()
    assert strategy.tenants == {11: acme, 21: bolt} and challenged == [[21, 99]]
