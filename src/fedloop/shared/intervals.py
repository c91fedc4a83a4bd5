"""Confidence intervals for rates: the Wilson score interval, which stays inside [0, 1] at small counts."""

from __future__ import annotations

import math

Z_95 = 1.959964


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of `successes` / `trials` (95 % by default); (0, 1) when nothing was tried."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference_interval(first: list[bool], second: list[bool], z: float = Z_95) -> tuple[float, float, float]:
    """Difference of two hit rates measured on the same items, with its normal-approximation interval (95 %).

    Returns (difference, low, high) of mean(first) - mean(second); the per-item
    differences are in {-1, 0, 1}, so pairing removes the items both got right or wrong.
    """
    if len(first) != len(second) or not first:
        raise ValueError("paired hit rates need the same, non-empty list of items")
    differences = [int(a) - int(b) for a, b in zip(first, second, strict=True)]
    count = len(differences)
    mean = sum(differences) / count
    variance = sum((d - mean) ** 2 for d in differences) / max(1, count - 1)
    half = z * math.sqrt(variance / count)
    return mean, max(-1.0, mean - half), min(1.0, mean + half)
