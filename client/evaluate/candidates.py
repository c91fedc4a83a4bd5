"""Which of a global version and the tenant's personalised candidate of it to offer for release."""

from __future__ import annotations

from fedloop.client.evaluate.drift import GateResult
from fedloop.client.evaluate.hit_rate import HitRate

Assessment = tuple[HitRate, list[GateResult]]  # a candidate's offline hit rate and its gates


def better_candidate(assessed: dict[str, Assessment], global_id: str) -> str | None:
    """The candidate no gate refuses with the highest offline hit rate on the held-out finals; on a tie the
    global version (what every tenant shares). None when every candidate was refused."""
    passing = [v for v, (_, gates) in assessed.items() if all(g.passed for g in gates)]
    ordered = sorted(passing, key=lambda v: (assessed[v][0].rate, v == global_id), reverse=True)
    return ordered[0] if ordered else None
