"""Where HQ records what a federated run produced: the registry (versions, rounds, metrics, audit) and MLflow.

SealedMerge verifies and merges; everything it learns about a round is written
here and nowhere else, so the strategy's aggregation stays free of storage.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from fedloop.server.registry import VersionRecord, VersionRegistry
from fedloop.shared.adapter import AdapterState, adapter_to_bytes
from fedloop.shared.protocol import HIT_RATE, NUM_EXAMPLES

if TYPE_CHECKING:
    from fedloop.server.strategy import RoundReport
    from fedloop.server.tracking import MlflowTracker


class RoundLedger:
    """Records one run's versions and rounds in the registry, and (if configured) in MLflow."""

    def __init__(
        self, registry: VersionRegistry, run: str, settings: dict[str, Any], tracker: MlflowTracker | None = None
    ) -> None:
        self.registry = registry
        self.run = run
        self.settings = settings  # the aggregation and LoRA settings every version records
        self.tracker = tracker

    def record_version(
        self, merged: AdapterState, parent: VersionRecord, round_: int, method: str, contributors: dict[str, int]
    ) -> VersionRecord:
        """Register a round's merged adapter as a new signed version of `parent`."""
        return self.registry.create(
            adapter_to_bytes(merged), parent.id, self.run, round_, contributors, method, self.settings
        )

    def record_round(self, report: RoundReport, version: VersionRecord, state: AdapterState) -> None:
        """A finished round: its refusals (audited), its report, its tenants' hit rates, and MLflow's step."""
        for tenant, reason in report.refusal_reasons.items():
            self.registry.audit("hq", "update.refused", f"run {self.run} round {report.round} {tenant}: {reason}")
        document = asdict(report)
        self.registry.record_round(self.run, report.round, version.id, document)
        if self.tracker is not None:
            self.tracker.log_round(report.round, document, version.id, state)
        if report.evaluation:
            measured = report.measured()
            self.registry.record_metrics(
                version.id,
                {
                    HIT_RATE: {t: m[HIT_RATE] for t, m in measured.items()},
                    NUM_EXAMPLES: {t: m[NUM_EXAMPLES] for t, m in measured.items()},
                },
            )
