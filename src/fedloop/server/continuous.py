"""A continuous run: rounds start from the tenants' feedback counts instead of a fixed number (`[schedule]`).

Between rounds HQ asks each enrolled tenant only for its count of new
training samples since the global version it holds (the `counts` query: no
adapter travels, nothing trains), every `schedule.poll_s`. A round starts
when at least `schedule.min_tenants` (0 = aggregation.min_tenants) tenants
report `schedule.min_new_samples`, or `schedule.max_interval_s` after the
previous round, whichever comes first. Before each poll, nodes that left are
dropped and nodes that joined (a tenant that restarted gets a new node) are
enrolled with a fresh challenge. Why the next round has not started is written
to the run directory's `schedule.json` after every poll, for `fedloop status
--hq` and HQ's metrics. An HQ restart starts a new run, which continues from
the registry's newest version (src/fedloop/server/app.py).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedloop.server.registry import RegistryError
from fedloop.server.schedule_state import schedule_state
from fedloop.server.strategy import SealedMerge
from fedloop.shared.files import write_atomic
from fedloop.shared.keys import PartyPublicKey
from fedloop.shared.protocol import COUNTS, DECLINED, MAX_DECLINED, METRICS, NEW_SAMPLES
from fedloop.shared.settings import Settings

log = logging.getLogger(__name__)
MAX_VERSION_ID = 64  # longer names are not fedloop's version ids

Enrol = Callable[[list[int]], dict[int, PartyPublicKey]]


def declined_versions(reply: Message) -> set[str]:
    """The versions a tenant's `counts` reply names as refused or rolled back there (malformed: none)."""
    if reply.has_error() or DECLINED not in reply.content.config_records:
        return set()
    names = reply.content.config_records[DECLINED].get(DECLINED)
    if not isinstance(names, list) or len(names) > MAX_DECLINED:
        return set()
    return {name for name in names if isinstance(name, str) and 0 < len(name) <= MAX_VERSION_ID}


def new_samples(reply: Message) -> int | None:
    """The count a tenant's `counts` reply reports, or None if the reply is not a finite non-negative number."""
    if reply.has_error() or METRICS not in reply.content.metric_records:
        return None
    value = reply.content.metric_records[METRICS].get(NEW_SAMPLES)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return int(value)


class ContinuousRun:
    """Rounds of `strategy` started by the tenants' feedback counts, until `schedule.max_rounds` or stopped."""

    def __init__(
        self,
        grid: Grid,
        strategy: SealedMerge,
        enrol: Enrol,
        settings: Settings,
        state_file: Path,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._grid, self._strategy, self._enrol, self._settings = grid, strategy, enrol, settings
        self._state_file, self._clock, self._sleep = state_file, clock, sleep
        self._refused: set[int] = set()

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> int:
        """Poll, start rounds when due; returns the number of rounds run."""
        schedule, rounds, last_round_at = self._settings.schedule, 0, self._clock()
        while not should_stop() and (schedule.max_rounds == 0 or rounds < schedule.max_rounds):
            self._follow_nodes()
            state = schedule_state(self._counts(), self._settings, self._clock(), last_round_at, rounds)
            write_atomic(self._state_file, json.dumps(state.as_dict(), indent=2).encode(), 0o644)
            if not state.start:
                log.info("continuous run: %s", state.reason)
                self._sleep(schedule.poll_s)
                continue
            rounds += 1
            log.info("continuous run: round %d starts: %s", rounds, state.reason)
            self.run_round(rounds)
            last_round_at = self._clock()
        return rounds

    def _follow_nodes(self) -> None:
        """Drop tenants whose node left; enrol nodes that joined (a tenant's new node replaces its old one)."""
        tenants = self._strategy.tenants
        present = set(self._grid.get_node_ids())
        for node in set(tenants) - present:
            log.warning("continuous run: tenant %s (node %s) left", tenants.pop(node).name, node)
        joined = sorted(present - set(tenants) - self._refused)
        if not joined:
            return
        enrolled = self._enrol(joined)
        self._refused |= set(joined) - set(enrolled)
        for node, key in enrolled.items():
            for old in [n for n, k in tenants.items() if k.name == key.name]:
                del tenants[old]
            tenants[node] = key
            log.info("continuous run: tenant %s (node %s) enrolled", key.name, node)

    def _counts(self) -> dict[str, int]:
        """Each enrolled tenant's new training samples (tenants that do not answer in time count 0); a version
        every enrolled tenant names as refused or rolled back is declined in the registry."""
        tenants = self._strategy.tenants
        queries = [
            Message(
                RecordDict({COUNTS: ConfigRecord({})}), dst_node_id=node, message_type=f"{MessageType.QUERY}.{COUNTS}"
            )
            for node in tenants
        ]
        counts = {key.name: 0 for key in tenants.values()}
        declined: dict[str, set[str]] = {}
        for reply in self._grid.send_and_receive(queries, timeout=self._settings.schedule.query_timeout_s):
            key = tenants.get(reply.metadata.src_node_id)
            count = new_samples(reply)
            if key is None or count is None:
                log.warning("continuous run: node %s sent no usable count", reply.metadata.src_node_id)
                continue
            counts[key.name] = count
            declined[key.name] = declined_versions(reply)
        if declined and len(declined) == len(counts):
            self._decline(set.intersection(*declined.values()), sorted(declined))
        return counts

    def _decline(self, versions: set[str], tenants: list[str]) -> None:
        registry = self._strategy.ledger.registry
        for version in sorted(versions):
            try:
                status = registry.get(version).status
            except RegistryError:
                continue  # not a version of this registry
            if status not in ("declined", "rolled_back"):
                self._strategy.decline(version, tenants)

    def run_round(self, round_: int) -> None:
        """One round: train on every enrolled tenant, merge, then let every tenant evaluate the new version."""
        strategy, timeout = self._strategy, self._settings.federation.round_timeout_s
        messages = strategy.configure_train(round_, ArrayRecord(strategy.current_state), ConfigRecord(), self._grid)
        strategy.aggregate_train(round_, self._grid.send_and_receive(messages, timeout=timeout))
        messages = strategy.configure_evaluate(round_, ArrayRecord(strategy.current_state), ConfigRecord(), self._grid)
        strategy.aggregate_evaluate(round_, self._grid.send_and_receive(messages, timeout=timeout))
