"""HQ's part of the evaluation report: versions, lineage and what every round reported (no tenant data)."""

from __future__ import annotations

from fedloop.server.registry import VersionRegistry
from fedloop.shared.protocol import HIT_RATE
from fedloop.shared.report import ReportData


def hq_report_data(registry: VersionRegistry, title: str, source: str, version: str | None = None) -> ReportData:
    """Report data from HQ's registry: of everything, or of `version` and its ancestors."""
    chain = registry.lineage(version) if version else registry.versions()
    ids = [v.id for v in chain]
    data = ReportData(
        title,
        source,
        lineage=[
            {
                "id": v.id,
                "parent": v.parent,
                "round": v.round,
                "method": v.method,
                "status": v.status,
                "contributors": v.contributors,
                "digest": v.digest,
            }
            for v in chain
        ],
    )
    losses: dict[str, dict[str, list[float]]] = {}
    for report in registry.rounds():
        evaluated = report["version"]
        if evaluated not in ids:
            continue
        if evaluated not in data.versions:
            data.versions.append(evaluated)
        label = f"{report['run']} r{report['round']}"
        for tenant, metrics in report.get("evaluation", {}).items():
            if metrics.get("num-examples", 0) > 0:
                data.hit_rates.setdefault(tenant, {})[evaluated] = float(metrics[HIT_RATE])
            if "kl-to-serving" in metrics:
                data.kl_to_serving.setdefault(tenant, {})[evaluated] = float(metrics["kl-to-serving"])
            if "kl-bound" in metrics:
                data.kl_bounds[tenant] = float(metrics["kl-bound"])
        for tenant, metrics in report.get("train_metrics", {}).items():
            losses.setdefault(tenant, {}).setdefault("mean loss per round", []).append(float(metrics["train-loss"]))
        for tenant in sorted(set(report.get("bytes_to_hq", {})) | set(report.get("bytes_to_tenant", {}))):
            data.bytes_per_round.append(
                {
                    "round": label,
                    "tenant": tenant,
                    "to_hq": report.get("bytes_to_hq", {}).get(tenant, 0),
                    "to_tenant": report.get("bytes_to_tenant", {}).get(tenant, 0),
                }
            )
        for tenant, dataset in sorted(report.get("dataset_versions", {}).items()):
            data.dataset_versions.append({"round": label, "tenant": tenant, "dataset_version": dataset})
    data.train_losses = losses
    return data
