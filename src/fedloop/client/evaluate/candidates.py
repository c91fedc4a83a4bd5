"""Which of a global version and the tenant's personalised candidate of it to offer for release."""

from __future__ import annotations

from fedloop.client.evaluate.drift import GateResult
from fedloop.client.evaluate.hit_rate import HitRate, worse_p_value

Assessment = tuple[HitRate, list[GateResult]]  # a candidate's offline hit rate and its gates


def drafts_better(candidate: HitRate, reference: HitRate, confidence: float) -> bool:
    """Whether `candidate` drafts better than `reference` on the same prompts with `confidence` (one-sided exact
    sign test on the prompts where exactly one of them hits). A higher rate alone is not evidence: on a few
    dozen prompts the higher of two close candidates is often the worse one."""
    return worse_p_value(reference, candidate) < 1 - confidence


def better_candidate(assessed: dict[str, Assessment], global_id: str, confidence: float) -> str | None:
    """The version to offer: the global version (what every tenant shares) unless a personalised candidate that
    no gate refuses drafts better than it with `confidence`; a passing personalised candidate when the global
    version is refused. None when every candidate was refused."""
    passing = [v for v, (_, gates) in assessed.items() if all(g.passed for g in gates)]
    personal = sorted((v for v in passing if v != global_id), key=lambda v: assessed[v][0].rate, reverse=True)
    if global_id not in passing:
        return personal[0] if personal else None
    better = [v for v in personal if drafts_better(assessed[v][0], assessed[global_id][0], confidence)]
    return better[0] if better else global_id
