"""`fedloop samples`: curated samples: human review and pools, absence sweeps, the moderation breaker, problem rates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer
from rich.table import Table

from fedloop.client.commands.context import CONFIG, OPERATOR, tenant_runtime, tenant_store
from fedloop.client.samples.pools import Decision
from fedloop.client.store.api import Pool, SampleQuery, SampleRecord, SampleStatus
from fedloop.shared.console import command_group, fail, output_console

samples_app = command_group("Curated samples: review, pools, sweeps, the moderation breaker.")
review_app = command_group("Human review of samples and pool promotions.")
samples_app.add_typer(review_app, name="review")
ReviewAction = Callable[..., SampleRecord]  # one of samples.pools' audited actions: (store, id, value, operator)


def _print_samples(samples: list[SampleRecord]) -> None:
    table = Table()
    for column in ("id", "pool", "status", "weight", "problem", "risk", "first seen", "prompt"):
        table.add_column(column, no_wrap=column != "prompt")
    for s in samples:
        table.add_row(
            s.id, s.pool, s.status, f"{s.weight:.2f}", s.problem_type or "", s.risk, s.first_seen_version, s.prompt[:50]
        )
    output_console().print(table)


@review_app.command("list")
def review_list(
    pool: Pool | None = typer.Option(None, help="Only this pool."),
    status: SampleStatus | None = typer.Option(None, help="Only this status."),
    limit: int = typer.Option(50, help="At most this many."),
    config: Path = CONFIG,
) -> None:
    """List samples (redacted)."""
    with tenant_store(config) as (_, store):
        samples = store.samples.find(SampleQuery(status=status, pools=(pool,) if pool else None))[-limit:]
    _print_samples(samples)


@review_app.command("show")
def review_show(sample_id: str, config: Path = CONFIG) -> None:
    """Show one sample in full (redacted texts only)."""
    with tenant_store(config) as (_, store):
        found = store.samples.find(SampleQuery(sample_id=sample_id))
    if not found:
        fail(f"unknown sample {sample_id!r}")
    for name, value in vars(found[0]).items():
        if name != "user_pseudonym":
            typer.echo(f"{name:19} {value}")


def _review(action: Callable[[], ReviewAction], sample_id: str, value: str, operator: str, config: Path) -> None:
    """Apply one audited review action (imported when used) and print where the sample now stands."""
    from fedloop.client.samples.pools import ReviewError

    with tenant_store(config) as (_, store):
        try:
            sample = action()(store, sample_id, value, operator)
        except ReviewError as err:
            fail(str(err))
    typer.echo(f"{sample.id}: pool {sample.pool}, status {sample.status}, label {sample.label!r}")


def _pools_action(name: str) -> Callable[[], ReviewAction]:
    def action() -> ReviewAction:
        from fedloop.client.samples import pools

        return {"promote": pools.promote, "demote": pools.demote, "decide": pools.decide, "label": pools.label}[name]

    return action


@review_app.command("promote")
def review_promote(
    sample_id: str,
    to: Pool = typer.Option(..., help="A later pool in the lifecycle."),
    operator: str = OPERATOR,
    config: Path = CONFIG,
) -> None:
    """Move a sample up the pool lifecycle (a human decision, audited)."""
    _review(_pools_action("promote"), sample_id, to, operator, config)


@review_app.command("demote")
def review_demote(
    sample_id: str,
    to: Pool = typer.Option(..., help="An earlier pool."),
    operator: str = OPERATOR,
    config: Path = CONFIG,
) -> None:
    """Move a sample down the pool lifecycle (audited)."""
    _review(_pools_action("demote"), sample_id, to, operator, config)


@review_app.command("decide")
def review_decide(
    sample_id: str,
    decision: Decision = typer.Option(..., help="admit (it may train) or reject."),
    operator: str = OPERATOR,
    config: Path = CONFIG,
) -> None:
    """Decide on a sample that waits for review (high-risk PII, curation.review_risk); audited."""
    _review(_pools_action("decide"), sample_id, decision, operator, config)


@review_app.command("label")
def review_label(
    sample_id: str,
    text: str = typer.Option(..., "--text", help="The label."),
    operator: str = OPERATOR,
    config: Path = CONFIG,
) -> None:
    """Attach a label to a sample (audited)."""
    _review(_pools_action("label"), sample_id, text, operator, config)


@review_app.command("export")
def review_export(
    out: Path = typer.Option(..., help="Label Studio tasks JSON to write."), config: Path = CONFIG
) -> None:
    """Export admitted samples as Label Studio tasks (config: configs/label_studio.xml)."""
    from fedloop.client.samples.pools import export_label_studio

    with tenant_store(config) as (_, store):
        count = export_label_studio(store, out)
    typer.echo(f"{count} tasks written to {out}")


@review_app.command("import")
def review_import(path: Path, operator: str = OPERATOR, config: Path = CONFIG) -> None:
    """Apply a Label Studio JSON export: pool choices and labels (all checked before any change)."""
    from fedloop.client.samples.pools import ReviewError, import_label_studio

    with tenant_store(config) as (_, store):
        try:
            counts = import_label_studio(store, path, operator)
        except ReviewError as err:
            fail(str(err))
    typer.echo(f"{counts['moved']} samples moved, {counts['labelled']} labelled")


@samples_app.command("sweep")
def samples_sweep(config: Path = CONFIG) -> None:
    """Apply the absence rules (no click, no order, no response, no conversion) now."""
    with tenant_runtime(config) as runtime:
        raised = runtime.pipeline.sweep()
    typer.echo(f"{raised} drafts flagged")


@samples_app.command("breaker-reset")
def breaker_reset(operator: str = OPERATOR, config: Path = CONFIG) -> None:
    """Reset the moderation breaker; held samples are moderated again."""
    with tenant_runtime(config) as runtime:
        admitted, quarantined = runtime.curator.reset_breaker(operator)
    typer.echo(f"breaker reset: {admitted} held samples admitted, {quarantined} quarantined")


@samples_app.command("problem-rate")
def problem_rate(
    problem_type: str = typer.Option(..., "--type", help="e.g. repeated_question"),
    versions: list[str] = typer.Option(..., "--version", help="Model version (repeatable)."),
    config: Path = CONFIG,
) -> None:
    """Share of each version's drafts flagged with a problem type."""
    with tenant_store(config) as (_, store):
        rates = [(version, *store.drafts.problem_rate(problem_type, version)) for version in versions]
    for version, flagged, total in rates:
        rate = f"{flagged / total:.1%}" if total else "n/a"
        typer.echo(f"{version}\t{problem_type}\t{flagged}/{total}\t{rate}")
