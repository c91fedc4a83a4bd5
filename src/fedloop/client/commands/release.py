"""`fedloop release`: a tenant operator's view and hands on the release pointer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer
from rich.table import Table

from fedloop.client.commands.context import CONFIG, FEDERATION, OPERATOR, federation_settings_or_fail, tenant_store
from fedloop.client.release.comparison import Comparison
from fedloop.client.release.controller import ReleaseController, ReleaseError, now_ms
from fedloop.client.store.api import ReleaseRecord
from fedloop.client.tenant_settings import ReleaseSection
from fedloop.shared.console import audited, command_group, fail, output_console

T = TypeVar("T")

release_app = command_group("The tenant's release pointer: serving version, canary, promotion, rollback.")


@release_app.command("status")
def status(config: Path = CONFIG) -> None:
    """What serves, which canary runs on what share, how canary and control compare, and the pointer's history."""
    with tenant_store(config) as (settings, store):
        controller = ReleaseController(store, settings.release)
        comparison = controller.compare()
        history = store.versions.release_history()
        waiting = controller.waiting()
        declined = controller.declined()
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
        out.print(expected_time(comparison, history[-1].at_ms, settings.release))
        release = settings.release
        out.print(
            f"decision rule: the user is the unit; roll back when the canary is worse with confidence (hit-rate gap "
            f"upper bound < 0, or reject / complaint gap lower bound > 0), from {release.min_drafts_per_arm} decided "
            f"drafts of {release.min_users_per_arm} users per arm; widen from {release.canary_share:.0%} to "
            f"{release.widened_share:.0%} after {release.canary_dwell_h:g} h without harm; promote when the hit-rate "
            f"gap lower bound > {release.promote_margin * 100:+.1f} pts and the canary is {release.promote_after_h:g} "
            f"h old; {release.confidence:.0%} family-wise, valid at every look"
        )
    for version, why in declined.items():
        out.print(f"not offered or served here: {version} ({why}); `fedloop release readmit` allows it again")
    if waiting is not None:
        out.print(f"waiting: {waiting} becomes the canary once the running one is decided")


def expected_time(comparison: Comparison, since_ms: int, release: ReleaseSection) -> str:
    """How long the window has run and about how much longer a gap of `mixture_scale` needs at the traffic so far."""
    hours = max((now_ms() - since_ms) / 3_600_000, 1e-3)
    decided = comparison.canary.decided + comparison.control.decided
    more = comparison.drafts_to_resolve(release)
    if more is None or decided == 0:
        return f"window open {hours:.1f} h, no decided draft in it yet: no estimate of the time a decision needs"
    return (
        f"window open {hours:.1f} h, {decided} decided drafts ({decided / hours * 24:.0f} a day): a "
        f"{release.mixture_scale * 100:g}-point gap would be decided after about {more} more, "
        f"{more / (decided / hours) / 24:.1f} more days at this traffic"
    )


def _act(config: Path, operator: str, reason: str, act: Callable[[ReleaseController, str], T]) -> T:
    """`act(controller, why)` as the audited operator on the tenant's store (exits naming the problem)."""
    operator = audited(operator, reason)
    with tenant_store(config) as (settings, store):
        try:
            return act(ReleaseController(store, settings.release, actor=operator), f"{operator}: {reason}")
        except ReleaseError as err:
            fail(str(err))


def _moved(record: ReleaseRecord) -> None:
    canary = f"canary {record.canary} on {record.share:.0%}" if record.canary else "canary none"
    typer.echo(f"{record.action}: serving {record.serving}, {canary}")


@release_app.command("promote")
def promote(
    operator: str = OPERATOR, reason: str = typer.Option(..., help="Why (audited)."), config: Path = CONFIG
) -> None:
    """Serve the running canary to everyone now."""
    _moved(_act(config, operator, reason, ReleaseController.promote))


@release_app.command("rollback")
def rollback(
    operator: str = OPERATOR, reason: str = typer.Option(..., help="Why (audited)."), config: Path = CONFIG
) -> None:
    """Drop the running canary, or go back to the version that served before the current one."""
    _moved(_act(config, operator, reason, ReleaseController.rollback))


@release_app.command("supersede")
def supersede(
    version: str = typer.Option(..., help="The installed version that replaces the running canary."),
    operator: str = OPERATOR,
    reason: str = typer.Option(..., help="Why (audited)."),
    config: Path = CONFIG,
) -> None:
    """Replace the running canary by another installed version now (a fresh window; normally newer versions wait)."""
    _moved(_act(config, operator, reason, lambda controller, why: controller.supersede(version, why)))


@release_app.command("readmit")
def readmit(
    version: str = typer.Option(..., help="The refused or rolled-back version to allow again."),
    operator: str = OPERATOR,
    reason: str = typer.Option(..., help="Why (audited)."),
    config: Path = CONFIG,
) -> None:
    """Allow a version this tenant refused or rolled back to be offered and served again."""
    _act(config, operator, reason, lambda controller, why: controller.readmit(version, why))
    typer.echo(f"{version} re-admitted: the next offer of it may start a canary, and requests may name it")


@release_app.command("export")
def export(
    out: Path = typer.Option(..., help="Directory to write the adapters and routing.json into."),
    operator: str = OPERATOR,
    reason: str = typer.Option(..., help="Why (audited)."),
    settings: Path = FEDERATION,
    config: Path = CONFIG,
) -> None:
    """Write the serving and canary adapters in the PEFT layout, with a routing manifest, for an inference server.

    The files leave the tenant's at-rest encryption: keep them where only the inference server reads them.
    """
    from fedloop.client.release.export import ExportError, export_release

    operator = audited(operator, reason)
    federation = federation_settings_or_fail(settings)
    with tenant_store(config) as (tenant, store):
        try:
            manifest = export_release(store, federation, tenant, out, operator, reason)
        except ExportError as err:
            fail(str(err))
    canary = f", canary {manifest['canary']} on {manifest['canary_share']:.0%}" if manifest["canary"] else ""
    typer.echo(f"exported serving {manifest['serving']}{canary} to {out} (routing.json; these files are not encrypted)")
