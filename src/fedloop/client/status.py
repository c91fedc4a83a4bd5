"""What a tenant operator needs at a glance, as one JSON-ready document (`fedloop status --tenant`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedloop.client.release.controller import ReleaseController
from fedloop.client.store.api import FeedbackStoreAPI
from fedloop.client.tenant_settings import TenantSettings
from fedloop.shared.keys import key_ages


def tenant_status(settings: TenantSettings, store: FeedbackStoreAPI) -> dict[str, Any]:
    """Serving version, canary, last round, samples by pool and state, breaker, key ages, audit head."""
    controller = ReleaseController(store, settings.release)
    state = controller.state()
    comparison = controller.compare()
    installed = store.versions.installed()
    tripped, reason = store.samples.breaker_state()
    samples: dict[str, dict[str, int]] = {}
    for (status, pool), count in sorted(store.samples.counts().items()):
        samples.setdefault(pool, {})[status] = count
    verdict = store.audit_log.verify()
    return {
        "tenant": settings.tenant.name,
        "serving": state.serving if state else None,
        "canary": (
            {"version": state.canary, "share": state.share, "comparison": comparison.summary() if comparison else None}
            if state and state.canary
            else None
        ),
        "last_release_action": {"action": state.action, "reason": state.reason} if state else None,
        "last_round": ({"version": installed[-1].version_id, "round": installed[-1].round} if installed else None),
        "samples_by_pool": samples,
        "breaker": {"tripped": tripped, "reason": reason},
        "keys": key_ages(Path(settings.tenant.keys_dir), settings.tenant.name),
        "audit": {"entries": verdict.entries, "intact": verdict.ok, "head": verdict.head},
    }
