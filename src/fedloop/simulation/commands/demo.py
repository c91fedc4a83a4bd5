"""`fedloop demo`: a simulated multi-tenant federation (Flower Simulation Engine), and what happened in it."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from fedloop.shared.console import fail, output_console
from fedloop.shared.logs import configure_logging
from fedloop.shared.settings import ConfigError, load_settings


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
