"""The canary test under repeated looks, with simulated outcomes at the default traffic (5 % canary, then 30 %).

Each run feeds outcomes of both arms to the controller's own decision rule
(`Comparison.of(...).worse()` / `.wins()`) every 100 drafts, exactly as the
release loop looks while traffic arrives, until the canary is rolled back,
promoted, or the horizon ends.
"""

from __future__ import annotations

import numpy as np

from fedloop.client.release.controller import Comparison
from fedloop.client.store_api import ArmStats
from fedloop.client.tenant_settings import ReleaseSection

DEFAULTS = ReleaseSection()
RUNS = 200
HORIZON = 60_000  # drafts per run
LOOK_EVERY = 100  # drafts between two looks
CONTROL_HIT, CONTROL_REJECT = 0.30, 0.30


def run_canary(rng: np.random.Generator, canary_hit: float, canary_reject: float) -> str:
    """One canary's life under the default settings: "rollback", "promote" or "undecided"."""
    share, wins = DEFAULTS.canary_share, 0
    counts = np.zeros((2, 3), dtype=np.int64)  # [canary, control] x [decided, accepts, rejects]
    for _ in range(HORIZON // LOOK_EVERY):
        canary_drafts = rng.binomial(LOOK_EVERY, share)
        for arm, (drafts, hit, reject) in enumerate(
            ((canary_drafts, canary_hit, canary_reject), (LOOK_EVERY - canary_drafts, CONTROL_HIT, CONTROL_REJECT))
        ):
            accepts, rejects, _ = rng.multinomial(drafts, [hit, reject, 1 - hit - reject])
            counts[arm] += (drafts, accepts, rejects)
        if counts[:, 0].min() < DEFAULTS.min_drafts_per_arm:
            continue
        canary, control = (
            ArmStats(name, int(n), int(a), int(r), 0) for name, (n, a, r) in zip(("c", "s"), counts, strict=True)
        )
        comparison = Comparison.of(canary, control, DEFAULTS)
        if comparison.worse() is not None:
            return "rollback"
        if comparison.wins(DEFAULTS.promote_margin):
            wins += 1
            if wins == 2:
                return "promote"
            share, counts = DEFAULTS.widened_share, np.zeros_like(counts)  # widened: a fresh window
    return "undecided"


def outcomes(canary_hit: float, canary_reject: float, seed: int) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    results = [run_canary(rng, canary_hit, canary_reject) for _ in range(RUNS)]
    return {kind: results.count(kind) for kind in ("rollback", "promote", "undecided")}


def test_the_gap_interval_at_200_drafts_per_arm_is_wider_than_the_fixed_margins_were() -> None:
    # The point: at the minimum sample the gap's standard error is several points, so a 1-point margin
    # rolled back equal canaries often. The always-valid interval at that sample spans well beyond +-1 point.
    control = ArmStats("s", 200, 60, 60, 0)
    comparison = Comparison.of(ArmStats("c", 200, 60, 60, 0), control, DEFAULTS)
    assert comparison.hit_gap.low < -0.05 and comparison.hit_gap.high > 0.05 and comparison.worse() is None


def test_an_equally_good_canary_is_rolled_back_in_fewer_than_5_percent_of_runs() -> None:
    result = outcomes(CONTROL_HIT, CONTROL_REJECT, seed=1)
    assert result["rollback"] < 0.05 * RUNS, result
    assert result["promote"] < 0.05 * RUNS, result


def test_a_canary_5_points_worse_is_rolled_back() -> None:
    result = outcomes(CONTROL_HIT - 0.05, CONTROL_REJECT + 0.05, seed=2)
    assert result["rollback"] >= 0.95 * RUNS, result
    assert result["promote"] == 0, result


def test_the_gap_interval_stays_within_the_possible_gaps_at_a_handful_of_drafts() -> None:
    """A deployment's canary with 3 drafts printed a hit-rate gap of [-396.1, +522.4] points."""
    from fedloop.client.release.sequential import gap_interval

    interval = gap_interval(2, 3, 2, 57, 1 - 0.05 / 3, ReleaseSection().mixture_scale)
    assert -1.0 <= interval.low < interval.estimate < interval.high <= 1.0
    assert "[-100.0, +100.0]" in interval.describe()


def test_successes_beyond_their_count_are_named_not_a_math_domain_error() -> None:
    """flagged > decided (issue 30) made the variance negative and the square root raise `math domain error`."""
    import pytest

    from fedloop.client.release.sequential import gap_interval

    with pytest.raises(ValueError, match="must lie within its own count"):
        gap_interval(180, 126, 0, 277, 0.98, ReleaseSection().mixture_scale)
