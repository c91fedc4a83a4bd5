"""What every job of a tenant's round shares: its settings, keys, store, release pointer and adapters in memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

from fedloop.client.ingest.runtime import TenantRuntime, open_tenant
from fedloop.client.privacy.redaction import Redactor
from fedloop.client.release.controller import ReleaseController
from fedloop.client.store import FeedbackStore
from fedloop.client.tenant_settings import TenantSettings
from fedloop.shared.adapter import AdapterState, Placement, adapter_from_bytes
from fedloop.shared.keys import Identity, Keyring, key_paths, load_identity, load_public_key
from fedloop.shared.run_layout import HQ_NAME
from fedloop.shared.settings import Settings


@lru_cache(maxsize=1)
def _redactor() -> Redactor:
    """One Presidio redactor per process (building it costs about a second)."""
    return Redactor()


@dataclass(eq=False)
class TenantCore:
    """One tenant as seen inside its ClientApp: the federation's settings, its own settings, keys, store."""

    index: int
    federation: Settings  # the federation's settings, as HQ shares them
    settings: TenantSettings  # this tenant's own settings (its TOML)
    adapters: dict[str, AdapterState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.settings.personalise.method == "local_b" and self.federation.aggregation.method != "fedavg":
            raise ValueError(
                f'tenant {self.settings.tenant.name!r}: personalise.method = "local_b" keeps the B matrices at the '
                f"tenant and shares A, which HQ must average; the federation's aggregation.method is "
                f'{self.federation.aggregation.method!r}, which re-factorises B·A. Set aggregation.method = "fedavg" '
                f'in the federation TOML, or personalise.method = "local_steps" in the tenant\'s TOML'
            )

    @cached_property
    def placement(self) -> Placement:
        """Where this tenant's models live and in which precision (`[train] device` and `dtype`)."""
        return Placement.of(self.federation.train.device, self.federation.train.dtype)

    @property
    def name(self) -> str:
        """The tenant's name."""
        return self.settings.tenant.name

    @cached_property
    def identity(self) -> Identity:
        """This tenant's own keys."""
        return load_identity(Path(self.settings.tenant.keys_dir), self.name)

    @cached_property
    def hq_keyring(self) -> Keyring:
        """The only signer a tenant trusts: HQ."""
        return Keyring([load_public_key(key_paths(Path(self.settings.tenant.keys_dir), HQ_NAME)["public"])])

    @cached_property
    def runtime(self) -> TenantRuntime:
        """The tenant's store and ingestion pipeline."""
        return open_tenant(self.settings, self.identity, redactor=_redactor())

    @property
    def store(self) -> FeedbackStore:
        """The encrypted feedback store."""
        return self.runtime.store

    @cached_property
    def release(self) -> ReleaseController:
        """The tenant's release pointer (serving version, canary, share)."""
        return ReleaseController(self.store, self.settings.release)

    def adapter(self, version_id: str) -> AdapterState:
        """An installed version's adapter, from memory or decrypted from the store."""
        if version_id not in self.adapters:
            self.adapters[version_id] = adapter_from_bytes(self.store.versions.adapter(version_id))
        return self.adapters[version_id]
