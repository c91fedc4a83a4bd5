"""`fedloop release`: a tenant operator's view and hands on the release pointer."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fedloop.client.cli import CONFIG, OPERATOR, open_runtime
from fedloop.client.release.controller import ReleaseController, ReleaseError
from fedloop.shared.console import audited, fail, output_console

release_app = typer.Typer(help="The tenant's release pointer: serving version, canary, promotion, rollback.",
                          no_args_is_help=True)


@release_app.command("status")
def status(config: Path = CONFIG) -> None:
    """What serves, which canary runs on what share, how canary and control compare, and the pointer's history."""
    runtime = open_runtime(config)
    try:
        controller = ReleaseController(runtime.store, runtime.settings.release)
        comparison = controller.compare()
        history = runtime.store.release_history()
    finally:
        runtime.close()
    out = output_console()
    if not history:
        out.print("nothing released yet: the first version that passes the gates will serve everyone")
        return
    table = Table(title="Release pointer history")
    for column in ("action", "serving", "canary (share)", "why"):
        table.add_column(column, no_wrap=column != "why")
    for record in history:
        canary = f"{record.canary} ({record.share:.0%})" if record.canary else "-"
        table.add_row(record.action, record.serving or "-", canary, record.reason)
    out.print(table)
    if comparison is not None:
        out.print(comparison.summary())


def _act(config: Path, operator: str, reason: str, action: str) -> None:
    operator = audited(operator, reason)
    runtime = open_runtime(config)
    try:
        controller = ReleaseController(runtime.store, runtime.settings.release, actor=operator)
        record = getattr(controller, action)(f"{operator}: {reason}")
    except ReleaseError as err:
        fail(str(err))
    finally:
        runtime.close()
    typer.echo(f"{record.action}: serving {record.serving}, canary {record.canary or 'none'}")


@release_app.command("promote")
def promote(operator: str = OPERATOR, reason: str = typer.Option(..., help="Why (audited)."),
            config: Path = CONFIG) -> None:
    """Serve the running canary to everyone now."""
    _act(config, operator, reason, "promote")


@release_app.command("rollback")
def rollback(operator: str = OPERATOR, reason: str = typer.Option(..., help="Why (audited)."),
             config: Path = CONFIG) -> None:
    """Drop the running canary, or go back to the version that served before the current one."""
    _act(config, operator, reason, "rollback")
