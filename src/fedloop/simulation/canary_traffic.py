"""Simulated users for the release test: heterogeneous people, assigned to an arm as a whole, looked at after every
outcome (issue 30).

Each user has an own accept and reject rate (normal around 30 % with spread
`sd`) and an own activity (log-normal: a few users write most drafts). The
canary changes every user's accept rate by `effect` and the reject rate by
`-effect`. Users are placed by a uniform position like canary.py's hash, so the
5 % canary is a fixed handful of them and widening keeps them inside. Before
the canary, `covariate_days` of traffic on the serving version give each user
the covariate the controller uses.

A run follows the controller's ramp (controller.py): stage 1 at
`canary_share` until `canary_dwell_h`, then a fresh window at `widened_share`
where promotion needs a win and `promote_after_h` of age; a rollback in either
stage once `min_drafts_per_arm` and `min_users_per_arm` are reached. Every
look of a stage is evaluated at once with the production statistics
(user_statistics.py, sequential.py): the running sums after each outcome are a
cumulative sum of each outcome's change to them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedloop.client.release.arm_tally import covariates_of
from fedloop.client.release.comparison import interval_level
from fedloop.client.release.sequential import half_width
from fedloop.client.release.user_statistics import Floats, adjusted_gap, user_sums
from fedloop.client.store.api import UserRates
from fedloop.client.tenant_settings import ReleaseSection

BASE_RATE = 0.30  # the serving version's mean accept rate, and its mean reject rate


@dataclass(frozen=True)
class Traffic:
    """Who uses the product and how much: `users` people with accept-rate spread `sd`, `per_day` decided drafts."""

    users: int
    sd: float
    per_day: int
    activity_sd: float = 1.0


@dataclass(frozen=True)
class Outcome:
    """How one canary ended: "rollback", "promote" or "undecided" (horizon reached), and after how many days."""

    verdict: str
    day: float


@dataclass(frozen=True)
class Stage:
    """The sums of both arms after every outcome of one window, and when each outcome came."""

    canary: Floats
    control: Floats
    day: Floats


def _running_before(users: np.ndarray, values: Floats) -> Floats:
    """For each event, the total of `values` over the same user's earlier events (values: events x columns)."""
    order = np.argsort(users, kind="stable")
    sorted_users, sorted_values = users[order], values[order]
    running = np.cumsum(sorted_values, axis=0)
    starts = np.r_[0, np.flatnonzero(sorted_users[1:] != sorted_users[:-1]) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(sorted_users)]))
    before_group = np.where((group_start > 0)[:, None], running[np.maximum(group_start - 1, 0)], 0.0)
    result = np.empty_like(running)
    result[order] = running - sorted_values - before_group
    return result


def arm_sums_after_each(users: np.ndarray, outcomes: Floats, covariates: Floats, in_arm: np.ndarray) -> Floats:
    """An arm's sums (user_statistics.FIELDS) after each event of a window: events of other arms change nothing."""
    before = _running_before(users, np.column_stack([np.ones(len(users)), outcomes]))
    decided, counts, x = before[:, 0], before[:, 1:], covariates[users]
    change = user_sums(decided + 1, counts + outcomes, x) - user_sums(decided, counts, x)
    change[~in_arm] = 0.0
    return np.cumsum(change, axis=0)


