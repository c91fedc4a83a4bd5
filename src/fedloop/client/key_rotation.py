"""Rotate a tenant's storage key while its services keep running.

A new SM4 key is added to the key file and made active; running services pick
it up within a second (they watch the key file) and write with it. Meanwhile
this re-encrypts every older value in small transactions, so ingestion is never
blocked for long. Old keys stay in the file so that nothing becomes unreadable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fedloop.client.store import FeedbackStore
from fedloop.client.tenant_settings import TenantSettings
from fedloop.shared.keys import key_paths, load_identity, rotate_storage_key

if TYPE_CHECKING:
    from fedloop.client.ingest.runtime import TenantRuntime

log = logging.getLogger(__name__)
SETTLE_S = 2.5  # longer than a running service's key-file poll interval


def rotate_tenant_storage_key(
    settings: TenantSettings, operator: str, progress: Callable[[int], None] = lambda n: None
) -> int:
    """Rotate and re-encrypt the tenant's store; returns how many values were re-encrypted."""
    identity = rotate_storage_key(Path(settings.tenant.keys_dir), settings.tenant.name)
    store = FeedbackStore(settings.store_path, identity.storage, identity.pseudonym_key)
    try:
        store.audit(operator, "keys.rotate", f"storage key {identity.storage.active} is now active")
        total = 0
        quiet_passes = 0
        while quiet_passes < 2:
            done = store.reencrypt_batch()
            total += done
            progress(total)
            if done == 0:
                quiet_passes += 1
                if quiet_passes < 2:
                    time.sleep(SETTLE_S)  # let running services switch keys, then sweep what they wrote meanwhile
            else:
                quiet_passes = 0
        store.audit(operator, "keys.reencrypt", f"{total} values re-encrypted under key {identity.storage.active}")
        return total
    finally:
        store.close()


class StorageKeyWatcher:
    """A running service's side of a rotation: when the tenant's storage key file changes, its store switches to
    the file's active key. Called about once a second by the service's maintenance loop."""

    def __init__(self, runtime: TenantRuntime, announce: Callable[[str], None] = log.info) -> None:
        self._runtime = runtime
        self._announce = announce
        tenant = runtime.settings.tenant
        self._key_file = key_paths(Path(tenant.keys_dir), tenant.name)["storage"]
        self._seen = self._key_file.stat().st_mtime_ns

    def __call__(self) -> None:
        """Reload the storage keys if the key file changed since the last call."""
        changed = self._key_file.stat().st_mtime_ns
        if changed != self._seen:
            self._seen = changed
            self._runtime.store.use_keys(
                load_identity(self._key_file.parent, self._runtime.settings.tenant.name).storage
            )
            self._announce("storage key file changed: now writing with the new active key")
