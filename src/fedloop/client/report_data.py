"""A tenant's part of the evaluation report: its own evaluations, its users' hit rate per version (from their
outcomes), training curves and problem rates."""

from __future__ import annotations

from fedloop.client.store import FeedbackStore
from fedloop.client.store.api import EvaluationKind
from fedloop.shared.protocol import HIT_RATE
from fedloop.shared.report import HIT_RATES, PROBLEM_RATES, SERVED, TRAINING_LOSS, ReportData


def add_tenant(data: ReportData, tenant: str, store: FeedbackStore, versions: list[str] | None = None) -> None:
    """Add what `tenant`'s store knows, for `versions` only if given (a version's lineage)."""
    wanted = set(versions) if versions is not None else None
    for version, metrics in store.versions.evaluations_of_kind(EvaluationKind.HIT_RATE):
        if (wanted is None or version in wanted) and metrics.get("num-examples", 0) > 0:
            data.hit_rates.setdefault(tenant, {})[version] = float(metrics[HIT_RATE])
            if version not in data.versions:
                data.versions.append(version)
    for version, metrics in store.versions.evaluations_of_kind(EvaluationKind.KL_TO_SERVING):
        if wanted is None or version in wanted:
            data.kl_to_serving.setdefault(tenant, {})[version] = float(metrics["value"])
            data.kl_bounds[tenant] = float(metrics["bound"])  # the newest bound this tenant gated with
    for version, _, decided, accepted in store.drafts.outcomes_by_version():
        if (wanted is None or version in wanted) and decided:
            before = data.served.setdefault(tenant, {}).get(version, (0, 0))  # summed over prompt versions
            data.served[tenant][version] = (before[0] + accepted, before[1] + decided)
    curves = {}
    for version, metrics in store.versions.evaluations_of_kind(EvaluationKind.TRAINING):
        if wanted is None or version in wanted:
            curves[f"round {metrics.get('round', '?')} (from {version})"] = [
                *metrics.get("sft_losses", []),
                *metrics.get("dpo_losses", []),
                *metrics.get("kto_losses", []),
            ]
    if curves:
        data.train_losses[tenant] = curves
    drafting = [v for v in store.drafts.drafting_versions() if wanted is None or v in wanted]
    for problem_type in store.drafts.problem_types():
        previous, previous_rate = None, None
        for version in drafting:
            flagged, drafts = store.drafts.problem_rate(problem_type, version)
            rate = flagged / drafts if drafts else 0.0
            data.problem_rates.append(
                {
                    "tenant": tenant,
                    "problem_type": problem_type,
                    "version": version,
                    "rate": rate,
                    "flagged": flagged,
                    "drafts": drafts,
                    "previous": previous,
                    "previous_rate": previous_rate,
                }
            )
            previous, previous_rate = version, rate
    _say_why_empty(data, tenant, store)


def _say_why_empty(data: ReportData, tenant: str, store: FeedbackStore) -> None:
    """Name, for each of the tenant's sections its store could not fill, why."""
    reasons = {
        HIT_RATES: (tenant in data.hit_rates, f"{tenant}: no version was evaluated on held-out finals yet"),
        SERVED: (tenant in data.served, f"{tenant}: no draft has an outcome yet"),
        TRAINING_LOSS: (tenant in data.train_losses, f"{tenant}: no local training round yet"),
        PROBLEM_RATES: (
            any(r["tenant"] == tenant for r in data.problem_rates),
            f"{tenant}: "
            + (
                "no derived-signal rule flagged a draft yet"
                if store.drafts.signal_kinds()
                else "no signals received: the problem rules need the product's signals (RecordSignal: clicks, "
                "orders, user messages; docs/tenant-pipeline.md)"
            ),
        ),
    }
    for title, (filled, why) in reasons.items():
        if not filled:
            data.unfilled[title] = "; ".join(filter(None, (data.unfilled.get(title), why)))
