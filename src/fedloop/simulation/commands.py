"""The simulation's part of the `fedloop` command line (entry point `fedloop.commands: simulation`).

Adds `demo` and answers `report --run` for a simulated run directory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from fedloop.shared.command_line import CommandLine
from fedloop.shared.console import fail, output_console
from fedloop.shared.logs import configure_logging
from fedloop.shared.settings import ConfigError, load_settings

if TYPE_CHECKING:
    from fedloop.shared.report import ReportData


def register(command_line: CommandLine) -> None:
    """Plug `demo` and the run report into the root."""
    command_line.app.command("demo")(demo)
    command_line.report_of["run"] = run_report


def demo(
    config: Path = typer.Option(Path("configs/demo.toml"), help="Settings TOML for the simulated run."),
    resume: Path | None = typer.Option(
        None, help="An earlier run directory (runs/<run>/) to continue from the newest version in its registry."
    ),
) -> None:
    """Run a simulated multi-tenant federation (Flower Simulation Engine) and print what happened."""
    from fedloop.shared.adapter import ModelLoadError, check_model_path
    from fedloop.simulation.federation import (
        SimulationError,
        prepare_run,
        release_histories,
        resume_run,
        run_federation,
        served_rounds,
    )
    from fedloop.simulation.summary_view import render_releases, render_served, render_summary

    configure_logging()
    try:
        settings = load_settings(config)
    except ConfigError as err:
        fail(str(err))
    try:
        check_model_path(Path(settings.paths.model))
    except ModelLoadError as err:
        fail(f"{config}: {err}")
    started = time.monotonic()
    try:
        layout = resume_run(settings, resume) if resume else prepare_run(settings, Path(settings.paths.runs_dir))
    except ConfigError as err:
        fail(f"{config}: {err}")
    except SimulationError as err:
        fail(str(err))
    try:
        summary = run_federation(settings, layout)
    except SimulationError as err:
        fail(str(err))
    out = output_console()
    render_served(served_rounds(settings, layout), out)
    render_summary(summary, out)
    render_releases(release_histories(settings, layout), out)
    out.print(f"run directory: {layout.root}  (registry: {layout.hq}, summary: {layout.summary})")
    out.print(f"wall time: {time.monotonic() - started:.0f} s")


def run_report(run: Path, version: str | None) -> ReportData:
    """`fedloop report --run`: HQ's registry and every simulated tenant's store of a run directory."""
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
