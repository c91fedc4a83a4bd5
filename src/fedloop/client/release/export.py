"""Export the released versions for an external inference server (for example vLLM with `--lora-modules`).

`DIR/<version>/` gets the standard PEFT layout (`adapter_config.json`,
`adapter_model.safetensors`) for the serving version, the canary and the
rollback target (so a rollback never routes to a version the server lacks),
and `DIR/routing.json` says which is which, the canary's (or, during a guard,
the holdback's) share and the bucket rule. With `release.export_dir` set, the tenant service exports again after
every move of the pointer (`ExportOnMove`). The adapters are written first and the manifest last, each atomically,
so a reader that follows the manifest never sees half a version. These files
are outside the tenant's at-rest encryption; every export is audited.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fedloop.client.release.controller import GUARD, ReleaseController
from fedloop.client.store import FeedbackStore
from fedloop.client.store.api import ReleaseRecord
from fedloop.client.tenant_settings import TenantSettings
from fedloop.shared.adapter import adapter_from_bytes, export_peft, portable_model_name
from fedloop.shared.files import write_atomic
from fedloop.shared.settings import Settings

BUCKET_RULE = (
    "a user's bucket is int.from_bytes(SM3(b'fedloop/canary/' + pseudonym)[:8], 'big') / 2**64, where pseudonym is "
    "the tenant's keyed SM3 HMAC of the user id (the key never leaves the tenant: route through its draft endpoint, "
    "or ask its FeedbackService's RouteDraft); the canary drafts for buckets < canary_share, the holdback (after a "
    "promotion, while the guard watches) for buckets >= 1 - holdback_share, the serving version for the rest"
)


log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """Nothing to export, or the output directory cannot be written."""


def export_release(
    store: FeedbackStore, federation: Settings, tenant: TenantSettings, out: Path, operator: str, reason: str
) -> dict[str, Any]:
    """Write the serving, canary and rollback-target adapters and `routing.json` under `out`; returns the manifest."""
    state = store.versions.release_state()
    if state is None or state.serving is None:
        raise ExportError(
            "nothing released yet: the first global version that passes this tenant's gates serves; export after it did"
        )
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file: name a directory")
    out = out.resolve()  # routing.json names absolute paths: an inference server may start anywhere
    target = ReleaseController(store, tenant.release).rollback_target()
    guarded = state.action == GUARD
    versions = list(dict.fromkeys(v for v in (state.serving, state.canary, target) if v))
    try:
        for version in versions:
            export_peft(
                adapter_from_bytes(store.versions.adapter(version)),
                federation.lora,
                federation.paths.model,
                out / version,
            )
        manifest = {
            "tenant": tenant.tenant.name,
            "serving": state.serving,
            "canary": None if guarded else state.canary,
            "canary_share": state.share if state.canary and not guarded else 0.0,
            "holdback": state.canary if guarded else None,
            "holdback_share": state.share if guarded else 0.0,
            "rollback_target": target,
            "model_alias": tenant.serve.model_alias,
            "base_model": portable_model_name(federation.paths.model),
            "bucket_rule": BUCKET_RULE,
            "adapters": {v: str(out / v) for v in versions},
            "pointer_at_ms": state.at_ms,
        }
        write_atomic(out / "routing.json", json.dumps(manifest, indent=2).encode(), 0o600)
    except OSError as err:
        raise ExportError(f"cannot write to {out}: {err.strerror or err}") from None
    store.audit(operator, "release-export", f"{', '.join(versions)} to {out}; reason: {reason}")
    return manifest


class ExportOnMove:
    """Re-exports the release to `release.export_dir` whenever the pointer has moved since the last export."""

    def __init__(self, store: FeedbackStore, federation: Settings, tenant: TenantSettings) -> None:
        self._store = store
        self._federation = federation
        self._tenant = tenant
        self._exported: ReleaseRecord | None = None

    def check(self) -> None:
        """Export if the pointer moved (failures are logged and retried at the next check)."""
        state = self._store.versions.release_state()
        if state is None or state.serving is None or state == self._exported:
            return
        try:
            export_release(
                self._store,
                self._federation,
                self._tenant,
                Path(self._tenant.release.export_dir),
                "fedloop",
                f"the release pointer moved ({state.action})",
            )
        except ExportError:
            log.exception("exporting the release to release.export_dir failed; retrying at the next check")
            return
        self._exported = state
