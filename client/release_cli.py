"""`fedloop release`: a tenant operator's view and hands on the release pointer."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fedloop.client.cli import CONFIG, OPERATOR, open_runtime
from fedloop.client.release.controller import ReleaseController, ReleaseError
from fedloop.shared.console import audited, command_group, fail, output_console

release_app = command_group("The tenant's release pointer: serving version, canary, promotion, rollback.")


@release_app.command("status")
def status(config: Path = CONFIG) -> None:
    """What serves, which canary runs on what share, how canary and control compare, and the pointer's history."""
    runtime = open_runtime(config)
    try:
        controller = ReleaseController(runtime.store, runtime.settings.release)
        comparison = controller.compare()
        history = runtime.store.versions.release_history()
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
        release = runtime.settings.release
        arms = min(comparison.canary.decided, comparison.control.decided)
        out.print(
            f"decision rule: roll back when the canary is worse with confidence (hit-rate gap upper bound < 0, "
            f"or reject / complaint gap lower bound > 0); a win when the hit-rate gap lower bound >= "
            f"{release.promote_margin * 100:+.1f} pts; {release.confidence:.0%} family-wise, valid at every "
            f"look; decisions start at {release.min_drafts_per_arm} decided drafts per arm (now {arms})"
        )


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
def promote(
    operator: str = OPERATOR, reason: str = typer.Option(..., help="Why (audited)."), config: Path = CONFIG
) -> None:
    """Serve the running canary to everyone now."""
    _act(config, operator, reason, "promote")


@release_app.command("rollback")
def rollback(
    operator: str = OPERATOR, reason: str = typer.Option(..., help="Why (audited)."), config: Path = CONFIG
) -> None:
    """Drop the running canary, or go back to the version that served before the current one."""
    _act(config, operator, reason, "rollback")


@release_app.command("export")
def export(
    out: Path = typer.Option(..., help="Directory to write the adapters and routing.json into."),
    operator: str = OPERATOR,
    reason: str = typer.Option(..., help="Why (audited)."),
    settings: Path = typer.Option(
        Path("federation.toml"), help="The federation settings TOML HQ shared (LoRA shape and base model)."
    ),
    config: Path = CONFIG,
) -> None:
    """Write the serving and canary adapters in the PEFT layout, with a routing manifest, for an inference server.

    The files leave the tenant's at-rest encryption: keep them where only the inference server reads them.
    """
    from fedloop.client.release.export import ExportError, export_release
    from fedloop.shared.settings import ConfigError, load_settings

    operator = audited(operator, reason)
    try:
        federation = load_settings(settings)
    except ConfigError as err:
        fail(str(err))
    runtime = open_runtime(config)
    try:
        manifest = export_release(runtime.store, federation, runtime.settings, out, operator, reason)
    except ExportError as err:
        fail(str(err))
    finally:
        runtime.close()
    canary = f", canary {manifest['canary']} on {manifest['canary_share']:.0%}" if manifest["canary"] else ""
    typer.echo(f"exported serving {manifest['serving']}{canary} to {out} (routing.json; these files are not encrypted)")
