"""The canary's statistics with the user as the unit: per-user sums, a covariate-adjusted gap, its variance over users.

Users, not drafts, are assigned to an arm (canary.py), and users differ: a
5 % canary is a fixed handful of people whose own accept rates are not the
average. Counting their drafts as independent mistakes that composition for
the version (issue 30). Here each arm's rate is a ratio of sums over its users
u, with n_u the user's decided drafts and y_u those that were accepted
(rejected, flagged) in the window, and its variance is computed over users
(the linearised, cluster-robust variance of a ratio, with the k / (k - 1)
small-sample factor).

What a user did before the canary began is independent of which arm the user
is in, and it predicts what the user does now. Each metric's gap is adjusted by
it (CUPED, Deng et al., WSDM 2013): x_u is the user's rate of the metric over the
covariate window before the canary started, shrunk toward the pool's rate by
`PRIOR_DRAFTS` pseudo-drafts (so a newcomer's x_u is the pool's rate), and

    gap = (R_canary - R_control) - theta (X_canary - X_control)

with R = sum y / sum n, X = sum n x / sum n per arm, and theta the
variance-minimising coefficient from both arms. The composition of the arms
largely cancels, which is what lets a few hundred users decide at all.

Every quantity is a sum over users of a function of (n_u, y_u, x_u), so one
outcome changes each sum by a fixed amount: `user_sums(after) - user_sums(before)`.
A look costs the same at 100 drafts as at 100,000. All functions take floats or
numpy arrays (the simulation in the tests evaluates every look of a run at once
with the same code).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

METRICS = ("accept", "reject", "flagged")
SHARED_SUMS = ("users", "n", "n2")
METRIC_SUMS = ("y", "y2", "yn", "nx", "n2x", "n2x2", "ynx")
FIELDS = SHARED_SUMS + tuple(f"{metric}.{name}" for metric in METRICS for name in METRIC_SUMS)
WIDTH = len(FIELDS)
PRIOR_DRAFTS = 10.0  # pseudo-drafts at the pool's rate that shrink a user's covariate

Floats = NDArray[np.float64]


def user_sums(decided: ArrayLike, successes: ArrayLike, covariates: ArrayLike) -> Floats:
    """One user's (or, along leading axes, many users') contribution to every sum of an arm.

    `decided`: n_u; `successes`: y_u per metric (last axis: accept, reject, flagged); `covariates`: x_u per metric.
    """
    n = np.asarray(decided, dtype=np.float64)
    y = np.asarray(successes, dtype=np.float64)
    x = np.asarray(covariates, dtype=np.float64)
    n_m = n[..., None]
    per_metric = np.stack([y, y * y, y * n_m, n_m * x, n_m * n_m * x, n_m * n_m * x * x, y * n_m * x], axis=-1)
    shared = np.stack([(n > 0).astype(np.float64), n, n * n], axis=-1)
    return np.concatenate([shared, per_metric.reshape(*per_metric.shape[:-2], -1)], axis=-1)


def shrunk_rate(successes: ArrayLike, decided: ArrayLike, pool_rate: ArrayLike) -> Floats:
    """A user's covariate: the rate before the canary, shrunk toward the pool's by `PRIOR_DRAFTS` pseudo-drafts."""
    return (np.asarray(successes, dtype=np.float64) + PRIOR_DRAFTS * np.asarray(pool_rate)) / (
        np.asarray(decided, dtype=np.float64) + PRIOR_DRAFTS
    )


def _field(sums: Floats, name: str) -> Floats:
    return sums[..., FIELDS.index(name)]


def rates(sums: ArrayLike) -> Floats:
    """Each metric's rate (ratio of sums) of an arm; 0 where it has no decided draft. Last axis: METRICS."""
    sums = np.asarray(sums, dtype=np.float64)
    n = _field(sums, "n")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([np.where(n > 0, _field(sums, f"{m}.y") / n, 0.0) for m in METRICS], axis=-1)


def _arm_terms(sums: Floats, metric: str) -> tuple[Floats, ...]:
    """(N, k, R, X, S, C, D) of one arm: S, C, D are the sums of squares and products of the users' linearised
    residuals a theta-adjusted variance needs."""
    n, k, n2 = _field(sums, "n"), _field(sums, "users"), _field(sums, "n2")
    y, y2, yn = (_field(sums, f"{metric}.{name}") for name in ("y", "y2", "yn"))
    nx, n2x, n2x2, ynx = (_field(sums, f"{metric}.{name}") for name in ("nx", "n2x", "n2x2", "ynx"))
    safe_n = np.maximum(n, 1.0)
    r, x = y / safe_n, nx / safe_n
    s = y2 - 2 * r * yn + r * r * n2
    c = ynx - x * yn - r * n2x + r * x * n2
    d = n2x2 - 2 * x * n2x + x * x * n2
    return safe_n, k, r, x, s, c, d


def adjusted_gap(canary: ArrayLike, control: ArrayLike, metric: str) -> tuple[Floats, Floats]:
    """The metric's rate gap canary - control, adjusted by the users' covariate, and its variance over users.

    The variance is never below that of independent drafts at the arms' smoothed rates (what a covariate cannot
    remove: the outcomes' own binomial noise), so an arm of a few identical users cannot claim certainty.
    """
    n_a, k_a, r_a, x_a, s_a, c_a, d_a = _arm_terms(np.asarray(canary, dtype=np.float64), metric)
    n_b, k_b, r_b, x_b, s_b, c_b, d_b = _arm_terms(np.asarray(control, dtype=np.float64), metric)
    weight_a, weight_b = 1 / (n_a * n_a), 1 / (n_b * n_b)
    spread = d_a * weight_a + d_b * weight_b
    with np.errstate(invalid="ignore", divide="ignore"):
        theta = np.where(spread > 1e-12, (c_a * weight_a + c_b * weight_b) / np.maximum(spread, 1e-12), 0.0)
    estimate = (r_a - r_b) - theta * (x_a - x_b)

    def arm_variance(k: Floats, n: Floats, r: Floats, s: Floats, c: Floats, d: Floats) -> Floats:
        small_sample = k / np.maximum(k - 1, 1.0)
        clustered = small_sample * np.maximum(s - 2 * theta * c + theta * theta * d, 0.0) / (n * n)
        smoothed = (r * n + 0.5) / (n + 1)
        return np.maximum(clustered, smoothed * (1 - smoothed) / n)

    variance = arm_variance(k_a, n_a, r_a, s_a, c_a, d_a) + arm_variance(k_b, n_b, r_b, s_b, c_b, d_b)
    return estimate, variance
