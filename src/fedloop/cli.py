"""The `fedloop` command line: one root, a module per command group.

The root is the one place that sees every side: it adds the tenant's groups
(`tenant`, `release`, `samples`, `vault`, `keys rotate`), HQ's (`hq`, `run`,
`versions`), the simulation's `demo`, the shared `keys`, `certs` and `model`,
and answers `status`, `audit` and `report` with the view of the side its option
names. No side imports it (pyproject.toml's contracts). Everything heavy is
imported inside the commands, so `fedloop --help` stays fast.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from fedloop.client.commands.keys import keys_rotate
from fedloop.client.commands.release import release_app
from fedloop.client.commands.samples import samples_app
from fedloop.client.commands.tenant import tenant_app
from fedloop.client.commands.vault import vault_app
from fedloop.client.commands.views import tenant_audit_log, tenant_report, tenant_status
from fedloop.client.tenant_settings import TenantSettings
from fedloop.server.commands.hq import hq_app, run
from fedloop.server.commands.versions import versions_app
from fedloop.server.commands.views import hq_audit_log, hq_report, hq_status
from fedloop.server.hq_settings import HQSettings
from fedloop.shared.commands.keys import certs, keys_app
from fedloop.shared.commands.model import model_app
from fedloop.shared.config_files import HQ_CONFIG, TENANT_CONFIG
from fedloop.shared.console import command_group, errors, fail, output_console
from fedloop.shared.crypto import CryptoError
from fedloop.shared.overrides import OverrideError, keep_overrides
from fedloop.shared.settings import Settings
from fedloop.shared.sqlite_db import DatabaseFileError
from fedloop.simulation.commands.demo import demo
from fedloop.simulation.commands.views import run_report

app = command_group(
    "fedloop: federated LoRA fine-tuning from users' accept/edit/reject feedback.", add_completion=False
)
audit_app = command_group("The tamper-evident audit log of a tenant or of HQ.")
keys_app.command("rotate")(keys_rotate)
for group, name in (
    (tenant_app, "tenant"),
    (release_app, "release"),
    (samples_app, "samples"),
    (vault_app, "vault"),
    (hq_app, "hq"),
    (versions_app, "versions"),
    (keys_app, "keys"),
    (model_app, "model"),
    (audit_app, "audit"),
):
    app.add_typer(group, name=name)


@app.callback()
def overrides(
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="Override a config key, as section.key=value (repeatable), validated as if the file said it; it "
        "applies to the file (federation, tenant or HQ) whose settings have that section.",
    ),
) -> None:
    """fedloop: federated LoRA fine-tuning from users' accept/edit/reject feedback."""
    known = set(Settings.model_fields) | set(TenantSettings.model_fields) | set(HQSettings.model_fields)
    try:
        for section, key, _ in keep_overrides(set_):
            if section not in known:
                fail(f"--set {section}.{key}: no config file has a [{section}] section; sections: {sorted(known)}")
    except OverrideError as err:
        fail(str(err))


app.command("run")(run)
app.command("demo")(demo)
app.command("certs")(certs)
# Each side's view of the shared commands, by the option that names the side.
STATUS_OF = {"tenant": tenant_status, "hq": hq_status}
AUDIT_LOG_OF = {"tenant": tenant_audit_log, "hq": hq_audit_log}
REPORT_OF = {"tenant": tenant_report, "hq": hq_report, "run": run_report}

TENANT = typer.Option(None, "--tenant", help=f"A tenant's TOML (e.g. {TENANT_CONFIG}): the tenant's view.")
HQ = typer.Option(None, "--hq", help=f"HQ's TOML (e.g. {HQ_CONFIG}): HQ's view.")
SIDE_OPTIONS = {"run": "--run runs/<run>", "hq": f"--hq {HQ_CONFIG}", "tenant": f"--tenant {TENANT_CONFIG}"}


