"""What an HQ operator needs at a glance, as one JSON-ready document (`fedloop status --hq`)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from fedloop.server.hq_settings import HQSettings
from fedloop.server.registry import VersionRegistry
from fedloop.server.schedule_state import read_schedule_state
from fedloop.shared.keys import Keyring, key_ages, load_identity
from fedloop.shared.run_layout import HQ_NAME, RunLayout


def _date(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def hq_status(settings: HQSettings) -> dict[str, Any]:
    """Stable and newest versions, versions by status, the last round, which tenants' gates refused which
    version, trusted tenants, key ages, audit head."""
    layout = RunLayout(settings.home)
    registry = VersionRegistry(layout.hq, load_identity(layout.keys, HQ_NAME))
    try:
        versions = registry.versions()
        stable, latest = registry.stable(), registry.latest()
        rounds = registry.rounds()
        verdict = registry.audit_log.verify()
    finally:
        registry.close()
    last = rounds[-1] if rounds else None
    refused: dict[str, set[str]] = {}
    for report in rounds:  # each tenant's gates verdict on the version it evaluated in that round
        for tenant, metrics in report.get("evaluation", {}).items():
            if metrics.get("gates-passed") == 0:
                refused.setdefault(report["version"], set()).add(tenant)
    tenants = sorted(k.name for k in Keyring.from_directory(layout.keys).parties() if k.role == "tenant")
    return {
        "home": str(settings.home),
        "stable": stable.id if stable else None,
        "newest": latest.id if latest else None,
        "versions_by_status": dict(Counter(v.status for v in versions)),
        "last_round": (
            {
                "run": last["run"],
                "round": last["round"],
                "version": last["version"],
                "finished_at": _date(last["finished_at"]),
                "duration_s": last.get("duration_s"),
                "contributors": last.get("contributors", {}),
                "refused": last.get("refused", {}),
            }
            if last
            else None
        ),
        "refused_by_tenant_gates": {version: sorted(names) for version, names in refused.items()},
        "continuous_run": read_schedule_state(layout.schedule),
        "trusted_tenants": tenants,
        "keys": key_ages(layout.keys, HQ_NAME),
        "audit": {"entries": verdict.entries, "intact": verdict.ok, "head": verdict.head},
    }
