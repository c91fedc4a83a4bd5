"""Canary against control over a window: the gaps of the three rates with their always-valid intervals, and what
they decide (worse, a win, ready), from the arms' per-user sums."""

from __future__ import annotations

from dataclasses import dataclass

from fedloop.client.release.sequential import GapInterval, gap_interval, half_width
from fedloop.client.release.user_statistics import Floats, adjusted_gap, rates
from fedloop.client.store.api import ArmStats
from fedloop.client.tenant_settings import ReleaseSection

ROLLBACK_TESTS = 3  # hit rate, reject rate, complaint rate share the error budget ...
STAGES = 2  # ... and so do the canary's two windows (canary_share, then widened_share)


def interval_level(settings: ReleaseSection) -> float:
    """The confidence of each interval: 1 - (1 - confidence) / (stages x rollback tests)."""
    return 1 - (1 - settings.confidence) / (STAGES * ROLLBACK_TESTS)


def arm_stats(version: str, sums: Floats) -> ArmStats:
    """The counts of one arm, read from its sums."""
    accepts, rejects, flagged = (round(float(rate * sums[1])) for rate in rates(sums))
    return ArmStats(version, int(sums[0]), int(sums[1]), accepts, rejects, flagged)


@dataclass(frozen=True)
class Comparison:
    """Canary against control over the current window, the user as the unit, with always-valid gap intervals."""

    canary: ArmStats
    control: ArmStats
    hit_gap: GapInterval
    reject_gap: GapInterval
    complaint_gap: GapInterval

    @classmethod
    def of(
        cls, canary: ArmStats, control: ArmStats, sums: tuple[Floats, Floats], settings: ReleaseSection
    ) -> Comparison:
        """Compare two arms from their sums (canary, control); each interval at `interval_level(settings)`."""
        level = interval_level(settings)

        def gap(metric: str) -> GapInterval:
            estimate, variance = adjusted_gap(sums[0], sums[1], metric)
            return gap_interval(float(estimate), float(variance), level, settings.mixture_scale)

        return cls(canary, control, gap("accept"), gap("reject"), gap("flagged"))

    def ready(self, settings: ReleaseSection) -> bool:
        """Whether both arms have enough decided drafts and users for any decision."""
        arms = (self.canary, self.control)
        return (
            min(arm.decided for arm in arms) >= settings.min_drafts_per_arm
            and min(arm.users for arm in arms) >= settings.min_users_per_arm
        )

    def worse(self) -> str | None:
        """Which rate shows the canary worse than control with confidence, or None."""
        if self.hit_gap.high < 0:
            return "hit rate lower"
        if self.reject_gap.low > 0:
            return "reject rate higher"
        if self.complaint_gap.low > 0:
            return "complaint rate higher"
        return None

    def wins(self, promote_margin: float) -> bool:
        """Whether the canary's hit rate beats control's by at least `promote_margin`, with confidence."""
        return self.hit_gap.low > promote_margin

    def summary(self) -> str:
        """One line for logs and release records."""
        return (
            f"canary {self.canary.version} hit {self.canary.hit_rate:.1%} reject {self.canary.reject_rate:.1%} "
            f"complaints {self.canary.complaint_rate:.1%} (n={self.canary.decided}, {self.canary.users} users) vs "
            f"control {self.control.version} hit {self.control.hit_rate:.1%} reject {self.control.reject_rate:.1%} "
            f"complaints {self.control.complaint_rate:.1%} (n={self.control.decided}, {self.control.users} users); "
            f"hit-rate gap {self.hit_gap.describe()}"
        )

    def drafts_to_resolve(self, settings: ReleaseSection) -> int | None:
        """About how many more decided drafts (both arms) until a hit-rate gap of `mixture_scale` would be decided,
        extrapolating the variance as 1 / drafts; None before any draft was decided."""
        drafts = self.canary.decided + self.control.decided
        width = (self.hit_gap.high - self.hit_gap.low) / 2
        if drafts == 0 or min(self.canary.decided, self.control.decided) == 0:
            return None
        variance = _variance_of(width, interval_level(settings), settings.mixture_scale)
        needed = drafts
        while (
            half_width(variance * drafts / needed, interval_level(settings), settings.mixture_scale)
            > settings.mixture_scale
        ):
            needed *= 2
        low = needed // 2
        while needed - low > max(1, needed // 100):
            middle = (low + needed) // 2
            if (
                half_width(variance * drafts / middle, interval_level(settings), settings.mixture_scale)
                > settings.mixture_scale
            ):
                low = middle
            else:
                needed = middle
        return max(0, needed - drafts)


def _variance_of(width: float, level: float, tau: float) -> float:
    """The variance whose mSPRT half-width is `width` (half_width increases with the variance: bisection)."""
    low, high = 1e-12, 1.0
    for _ in range(60):
        middle = (low * high) ** 0.5
        if half_width(middle, level, tau) < width:
            low = middle
        else:
            high = middle
    return low
