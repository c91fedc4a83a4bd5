"""An always-valid confidence interval for the gap between two rates: the canary test that allows repeated looks.

A fixed-sample test checked after every few outcomes finds a difference that
is not there far more often than its nominal 5 %. The mixture sequential
probability ratio test (mSPRT, Johari et al., "Always valid inference", 2017)
does not: with a normal mixture of scale tau over the gap theta and the
normal approximation of the two rates, the statistic against theta_0 is

    Lambda(theta_0) = sqrt(V / (V + tau^2)) * exp(tau^2 (g - theta_0)^2 / (2 V (V + tau^2)))

where g is the observed gap and V its variance. The theta_0 with
Lambda < 1 / alpha form a confidence sequence: it holds the true gap at every
look at once with probability at least 1 - alpha, however often it is looked
at and whenever the looking stops. Its half-width follows in closed form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class GapInterval:
    """The observed gap of two rates (a minus b) and its always-valid interval at `confidence`."""

    estimate: float
    low: float
    high: float
    confidence: float

    def describe(self) -> str:
        """The gap and interval in points, e.g. `+3.1 pts [-0.4, +6.6] (98.3 %)`."""
        return (
            f"{self.estimate * 100:+.1f} pts [{self.low * 100:+.1f}, {self.high * 100:+.1f}] "
            f"({self.confidence:.1%} always valid)"
        )


def _variance(successes: int, count: int) -> float:
    # A rate of exactly 0 or 1 would claim zero variance; half a success of smoothing keeps it honest.
    rate = (successes + 0.5) / (count + 1)
    return rate * (1 - rate) / count


def gap_interval(
    a_successes: int, a_count: int, b_successes: int, b_count: int, confidence: float, tau: float
) -> GapInterval:
    """The rate gap a - b with its mSPRT confidence sequence at `confidence` (mixture scale `tau`); ValueError when
    successes are not within their counts (rates of different denominators: a caller's bug, named, not a
    `math domain error` from the square root)."""
    if not (0 <= a_successes <= max(a_count, 0) and 0 <= b_successes <= max(b_count, 0)):
        raise ValueError(
            f"successes {a_successes}/{a_count} and {b_successes}/{b_count} are not rates: each count of successes "
            "must lie within its own count"
        )
    if a_count < 1 or b_count < 1:
        return GapInterval(0.0, -1.0, 1.0, confidence)
    estimate = a_successes / a_count - b_successes / b_count
    variance = _variance(a_successes, a_count) + _variance(b_successes, b_count)
    spread = variance + tau * tau
    half_width = math.sqrt(
        variance * spread / (tau * tau) * (2 * math.log(1 / (1 - confidence)) + math.log(spread / variance))
    )
    # A gap of two rates lies in [-1, 1]: the interval is cut to it (coverage and decisions are unchanged).
    return GapInterval(estimate, max(-1.0, estimate - half_width), min(1.0, estimate + half_width), confidence)
