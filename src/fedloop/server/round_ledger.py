"""What a federated run produced: each round's report (RoundReport) and where it is recorded (RoundLedger).

SealedMerge verifies and merges; everything it learns about a round is written
here and nowhere else (the registry: versions, rounds, metrics, audit; MLflow if
configured), so the strategy's aggregation stays free of storage.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from fedloop.server.registry import VersionRecord, VersionRegistry
from fedloop.shared.adapter import AdapterState, adapter_to_bytes
from fedloop.shared.protocol import HIT_RATE, NUM_EXAMPLES

if TYPE_CHECKING:
    from fedloop.server.tracking import MlflowTracker

log = logging.getLogger(__name__)


@dataclass
class RoundReport:
    """What happened in one round, for the run summary."""

    round: int
    version: str | None = None
    parent: str | None = None
    contributors: dict[str, int] = field(default_factory=dict)
    bytes_to_hq: dict[str, int] = field(default_factory=dict)
    bytes_to_tenant: dict[str, int] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # tenant -> why its update was not merged
    refusal_reasons: dict[str, str] = field(default_factory=dict)  # tenant -> the short reason code
    refused_by_reason: dict[str, int] = field(default_factory=dict)
    merge_notes: dict[str, str] = field(default_factory=dict)
    train_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    dataset_versions: dict[str, str] = field(default_factory=dict)  # signed by each tenant, no data behind it
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict)
    started_at: float = 0.0  # wall clock when the round's first message was sealed
    duration_s: float = 0.0  # from then until the tenants' evaluations were back

    def measured(self) -> dict[str, dict[str, float]]:
        """The evaluations of tenants that had held-out finals to measure a hit rate on."""
        return {t: m for t, m in self.evaluation.items() if m.get(NUM_EXAMPLES, 0) > 0}

    def accept(self, tenant: str, num_examples: int, dataset_version: str, train_metrics: dict[str, float]) -> None:
        """A tenant's update was accepted for merging."""
        self.contributors[tenant] = num_examples
        self.dataset_versions[tenant] = dataset_version
        self.train_metrics[tenant] = train_metrics

    def refuse(self, tenant: str, message: str, reason: str) -> None:
        """A tenant's reply was not merged: why (`message`) and its short reason code, counted and logged."""
        self.refused[tenant] = message
        self.refusal_reasons[tenant] = reason
        self.refused_by_reason[reason] = self.refused_by_reason.get(reason, 0) + 1
        log.warning("round %d: refused update from %s (%s): %s", self.round, tenant, reason, message)


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
