"""HQ's ServerApp as Flower's Deployment Engine loads it (`fedloop.server.deployed:app`).

`fedloop run` passes the run config: `settings` (the federation settings TOML),
`home` (HQ's directory: `keys/` with HQ's key pair and the tenants' public
keys, `hq/` with the registry; the run summary is written there too) and
`workdir` (where `fedloop run` was started, so relative paths in the settings
mean what they mean on the command line).
"""

from __future__ import annotations

import os
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedloop.server.app import run_hq
from fedloop.shared.logs import configure_logging
from fedloop.shared.run_layout import RunLayout
from fedloop.shared.settings import load_settings

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation described by the run config's settings file."""
    configure_logging()
    missing = [k for k in ("settings", "home") if not context.run_config.get(k)]
    if missing:
        raise ValueError(f"run config lacks {missing}: submit the run with `fedloop run`")
    if context.run_config.get("workdir"):
        os.chdir(str(context.run_config["workdir"]))
    settings = load_settings(Path(str(context.run_config["settings"])))
    if context.run_config.get("continuous"):  # `fedloop run --continuous`
        settings = settings.model_copy(update={"schedule": settings.schedule.model_copy(update={"continuous": True})})
    run_hq(grid, settings, RunLayout(Path(str(context.run_config["home"]))), context.run_id)
