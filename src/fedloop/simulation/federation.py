"""Run a whole federation in Flower's Simulation Engine: HQ and N tenants on one machine."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from fedloop.client.store import FeedbackStore
from fedloop.client.store.api import ReleaseRecord
from fedloop.client.tenant_settings import load_tenant_settings
from fedloop.server.app import build_server_app
from fedloop.shared.keys import init_keys, key_paths, load_identity
from fedloop.shared.run_layout import HQ_NAME, RunLayout
from fedloop.shared.settings import ConfigError, Settings
from fedloop.simulation.client_app import simulation_client_app
from fedloop.simulation.product import STYLES, ServedRound, read_product_log

log = logging.getLogger(__name__)


class SimulationError(RuntimeError):
    """The simulated federation did not complete."""


def check_simulation(settings: Settings) -> None:
    """Raise ConfigError for simulation settings that cannot run: unknown styles, an invalid tenant config."""
    unknown = sorted(set(settings.simulation.styles) - set(STYLES))
    if unknown or not settings.simulation.styles:
        raise ConfigError(f"simulation.styles: unknown or empty {unknown}; choose from {sorted(STYLES)}")
    if settings.simulation.tenant_config:
        load_tenant_settings(Path(settings.simulation.tenant_config))  # fails here, naming the file and key


def resume_run(settings: Settings, root: Path) -> RunLayout:
    """An earlier run directory, to continue from the newest version in its registry."""
    check_simulation(settings)
    layout = RunLayout(root)
    missing = [
        tenant
        for tenant in (HQ_NAME, *settings.federation.tenants)
        if not key_paths(layout.keys, tenant)["private"].exists()
    ]
    if missing:
        raise SimulationError(
            f"{root} is not a run directory of these settings: no keys for {missing} in "
            f"{layout.keys}; pass a directory `fedloop demo` created with the same tenants"
        )
    return layout


def prepare_run(settings: Settings, runs_dir: Path) -> RunLayout:
    """Create a fresh run directory with keys for HQ and every tenant."""
    check_simulation(settings)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    layout = RunLayout(runs_dir / f"{settings.federation.run_name}-{stamp}")
    layout.root.mkdir(parents=True)
    init_keys("hq", HQ_NAME, layout.keys)
    for tenant in settings.federation.tenants:
        init_keys("tenant", tenant, layout.keys)
    return layout


def release_histories(settings: Settings, layout: RunLayout) -> dict[str, list[ReleaseRecord]]:
    """Each simulated tenant's release pointer moves, read from its own store (the simulation holds every key)."""
    histories = {}
    for tenant in settings.federation.tenants:
        identity = load_identity(layout.keys, tenant)
        store = FeedbackStore(layout.tenant(tenant) / "feedback.db", identity.storage, identity.pseudonym_key)
        try:
            histories[tenant] = store.versions.release_history()
        finally:
            store.close()
    return histories


def served_rounds(settings: Settings, layout: RunLayout) -> dict[str, list[ServedRound]]:
    """What each tenant's simulated product was served, round by round (from the products' own logs)."""
    return {tenant: read_product_log(layout.product_log(tenant)) for tenant in settings.federation.tenants}


def simulation_backend(tenants: int) -> dict[str, Any]:
    """The Ray backend config: one CPU per tenant actor, as many actors at once as this machine has cores."""
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": min(tenants, os.cpu_count() or 1), "include_dashboard": False},
    }


RAY_START_ATTEMPTS = 2  # Ray's start-up can time out on a loaded 2-core machine; a second try has always held


def start_ray(init_args: dict[str, Any]) -> None:
    """Start Ray for the Simulation Engine (which then uses it, and stops it at the end of the run).

    A start that fails (e.g. "Timed out waiting for file …/gcs_server_port_…" on a loaded host) is logged and
    tried once more; a second failure ends the run with Ray's message.
    """
    import ray

    pythonpath = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        try:
            ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **init_args)
            return
        except Exception as err:  # Ray raises plain exceptions (and its own) for a start that did not complete
            ray.shutdown()
            if attempt == RAY_START_ATTEMPTS:
                raise SimulationError(f"Ray did not start after {attempt} attempts: {err}") from None
            log.warning("Ray did not start (%s); trying once more", err)


def simulate(server_app: ServerApp, client_app: ClientApp, tenants: int) -> None:
    """Run `server_app` and `tenants` copies of `client_app` in Flower's Simulation Engine, on Ray started here."""
    backend = simulation_backend(tenants)
    start_ray(backend["init_args"])
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=tenants, backend_config=backend)


def run_federation(settings: Settings, layout: RunLayout, server_app: ServerApp | None = None) -> dict[str, Any]:
    """Run HQ and the tenants in the Simulation Engine; returns HQ's run summary."""
    tenants = len(settings.federation.tenants)
    log.info("simulating %d tenants for %d rounds in %s", tenants, settings.federation.rounds, layout.root)
    simulate(server_app or build_server_app(settings, layout), simulation_client_app(settings, layout), tenants)
    if not layout.summary.exists():
        raise SimulationError(f"the federated run in {layout.root} did not finish: see the errors logged above")
    return json.loads(layout.summary.read_text())