def _one_side(**given: Path | None) -> tuple[str, Path]:
    """The one side named on the command line (its option's name) and its path; exits naming the choices."""
    named = [(side, path) for side, path in given.items() if path is not None]
    if len(named) != 1:
        *others, last = (SIDE_OPTIONS[side] for side in given)
        fail(f"say {'which' if 'run' in given else 'whose'}: {', '.join(others)} or {last} (one of them)")
    return named[0]


def _rows(document: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, value in document.items():
        if isinstance(value, dict) and value:
            yield from _rows(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", "-" if value is None or value == {} else str(value)


@app.command("status")
def status(
    tenant: Path | None = TENANT,
    hq: Path | None = HQ,
    as_json: bool = typer.Option(False, "--json", help="Print JSON (for scripts)."),
) -> None:
    """Serving version, canary, last round, samples, breaker, key ages (tenant); versions, last round (HQ)."""
    side, config = _one_side(tenant=tenant, hq=hq)
    document = STATUS_OF[side](config)
    if as_json:
        typer.echo(json.dumps(document, indent=2, sort_keys=True))
        return
    table = Table(title=f"fedloop status ({'tenant ' + document['tenant'] if tenant else 'HQ'})", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in _rows(document):
        table.add_row(key, value)
    output_console().print(table)


@audit_app.command("verify")
def verify(
    tenant: Path | None = TENANT,
    hq: Path | None = HQ,
    expect_head: str | None = typer.Option(
        None,
        help="A head printed earlier (SEQ:DIGEST) that must still be in the chain: catches deleted newest entries.",
    ),
) -> None:
    """Walk the chained audit log; exit 1 naming the first edited, deleted or reordered entry."""
    side, config = _one_side(tenant=tenant, hq=hq)
    with AUDIT_LOG_OF[side](config) as log:
        verdict = log.verify(expect_head)
    if not verdict.ok:
        output_console().print(f"[red]audit log broken[/red]: {verdict.problem}")
        raise typer.Exit(code=1)
    typer.echo(
        f"audit log intact: {verdict.entries} entries; head {verdict.head} (keep it to check later with --expect-head)"
    )


@audit_app.command("show")
def show(
    tenant: Path | None = TENANT,
    hq: Path | None = HQ,
    last: int = typer.Option(50, help="How many of the newest entries."),
) -> None:
    """The newest audit entries: when, who, what, to which subject."""
    side, config = _one_side(tenant=tenant, hq=hq)
    with AUDIT_LOG_OF[side](config) as log:
        entries = log.entries()[-last:]
    table = Table(title="Audit log (newest last)")
    for column in ("seq", "at (UTC)", "actor", "action", "subject"):
        table.add_column(column, no_wrap=column != "subject")
    for entry in entries:
        at = datetime.fromtimestamp(entry.at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(str(entry.seq), at, entry.actor, entry.action, entry.subject)
    output_console().print(table)


@app.command("report")
def report(
    out: Path = typer.Option(Path("report.html"), help="Where to write the HTML report."),
    run: Path | None = typer.Option(
        None, "--run", help="A simulated run directory (runs/<run>/): HQ's registry and every tenant's store."
    ),
    tenant: Path | None = TENANT,
    hq: Path | None = HQ,
    version: str | None = typer.Option(None, help="Only this version and its ancestors."),
) -> None:
    """Write a self-contained HTML evaluation report (plots embedded) for a run, HQ, or a tenant."""
    from fedloop.shared.report import render_report

    side, source = _one_side(run=run, hq=hq, tenant=tenant)
    data = REPORT_OF[side](source, version)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(data))
    typer.echo(f"report written to {out}")


def main() -> None:
    """Console-script entry point: a failed cryptographic check or a broken database file ends with its message,
    never a traceback."""
    try:
        app()
    except (CryptoError, DatabaseFileError) as err:
        errors.print(f"[red]error:[/red] {escape(str(err))}", highlight=False)
        raise SystemExit(2) from None
