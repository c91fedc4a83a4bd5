"""The tenant's answers to `fedloop status|audit|report --tenant`, from its store alone."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedloop.client.commands.context import tenant_store
from fedloop.shared.console import fail

if TYPE_CHECKING:
    from fedloop.client.store import FeedbackStore
    from fedloop.shared.audit import AuditLog
    from fedloop.shared.report import ReportData


def tenant_status(config: Path) -> dict[str, Any]:
    """`fedloop status --tenant`: the tenant's status document."""
    from fedloop.client.status import tenant_status as status_document

    with tenant_store(config) as (settings, store):
        return status_document(settings, store)


@contextmanager
def tenant_audit_log(config: Path) -> Iterator[AuditLog]:
    """`fedloop audit … --tenant`: the tenant's audit log, open while the block runs."""
    with tenant_store(config) as (_, store):
        yield store.audit_log


def tenant_report(config: Path, version: str | None) -> ReportData:
    """`fedloop report --tenant`: what this tenant's store knows (only `version`'s lineage if given)."""
    from fedloop.client.report_data import add_tenant
    from fedloop.shared.report import ReportData

    with tenant_store(config) as (settings, store):
        name = settings.tenant.name
        data = ReportData(f"fedloop evaluation report: tenant {name}", f"tenant store {settings.store_path}")
        add_tenant(data, name, store, _lineage(store, version))
    return data


def _lineage(store: FeedbackStore, version: str | None) -> list[str] | None:
    """`version` and its ancestors as this tenant installed them (None: every version)."""
    if version is None:
        return None
    parents = {v.version_id: v.parent for v in store.versions.installed()}
    if version not in parents:
        fail(f"version {version!r} was never installed by this tenant")
    chain = [version]
    while parent := parents.get(chain[-1]):
        chain.append(parent)
    return chain