class CanarySimulation:
    """Canary runs of one traffic and true effect under release `settings`."""

    def __init__(self, traffic: Traffic, effect: float, settings: ReleaseSection, rng: np.random.Generator) -> None:
        self.traffic, self.effect, self.settings, self._rng = traffic, effect, settings, rng

    def _people(self) -> tuple[Floats, Floats, Floats]:
        """Per user: (accept, reject) rates on the serving version, on the canary, and activity weights."""
        t, rng = self.traffic, self._rng
        serving = np.clip(BASE_RATE + t.sd * rng.standard_normal((t.users, 2)), 0.02, 0.9)
        serving *= np.minimum(1.0, 0.95 / serving.sum(axis=1))[:, None]
        canary = np.clip(serving + [self.effect, -self.effect], 0.01, 0.95)
        canary *= np.minimum(1.0, 0.97 / canary.sum(axis=1))[:, None]
        activity = rng.lognormal(0.0, t.activity_sd, t.users)
        return serving, canary, activity / activity.sum()

    def _drafts(self, count: int, activity: Floats) -> np.ndarray:
        """Who wrote each of `count` drafts."""
        return self._rng.choice(len(activity), count, p=activity)

    def _outcomes(self, rates: Floats) -> Floats:
        """(accepted, rejected, flagged) of drafts decided at these (accept, reject) rates, one row per draft."""
        draw = self._rng.random(len(rates))
        accepted = draw < rates[:, 0]
        rejected = ~accepted & (draw < rates[:, 0] + rates[:, 1])
        return np.column_stack([accepted, rejected, np.zeros(len(rates), dtype=bool)]).astype(np.float64)

    def _covariates(self, serving: Floats, activity: Floats) -> Floats:
        """Each user's covariate from `covariate_days` of drafts on the serving version (controller's arm_tally.py)."""
        users = self._drafts(int(self.settings.covariate_days * self.traffic.per_day), activity)
        outcomes = self._outcomes(serving[users])
        decided = np.bincount(users, minlength=len(activity))
        counts = np.column_stack([np.bincount(users, outcomes[:, m], minlength=len(activity)) for m in range(3)])
        before = [
            UserRates(str(u), int(decided[u]), (int(counts[u, 0]), int(counts[u, 1]), int(counts[u, 2])))
            for u in np.flatnonzero(decided)
        ]
        known, pool = covariates_of(before)
        covariates = np.tile(pool, (len(activity), 1))
        for user, x in known.items():
            covariates[int(user)] = x
        return covariates

    def run(self, horizon_days: float) -> Outcome:
        """One canary's life until a decision or `horizon_days`."""
        s, t = self.settings, self.traffic
        serving, canary, activity = self._people()
        position = self._rng.random(t.users)
        covariates = self._covariates(serving, activity)
        stages = [(s.canary_share, min(s.canary_dwell_h / 24, horizon_days)), (s.widened_share, horizon_days)]
        start = 0.0
        for share, end in stages if s.canary_share < s.widened_share else [(s.canary_share, horizon_days)]:
            count = int(round((end - start) * t.per_day))
            users = self._drafts(count, activity)
            in_canary = position[users] < share
            outcomes = self._outcomes(np.where(in_canary[:, None], canary[users], serving[users]))
            stage = Stage(
                arm_sums_after_each(users, outcomes, covariates, in_canary),
                arm_sums_after_each(users, outcomes, covariates, ~in_canary),
                start + np.arange(1, count + 1) / t.per_day,
            )
            outcome = self.verdict(stage, final=share >= s.widened_share)
            if outcome is not None:
                return outcome
            start = end
        return Outcome("undecided", horizon_days)

    def verdict(self, stage: Stage, final: bool) -> Outcome | None:
        """The first look of a stage that rolls back or promotes (the controller's rule at every look), or None."""
        s = self.settings
        level = interval_level(s)
        gaps = {m: adjusted_gap(stage.canary, stage.control, m) for m in ("accept", "reject", "flagged")}
        width = {m: half_width(v, level, s.mixture_scale) for m, (_, v) in gaps.items()}
        ready = (np.minimum(stage.canary[:, 1], stage.control[:, 1]) >= s.min_drafts_per_arm) & (
            np.minimum(stage.canary[:, 0], stage.control[:, 0]) >= s.min_users_per_arm
        )
        worse = ready & (
            (gaps["accept"][0] + width["accept"] < 0)
            | (gaps["reject"][0] - width["reject"] > 0)
            | (gaps["flagged"][0] - width["flagged"] > 0)
        )
        wins = (
            ready
            & final
            & (stage.day >= s.promote_after_h / 24)
            & (gaps["accept"][0] - width["accept"] > s.promote_margin)
        )
        first_worse = int(np.argmax(worse)) if worse.any() else len(worse)
        first_win = int(np.argmax(wins)) if wins.any() else len(wins)
        if first_worse < len(worse) and first_worse <= first_win:
            return Outcome("rollback", float(stage.day[first_worse]))
        if first_win < len(wins):
            return Outcome("promote", float(stage.day[first_win]))
        return None


def simulate(
    traffic: Traffic, effect: float, settings: ReleaseSection, runs: int, horizon_days: float, seed: int
) -> list[Outcome]:
    """`runs` canaries of one traffic and effect."""
    simulation = CanarySimulation(traffic, effect, settings, np.random.default_rng(seed))
    return [simulation.run(horizon_days) for _ in range(runs)]
