"""The one definition of a version's mean hit rate over tenants: pooled over their held-out finals.

Each tenant measures its offline hit rate on its own held-out finals and reports
the rate with its count. The mean over tenants is the pooled rate, all hits over
all finals (a tenant with more finals weighs more), with its 95 % Wilson
interval and its count; the run log, `fedloop versions list`, MLflow and the
report all print this figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fedloop.shared.intervals import wilson_interval
from fedloop.shared.protocol import HIT_RATE, NUM_EXAMPLES


@dataclass(frozen=True)
class PooledHitRate:
    """Hits over held-out finals, pooled over tenants, with its 95 % interval."""

    hits: int
    count: int

    @property
    def rate(self) -> float:
        """The pooled hit rate."""
        return self.hits / self.count

    @property
    def interval(self) -> tuple[float, float]:
        """The 95 % Wilson interval of the rate."""
        return wilson_interval(self.hits, self.count)

    def __str__(self) -> str:
        low, high = self.interval
        return f"{self.rate:.1%} [{low:.1%}, {high:.1%}] of {self.count}"


def pooled_hit_rate(measured: Mapping[str, Mapping[str, float]]) -> PooledHitRate | None:
    """The pooled hit rate of tenants' evaluation metrics (each with HIT_RATE and NUM_EXAMPLES); None when no tenant
    has held-out finals."""
    counts = {tenant: int(m.get(NUM_EXAMPLES, 0)) for tenant, m in measured.items()}
    count = sum(counts.values())
    if not count:
        return None
    hits = sum(round(float(measured[tenant][HIT_RATE]) * n) for tenant, n in counts.items() if n)
    return PooledHitRate(hits, count)
