"""Export the released versions for an external inference server (for example vLLM with `--lora-modules`).

`DIR/<version>/` gets the standard PEFT layout (`adapter_config.json`,
`adapter_model.safetensors`) for the serving version and the canary, and
`DIR/routing.json` says which is which, the canary's share and the bucket
rule. The adapters are written first and the manifest last, each atomically,
so a reader that follows the manifest never sees half a version. These files
are outside the tenant's at-rest encryption; every export is audited.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedloop.client.store import FeedbackStore
from fedloop.client.tenant_settings import TenantSettings
from fedloop.shared.adapter import adapter_from_bytes, export_peft
from fedloop.shared.files import write_atomic
from fedloop.shared.settings import Settings

BUCKET_RULE = (
    "a user is in the canary when int.from_bytes(SM3(b'fedloop/canary/' + pseudonym)[:8], 'big') / 2**64 "
    "< canary_share, where pseudonym is the tenant's keyed SM3 HMAC of the user id (the key never leaves "
    "the tenant: route through its draft endpoint, or ask its FeedbackService's RouteDraft)"
)


class ExportError(RuntimeError):
    """Nothing to export, or the output directory cannot be written."""


def export_release(
    store: FeedbackStore, federation: Settings, tenant: TenantSettings, out: Path, operator: str, reason: str
) -> dict[str, Any]:
    """Write the serving and canary adapters and `routing.json` under `out`; returns the manifest."""
    state = store.versions.release_state()
    if state is None or state.serving is None:
        raise ExportError(
            "nothing released yet: the first global version that passes this tenant's gates serves; export after it did"
        )
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file: name a directory")
    versions = [v for v in (state.serving, state.canary) if v]
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
            "canary": state.canary,
            "canary_share": state.share if state.canary else 0.0,
            "model_alias": tenant.serve.model_alias,
            "base_model": federation.paths.model,
            "bucket_rule": BUCKET_RULE,
            "adapters": {v: str(out / v) for v in versions},
            "pointer_at_ms": state.at_ms,
        }
        write_atomic(out / "routing.json", json.dumps(manifest, indent=2).encode())
    except OSError as err:
        raise ExportError(f"cannot write to {out}: {err.strerror or err}") from None
    store.audit(operator, "release-export", f"{', '.join(versions)} to {out}; reason: {reason}")
    return manifest
