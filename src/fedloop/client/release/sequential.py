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

import numpy as np
from numpy.typing import ArrayLike, NDArray

Floats = NDArray[np.float64]


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


def half_width(variance: ArrayLike, confidence: float, tau: float) -> Floats:
    """Half the width of the mSPRT confidence sequence of a gap whose estimate has `variance` (floats or arrays)."""
    variance = np.maximum(np.asarray(variance, dtype=np.float64), 1e-18)
    spread = variance + tau * tau
    return np.sqrt(variance * spread / (tau * tau) * (2 * math.log(1 / (1 - confidence)) + np.log(spread / variance)))


def gap_interval(estimate: float, variance: float, confidence: float, tau: float) -> GapInterval:
    """The gap `estimate` with its mSPRT confidence sequence at `confidence` (mixture scale `tau`), cut to [-1, 1]
    (a gap of two rates lies there: coverage and decisions are unchanged)."""
    width = float(half_width(variance, confidence, tau))
    return GapInterval(float(estimate), max(-1.0, estimate - width), min(1.0, estimate + width), confidence)
