"""Open a tenant's store, privacy pipeline and curation from its settings and keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from fedloop.client.ingest.pipeline import IngestPipeline
from fedloop.client.metrics import tenant_registry
from fedloop.client.privacy.finders import Finder, LocalFinder, PoolFinder
from fedloop.client.privacy.moderation import LocalModeration, ModerationFilter
from fedloop.client.privacy.redaction import Redactor
from fedloop.client.samples.curation import Curator
from fedloop.client.store import FeedbackStore
from fedloop.client.tenant_settings import TenantSettings
from fedloop.shared.crypto import sm3_digest
from fedloop.shared.keys import Identity


@dataclass
class TenantRuntime:
    """A tenant's open store and the pipeline in front of it."""

    settings: TenantSettings
    identity: Identity
    store: FeedbackStore
    curator: Curator
    pipeline: IngestPipeline
    finder: Finder
    metrics: CollectorRegistry

    def close(self) -> None:
        """Close the store and stop any redaction workers."""
        self.store.close()
        self.finder.close()


def open_tenant(
    settings: TenantSettings,
    identity: Identity,
    store_path: Path | None = None,
    redactor: Redactor | None = None,
    moderation: ModerationFilter | None = None,
) -> TenantRuntime:
    """Open (creating if needed) the tenant's store and build its ingestion pipeline.

    With `ingest.redaction_workers` > 0, PII is found in that many worker processes.
    """
    store = FeedbackStore(
        store_path or settings.store_path,
        identity.storage,
        identity.pseudonym_key,
        settings.tenant.store_busy_timeout_s,
    )
    moderation = moderation or LocalModeration(settings.moderation.blocklist, settings.moderation.patterns)
    curator = Curator(store, settings.curation, settings.moderation, moderation, settings.evaluation)
    mac_key = sm3_digest(b"fedloop/event-mac/" + identity.pseudonym_key)
    workers = settings.ingest.redaction_workers
    finder: Finder = PoolFinder(workers) if workers else LocalFinder(redactor or Redactor())
    metrics, counters = tenant_registry(store, settings.release)
    pipeline = IngestPipeline(store, finder, curator, settings, mac_key, counters)
    return TenantRuntime(settings, identity, store, curator, pipeline, finder, metrics)
