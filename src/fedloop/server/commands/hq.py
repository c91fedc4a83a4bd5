"""`fedloop hq up|register-node` and `fedloop run`: HQ on Flower's Deployment Engine."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import typer

from fedloop.server.gateway import GatewaySpec
from fedloop.server.hq_settings import HQSettings, load_hq_settings
from fedloop.server.metrics import hq_registry
from fedloop.shared.config_files import FEDERATION_SETTINGS, HQ_CONFIG
from fedloop.shared.console import command_group, fail
from fedloop.shared.flower_processes import (
    DeploymentError,
    SuperLinkSpec,
    register_node,
    start_flower,
    stop_flower,
    submit_run,
    supervise_all,
    write_cli_config,
)
from fedloop.shared.logs import configure_logging
from fedloop.shared.metrics import serve_metrics
from fedloop.shared.overrides import effective_file
from fedloop.shared.run_layout import RunLayout
from fedloop.shared.settings import ConfigError, Settings, load_settings

hq_app = command_group("Run HQ: the SuperLink, its metrics, and the tenants it admits.")
FLOWER_APP_DIR = Path(__file__).resolve().parents[1] / "flower_app"  # server/flower_app: the bundle `flwr run` submits
CONFIG = typer.Option(HQ_CONFIG, "--config", help="HQ's TOML settings (home, certs, addresses).")


def hq_settings_or_fail(config: Path) -> HQSettings:
    """HQ's settings from `config`; exits with the file, key and allowed values if it is invalid."""
    try:
        return load_hq_settings(config)
    except ConfigError as err:
        fail(str(err))


@hq_app.command("up")
def hq_up(config: Path = CONFIG) -> None:
    """Run the SuperLink on loopback, the public Fleet-only gateway (nginx, TLS) and HQ's metrics until SIGTERM."""
    configure_logging()
    settings = hq_settings_or_fail(config)
    hq, certs = settings.hq, settings.certs
    spec = SuperLinkSpec(
        settings.home,
        certs / "ca.crt",
        certs / "superlink.crt",
        certs / "superlink.key",
        "127.0.0.1",
        hq.superlink_port,
    )
    gateway = GatewaySpec(
        settings.home, hq.host, hq.port, spec.certificate, spec.private_key, spec.ca_certificate, hq.superlink_port
    )
    with ExitStack() as running:
        try:
            superlink_command, gateway_command = spec.command(), gateway.command()
            write_cli_config(settings.home, spec.address, spec.ca_certificate)
            if hq.metrics_address:
                exporter = serve_metrics(hq_registry(RunLayout(settings.home)), hq.metrics_address)[0]
                running.callback(exporter.shutdown)
            superlink = start_flower(superlink_command, settings.home)
            running.callback(stop_flower, superlink)
            proxy = start_flower(gateway_command, settings.home)
            running.callback(stop_flower, proxy)
        except (DeploymentError, OSError) as err:
            fail(f"{err} (see {config})")
        typer.echo(
            f"Fleet API on {hq.host}:{hq.port} (nginx, TLS; SuperNode authentication; every other path "
            f"refused); Control API on {spec.address} for HQ's operators"
            + (f"; metrics on http://{hq.metrics_address}/metrics" if hq.metrics_address else "")
        )
        ended = supervise_all({"the SuperLink": superlink, "the gateway (nginx)": proxy})
    if ended is not None:
        fail(
            f"{ended[0]} exited with status {ended[1]}: see its log above"
            + (f" and {gateway.directory / 'error.log'}" if "gateway" in ended[0] else "")
        )
    typer.echo("stopped")


@hq_app.command("register-node")
def hq_register_node(
    key: Path = typer.Option(..., help="The tenant's SuperNode public key (<tenant>.node.pub)."),
    name: str = typer.Option(..., help="The tenant's name (shown by `flwr supernode list`)."),
    config: Path = CONFIG,
) -> None:
    """Allow a tenant's SuperNode to connect: register its public key with the running SuperLink."""
    try:
        typer.echo(register_node(hq_settings_or_fail(config).home, key, name).strip())
    except DeploymentError as err:
        fail(str(err))


def run(
    settings: Path = typer.Option(FEDERATION_SETTINGS, help="The federation settings TOML (shared with the tenants)."),
    continuous: bool = typer.Option(
        False,
        "--continuous",
        help="Keep the run alive and start a round whenever the tenants' feedback counts call for one ([schedule]).",
    ),
    config: Path = CONFIG,
) -> None:
    """Submit a federated run to the SuperLink (`flwr run`), stream its log, and fail if it did not finish.

    With --continuous (or `schedule.continuous = true`) the run does not stop after `federation.rounds`: between
    rounds HQ asks the tenants only how many new training samples they have, and starts a round when
    `schedule.min_tenants` of them have `schedule.min_new_samples`, or after `schedule.max_interval_s`; it ends
    after `schedule.max_rounds` (0 = when stopped). Why the next round waits: `fedloop status --hq`."""
    home = hq_settings_or_fail(config).home
    summary = RunLayout(home).summary
    started = time.time()
    try:
        load_settings(settings)
        status = submit_run(
            home, FLOWER_APP_DIR, effective_file(settings, set(Settings.model_fields)), continuous=continuous
        )
    except ConfigError as err:
        fail(str(err))
    except DeploymentError as err:
        fail(str(err))
    if status != 0:
        fail(f"`flwr run` exited with {status}; see the log above")
    if not summary.exists() or summary.stat().st_mtime < started:
        fail(f"the run did not finish (no new {summary}): see the ServerApp's error in the log above")
    typer.echo(f"run finished; summary: {summary}")
