"""HQ's Prometheus metrics, read from the registry database at scrape time.

The ServerApp that runs the rounds is a separate process (started by the
SuperLink for each run); it writes every round's report and every version to
the registry. `fedloop hq up` serves these figures from there, opening the
database read-only on each scrape: no keys are needed and nothing is written.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fedloop.server.registry import STATUSES
from fedloop.server.schedule_state import read_schedule_state
from fedloop.shared.metrics import HQ_METRICS
from fedloop.shared.run_layout import RunLayout


def _counter(metric: str, labels: list[str] | None = None) -> CounterMetricFamily:
    return CounterMetricFamily(metric.removesuffix("_total"), HQ_METRICS[metric], labels=labels)


def _gauge(metric: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(metric, HQ_METRICS[metric], labels=labels)


class RegistryCollector(Collector):
    """Rounds, durations, tenants, refusals, bytes and versions from `registry.db`; a continuous run's schedule
    (why the next round waits) from `schedule.json`."""

    def __init__(self, database: Path, schedule: Path) -> None:
        self._database = database
        self._schedule = schedule

    def _rows(self) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Round reports (round >= 1, oldest first) and version counts by status; empty if no registry yet."""
        if not self._database.exists():
            return [], {}
        db = sqlite3.connect(f"file:{self._database}?mode=ro", uri=True, timeout=5)
        try:
            reports = [json.loads(r) for (r,) in db.execute("SELECT report FROM rounds WHERE round >= 1 ORDER BY seq")]
            statuses = dict(db.execute("SELECT status, COUNT(*) FROM versions GROUP BY status").fetchall())
        except sqlite3.OperationalError:  # a registry created before rounds were recorded, or mid-creation
            return [], {}
        finally:
            db.close()
        return reports, statuses

    def collect(self) -> Iterator[Metric]:
        """The HQ metrics of HQ_METRICS."""
        reports, statuses = self._rows()
        rounds = _counter("fedloop_hq_rounds_total")
        rounds.add_metric([], len(reports))
        duration = _gauge("fedloop_hq_round_duration_seconds")
        tenants = _gauge("fedloop_hq_round_tenants")
        if reports:
            duration.add_metric([], float(reports[-1].get("duration_s", 0.0)))
            tenants.add_metric([], len(reports[-1].get("contributors", {})))
        refused = _counter("fedloop_hq_refused_deltas_total", ["reason"])
        reasons: Counter[str] = Counter()
        for report in reports:
            reasons.update(report.get("refused_by_reason", {}))
        for reason, count in sorted(reasons.items()):
            refused.add_metric([reason], count)
        received = _counter("fedloop_hq_received_bytes_total")
        received.add_metric([], sum(sum(r.get("bytes_to_hq", {}).values()) for r in reports))
        versions = _gauge("fedloop_hq_versions", ["status"])
        for status in STATUSES:
            versions.add_metric([status], statuses.get(status, 0))
        yield from (rounds, duration, tenants, refused, received, versions)
        yield from self._schedule_figures()

    def _schedule_figures(self) -> Iterator[Metric]:
        state = read_schedule_state(self._schedule)
        if state is None:
            return
        ready, needed = _gauge("fedloop_hq_schedule_ready_tenants"), _gauge("fedloop_hq_schedule_needed_tenants")
        ready.add_metric([], len(state.get("ready", [])))
        needed.add_metric([], state.get("needed", 0))
        samples = _gauge("fedloop_hq_schedule_new_samples", ["tenant"])
        for tenant, count in sorted(state.get("counts", {}).items()):
            samples.add_metric([tenant], count)
        yield from (ready, needed, samples)
        if state.get("next_due_at") is not None:
            due = _gauge("fedloop_hq_schedule_due_in_seconds")
            due.add_metric([], max(0.0, state["next_due_at"] - time.time()))
            yield due


def hq_registry(layout: RunLayout) -> CollectorRegistry:
    """A Prometheus registry exporting HQ's metrics from the registry and schedule of `layout`."""
    registry = CollectorRegistry()
    registry.register(RegistryCollector(layout.hq / "registry.db", layout.schedule))
    return registry
