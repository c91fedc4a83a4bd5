"""`fedloop status` and `fedloop audit verify`: one view and one integrity check for either side."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from fedloop.shared.audit import AuditLog
from fedloop.shared.console import command_group, fail, output_console

TENANT = typer.Option(None, "--tenant", help="A tenant's TOML (configs/tenant.toml): the tenant's view.")
HQ = typer.Option(None, "--hq", help="HQ's TOML (configs/hq.toml): HQ's view.")
audit_app = command_group("The tamper-evident audit log of a tenant or of HQ.")


def _one_side(tenant: Path | None, hq: Path | None) -> None:
    if (tenant is None) == (hq is None):
        fail("say whose: --tenant configs/tenant.toml or --hq configs/hq.toml (one of them)")


def _rows(document: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, value in document.items():
        if isinstance(value, dict) and value:
            yield from _rows(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", "-" if value is None or value == {} else str(value)


def status(tenant: Optional[Path] = TENANT, hq: Optional[Path] = HQ,
           as_json: bool = typer.Option(False, "--json", help="Print JSON (for scripts).")) -> None:
    """Serving version, canary, last round, samples, breaker, key ages (tenant); versions, last round (HQ)."""
    _one_side(tenant, hq)
    if tenant is not None:
        from fedloop.client.cli import open_runtime
        from fedloop.client.status import tenant_status

        runtime = open_runtime(tenant)
        try:
            document = tenant_status(runtime)
        finally:
            runtime.close()
    else:
        from fedloop.server.hq_cli import hq_settings_or_fail
        from fedloop.server.registry import RegistryError
        from fedloop.server.status import hq_status
        from fedloop.shared.keys import KeyFileError

        try:
            document = hq_status(hq_settings_or_fail(hq))
        except (KeyFileError, RegistryError) as err:
            fail(str(err))
    if as_json:
        typer.echo(json.dumps(document, indent=2, sort_keys=True))
        return
    table = Table(title=f"fedloop status ({'tenant ' + document['tenant'] if tenant else 'HQ'})", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in _rows(document):
        table.add_row(key, value)
    output_console().print(table)


@contextmanager
def _audit_log(tenant: Path | None, hq: Path | None) -> Iterator[AuditLog]:
    _one_side(tenant, hq)
    if tenant is not None:
        from fedloop.client.cli import open_runtime

        runtime = open_runtime(tenant)
        try:
            yield runtime.store.audit_log
        finally:
            runtime.close()
        return
    from fedloop.server.hq_cli import hq_settings_or_fail
    from fedloop.server.versions_cli import open_registry
    from fedloop.shared.run_layout import RunLayout

    layout = RunLayout(hq_settings_or_fail(hq).home)
    with open_registry(None, layout.hq, layout.keys) as registry:
        yield registry.audit_log


@audit_app.command("verify")
def verify(tenant: Optional[Path] = TENANT, hq: Optional[Path] = HQ,
           expect_head: Optional[str] = typer.Option(None, help="A head printed earlier (SEQ:DIGEST) that must "
                                                                 "still be in the chain: catches deleted newest "
                                                                 "entries.")) -> None:
    """Walk the chained audit log; exit 1 naming the first edited, deleted or reordered entry."""
    with _audit_log(tenant, hq) as log:
        verdict = log.verify(expect_head)
    if not verdict.ok:
        output_console().print(f"[red]audit log broken[/red]: {verdict.problem}")
        raise typer.Exit(code=1)
    typer.echo(f"audit log intact: {verdict.entries} entries; head {verdict.head} (keep it to check later with "
               "--expect-head)")


@audit_app.command("show")
def show(tenant: Optional[Path] = TENANT, hq: Optional[Path] = HQ,
         last: int = typer.Option(50, help="How many of the newest entries.")) -> None:
    """The newest audit entries: when, who, what, to which subject."""
    from datetime import datetime, timezone

    with _audit_log(tenant, hq) as log:
        entries = log.entries()[-last:]
    table = Table(title="Audit log (newest last)")
    for column in ("seq", "at (UTC)", "actor", "action", "subject"):
        table.add_column(column, no_wrap=column != "subject")
    for entry in entries:
        at = datetime.fromtimestamp(entry.at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(str(entry.seq), at, entry.actor, entry.action, entry.subject)
    output_console().print(table)


def report(out: Path = typer.Option(Path("report.html"), help="Where to write the HTML report."),
           run: Optional[Path] = typer.Option(None, "--run", help="A simulated run directory (runs/<run>/): HQ's "
                                                                 "registry and every tenant's store."),
           tenant: Optional[Path] = TENANT, hq: Optional[Path] = HQ,
           version: Optional[str] = typer.Option(None, help="Only this version and its ancestors.")) -> None:
    """Write a self-contained HTML evaluation report (plots embedded) for a run, HQ, or a tenant."""
    from fedloop.shared.report import ReportData, render_report

    if sum(x is not None for x in (run, tenant, hq)) != 1:
        fail("say which: --run runs/<run>, --hq configs/hq.toml or --tenant configs/tenant.toml (one of them)")
    if run is not None:
        data = _run_report(run, version)
    elif hq is not None:
        data = _hq_report(hq, version)
    else:
        from fedloop.client.cli import open_runtime
        from fedloop.client.report_data import add_tenant

        runtime = open_runtime(tenant)
        name = runtime.settings.tenant.name
        data = ReportData(f"fedloop evaluation report: tenant {name}", f"tenant store {runtime.settings.store_path}")
        try:
            add_tenant(data, name, runtime.store, _tenant_lineage(runtime.store, version))
        finally:
            runtime.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(data))
    typer.echo(f"report written to {out}")


def _tenant_lineage(store, version: str | None) -> list[str] | None:  # noqa: ANN001 - a FeedbackStore
    """`version` and its ancestors as this tenant installed them (None: every version)."""
    if version is None:
        return None
    parents = {v.version_id: v.parent for v in store.installed_versions()}
    if version not in parents:
        fail(f"version {version!r} was never installed by this tenant")
    chain = [version]
    while parents.get(chain[-1]):
        chain.append(parents[chain[-1]])
    return chain


def _hq_report(config: Path, version: str | None):  # noqa: ANN202 - ReportData
    from fedloop.server.hq_cli import hq_settings_or_fail
    from fedloop.server.report_data import hq_report_data
    from fedloop.server.versions_cli import open_registry
    from fedloop.shared.run_layout import RunLayout

    layout = RunLayout(hq_settings_or_fail(config).home)
    with open_registry(None, layout.hq, layout.keys) as registry:
        return hq_report_data(registry, "fedloop evaluation report: HQ", f"HQ registry {layout.hq}", version)


def _run_report(run: Path, version: str | None):  # noqa: ANN202 - ReportData
    from fedloop.client.report_data import add_tenant
    from fedloop.client.store import FeedbackStore
    from fedloop.server.report_data import hq_report_data
    from fedloop.server.versions_cli import open_registry
    from fedloop.shared.keys import load_identity
    from fedloop.shared.run_layout import RunLayout

    layout = RunLayout(run)
    with open_registry(run, None, None) as registry:
        data = hq_report_data(registry, f"fedloop evaluation report: {run.name}", f"simulated run {run}", version)
    versions = [v["id"] for v in data.lineage]
    for store_dir in sorted((layout.root / "tenants").glob("*")):
        identity = load_identity(layout.keys, store_dir.name)
        store = FeedbackStore(store_dir / "feedback.db", identity.storage, identity.pseudonym_key)
        try:
            data.train_losses.pop(store_dir.name, None)  # the tenant's own step-by-step curves replace HQ's means
            add_tenant(data, store_dir.name, store, versions)
        finally:
            store.close()
    return data
