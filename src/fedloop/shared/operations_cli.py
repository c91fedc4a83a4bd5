"""`fedloop status`, `audit` and `report`: one command each for either side, answered by the side it names."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.table import Table

from fedloop.shared.command_line import HQ_CONFIG, TENANT_CONFIG, CommandLine
from fedloop.shared.console import command_group, fail, output_console

TENANT = typer.Option(None, "--tenant", help=f"A tenant's TOML (e.g. {TENANT_CONFIG}): the tenant's view.")
HQ = typer.Option(None, "--hq", help=f"HQ's TOML (e.g. {HQ_CONFIG}): HQ's view.")
SIDE_OPTIONS = {"run": "--run runs/<run>", "hq": f"--hq {HQ_CONFIG}", "tenant": f"--tenant {TENANT_CONFIG}"}
T = TypeVar("T")


def _one_side(**given: Path | None) -> tuple[str, Path]:
    """The one side named on the command line (its option's name) and its path; exits naming the choices."""
    named = [(side, path) for side, path in given.items() if path is not None]
    if len(named) != 1:
        *others, last = (SIDE_OPTIONS[side] for side in given)
        fail(f"say {'which' if 'run' in given else 'whose'}: {', '.join(others)} or {last} (one of them)")
    return named[0]


def _installed(views: dict[str, T], side: str) -> T:
    """The view `side` registered; exits saying which part of fedloop is missing if none did."""
    if side not in views:
        fail(
            f"--{side} needs the {'simulation' if side == 'run' else side} commands, which this installation "
            "lacks: install fedloop with its client and server packages"
        )
    return views[side]


def _rows(document: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, value in document.items():
        if isinstance(value, dict) and value:
            yield from _rows(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", "-" if value is None or value == {} else str(value)


def add_side_commands(command_line: CommandLine) -> None:
    """Add `status`, `audit verify|show` and `report` to the root, each asking the side its option names."""
    app = command_line.app

    @app.command("status")
    def status(
        tenant: Path | None = TENANT,
        hq: Path | None = HQ,
        as_json: bool = typer.Option(False, "--json", help="Print JSON (for scripts)."),
    ) -> None:
        """Serving version, canary, last round, samples, breaker, key ages (tenant); versions, last round (HQ)."""
        side, config = _one_side(tenant=tenant, hq=hq)
        document = _installed(command_line.status_of, side)(config)
        if as_json:
            typer.echo(json.dumps(document, indent=2, sort_keys=True))
            return
        table = Table(title=f"fedloop status ({'tenant ' + document['tenant'] if tenant else 'HQ'})", show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value")
        for key, value in _rows(document):
            table.add_row(key, value)
        output_console().print(table)

    audit_app = command_group("The tamper-evident audit log of a tenant or of HQ.")
    app.add_typer(audit_app, name="audit")

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
        with _installed(command_line.audit_log_of, side)(config) as log:
            verdict = log.verify(expect_head)
        if not verdict.ok:
            output_console().print(f"[red]audit log broken[/red]: {verdict.problem}")
            raise typer.Exit(code=1)
        typer.echo(
            f"audit log intact: {verdict.entries} entries; head {verdict.head} (keep it to check later with "
            "--expect-head)"
        )

    @audit_app.command("show")
    def show(
        tenant: Path | None = TENANT,
        hq: Path | None = HQ,
        last: int = typer.Option(50, help="How many of the newest entries."),
    ) -> None:
        """The newest audit entries: when, who, what, to which subject."""
        side, config = _one_side(tenant=tenant, hq=hq)
        with _installed(command_line.audit_log_of, side)(config) as log:
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
        data = _installed(command_line.report_of, side)(source, version)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_report(data))
        typer.echo(f"report written to {out}")
