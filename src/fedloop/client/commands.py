"""The tenant's part of the `fedloop` command line (entry point `fedloop.commands: tenant`).

Adds `tenant`, `vault`, `samples`, `release` and `keys rotate`, and answers
`status`, `audit` and `report` given `--tenant`. Everything heavy is imported
inside the commands, so `fedloop --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from fedloop.client.cli import CONFIG, open_store, rotate_keys, samples_app, tenant_app, vault_app
from fedloop.client.release_cli import release_app
from fedloop.shared.command_line import CommandLine
from fedloop.shared.console import fail

if TYPE_CHECKING:
    from fedloop.client.store import FeedbackStore
    from fedloop.shared.audit import AuditLog
    from fedloop.shared.report import ReportData


def register(command_line: CommandLine) -> None:
    """Plug the tenant's command groups and its views of the shared commands into the root."""
    app = command_line.app
    app.add_typer(tenant_app, name="tenant")
    app.add_typer(vault_app, name="vault")
    app.add_typer(samples_app, name="samples")
    app.add_typer(release_app, name="release")

    @command_line.keys.command("rotate")
    def keys_rotate(
        config: Path = CONFIG,
        operator: str = typer.Option(..., help="Who rotates (audited)."),
    ) -> None:
        """Add a new active SM4 storage key and re-encrypt the tenant's store while it keeps serving."""
        rotate_keys(config, operator)

    command_line.status_of["tenant"] = tenant_status
    command_line.audit_log_of["tenant"] = tenant_audit_log
    command_line.report_of["tenant"] = tenant_report


def tenant_status(config: Path) -> dict[str, Any]:
    """`fedloop status --tenant`: the tenant's status document."""
    from fedloop.client.status import tenant_status as status_document

    settings, store = open_store(config)
    try:
        return status_document(settings, store)
    finally:
        store.close()


@contextmanager
def tenant_audit_log(config: Path) -> Iterator[AuditLog]:
    """`fedloop audit … --tenant`: the tenant's audit log, open while the block runs."""
    _, store = open_store(config)
    try:
        yield store.audit_log
    finally:
        store.close()


def tenant_report(config: Path, version: str | None) -> ReportData:
    """`fedloop report --tenant`: what this tenant's store knows (only `version`'s lineage if given)."""
    from fedloop.client.report_data import add_tenant
    from fedloop.shared.report import ReportData

    settings, store = open_store(config)
    name = settings.tenant.name
    data = ReportData(f"fedloop evaluation report: tenant {name}", f"tenant store {settings.store_path}")
    try:
        add_tenant(data, name, store, _lineage(store, version))
    finally:
        store.close()
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
