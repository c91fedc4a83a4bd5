"""How often the release test decides right, and how many days it takes, with simulated heterogeneous users.

Every run simulates one canary's life with the tenant's default release
settings (5 % for 24 h, then 30 %; promotion after 72 h; 95 % family-wise
confidence), users assigned as a whole, a look after every outcome
(src/fedloop/simulation/canary_traffic.py, the production statistics).

Part 1, at 1,000 decided drafts a day over `--horizon` days: the share of runs
rolled back, promoted and undecided for an equal (0), a worse (-5 points hit
rate, +5 reject) and a better (+5 / -5) canary, with 95 % Wilson intervals.
Part 2 (`--days-table`): median days to a decision for a better and a worse
canary by drafts per day and canary share (the table in
docs/tenant-operator.md).

Run: .venv/bin/python scripts/canary_decisions.py [--runs 500] [--horizon 30] [--days-table]
"""

from __future__ import annotations

import argparse
import statistics
from concurrent.futures import ProcessPoolExecutor

from fedloop.client.tenant_settings import ReleaseSection
from fedloop.shared.intervals import wilson_interval
from fedloop.simulation.canary_traffic import Outcome, Traffic, simulate

EFFECTS = {"equal": 0.0, "-5 pts": -0.05, "+5 pts": 0.05}
TRAFFICS = [Traffic(300, 0.15, 1000), Traffic(300, 0.08, 1000), Traffic(2000, 0.15, 1000), Traffic(2000, 0.08, 1000)]
DAYS_TABLE_SHARES = [(0.05, 0.30), (0.10, 0.50)]
DAYS_TABLE_VOLUMES = {100: 180.0, 1000: 60.0, 10000: 20.0}  # drafts a day: horizon in days


def _simulate(job: tuple[Traffic, float, ReleaseSection, int, float, int]) -> list[Outcome]:
    return simulate(*job)


def share(outcomes: list[Outcome], verdict: str) -> str:
    """`verdict`'s share of the runs with its 95 % Wilson interval."""
    count = sum(o.verdict == verdict for o in outcomes)
    low, high = wilson_interval(count, len(outcomes))
    return f"{count / len(outcomes):6.1%} [{low:.1%}, {high:.1%}]"


def median_days(outcomes: list[Outcome], verdict: str) -> str:
    """Median days to `verdict` over all runs (undecided runs count as beyond the horizon)."""
    days = sorted(o.day if o.verdict == verdict else float("inf") for o in outcomes)
    middle = statistics.median_low(days)
    return f"{middle:.1f}" if middle != float("inf") else "> horizon"


def main() -> None:
    """Print the decision table (and the days-to-decision table)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--horizon", type=float, default=30.0, help="days each run may last")
    parser.add_argument("--days-table", action="store_true", help="also the days to a decision by volume and share")
    args = parser.parse_args()
    settings = ReleaseSection()
    jobs = [
        (t, effect, settings, args.runs, args.horizon, seed)
        for seed, t in enumerate(TRAFFICS)
        for effect in EFFECTS.values()
    ]
    with ProcessPoolExecutor() as pool:
        results = list(pool.map(_simulate, jobs))
    print(
        f"{args.runs} runs each, 1,000 decided drafts a day, {args.horizon:g}-day horizon, default [release] settings"
    )
    print(f"{'users':>6} {'sd':>5} {'canary':>7} | {'rolled back':>22} | {'promoted':>22} | median days to verdict")
    for (traffic, effect, *_), outcomes in zip(jobs, results, strict=True):
        name = next(k for k, v in EFFECTS.items() if v == effect)
        verdict = "promote" if effect > 0 else "rollback"
        print(
            f"{traffic.users:>6} {traffic.sd:>5.2f} {name:>7} | {share(outcomes, 'rollback'):>22} | "
            f"{share(outcomes, 'promote'):>22} | {median_days(outcomes, verdict) if effect else '-'}"
        )
    if args.days_table:
        days_table(settings, max(args.runs // 5, 1))


def days_table(settings: ReleaseSection, runs: int) -> None:
    """Median days to promote a +5-point and to roll back a -5-point canary, 2,000 users (sd 0.15)."""
    jobs = [
        (
            Traffic(2000, 0.15, volume),
            effect,
            settings.model_copy(update={"canary_share": first, "widened_share": widened}),
            runs,
            horizon,
            7,
        )
        for volume, horizon in DAYS_TABLE_VOLUMES.items()
        for first, widened in DAYS_TABLE_SHARES
        for effect in (0.05, -0.05)
    ]
    with ProcessPoolExecutor() as pool:
        results = list(pool.map(_simulate, jobs))
    print(f"\nmedian days to a decision, {runs} runs each, 2,000 users (sd 0.15)")
    print("| decided drafts a day | canary share (stage 1 -> 2) | +5 pts: promoted after | -5 pts: rolled back after |")
    print("|---|---|---|---|")
    for index in range(0, len(jobs), 2):
        traffic, _, shares, *_ = jobs[index]
        print(
            f"| {traffic.per_day:,} | {shares.canary_share:.0%} -> {shares.widened_share:.0%} | "
            f"{median_days(results[index], 'promote')} d ({share(results[index], 'promote').split('[')[0].strip()} "
            f"within {jobs[index][4]:g} d) | {median_days(results[index + 1], 'rollback')} d |"
        )


if __name__ == "__main__":
    main()
