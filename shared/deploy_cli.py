"""`fedloop certs`, `fedloop hq up|register-node`, `fedloop tenant up` and `fedloop run` (Deployment Engine)."""

from __future__ import annotations

from pathlib import Path

import typer

from fedloop.shared.certs import CertificateError, make_federation_certificates
from fedloop.shared.console import fail
from fedloop.shared.flower_processes import (DeploymentError, SuperLinkSpec, SuperNodeSpec, exec_flower,
                                             register_node, submit_run, write_cli_config)
from fedloop.shared.settings import ConfigError, load_settings

hq_app = typer.Typer(help="Run HQ: the SuperLink and the registry.", no_args_is_help=True)
HQ_HOME = typer.Option(Path("hq-home"), help="HQ's home: keys/ (HQ's key pair, tenants' public keys), hq/ "
                                             "(registry), superlink.db, flwr/.")


def certs(out: Path = typer.Option(Path("certs"), help="Directory for the CA, SuperLink and node key files."),
          tenant: list[str] = typer.Option(..., help="A tenant that needs a SuperNode key (repeat the option)."),
          host: list[str] = typer.Option(["127.0.0.1", "localhost"], help="Name or IP the SuperLink is reached at "
                                                                          "(repeat the option).")) -> None:
    """Make a CA, the SuperLink's TLS certificate and each tenant's SuperNode key (tests, first deployments)."""
    try:
        made = make_federation_certificates(out, tenant, host)
    except CertificateError as err:
        fail(str(err))
    typer.echo(f"CA certificate       {made.ca_certificate} (give it to every tenant)")
    typer.echo(f"SuperLink TLS        {made.superlink_certificate}, {made.superlink_key} (HQ only)")
    for name, key in made.node_keys.items():
        typer.echo(f"{name:20} {key} (that tenant only); register {made.node_public_key(name)} at HQ")


@hq_app.command("up")
def hq_up(home: Path = HQ_HOME,
          certs_dir: Path = typer.Option(Path("certs"), "--certs", help="Holds ca.crt, superlink.crt, superlink.key."),
          host: str = typer.Option("127.0.0.1", help="Address the SuperLink listens on (0.0.0.0 for all)."),
          port: int = typer.Option(9300, help="The SuperLink's port (Fleet, Control and Runtime APIs).")) -> None:
    """Start the SuperLink (TLS, SuperNode authentication on) in the foreground."""
    spec = SuperLinkSpec(home, certs_dir / "ca.crt", certs_dir / "superlink.crt", certs_dir / "superlink.key",
                         host, port)
    try:
        command = spec.command()
        write_cli_config(home, spec.address if host != "0.0.0.0" else f"127.0.0.1:{port}", spec.ca_certificate)
        exec_flower(command, home)
    except (DeploymentError, OSError) as err:
        fail(str(err))


@hq_app.command("register-node")
def hq_register_node(key: Path = typer.Option(..., help="The tenant's SuperNode public key (<tenant>.node.pub)."),
                     name: str = typer.Option(..., help="The tenant's name (shown by `flwr supernode list`)."),
                     home: Path = HQ_HOME) -> None:
    """Allow a tenant's SuperNode to connect: register its public key with the running SuperLink."""
    try:
        typer.echo(register_node(home, key, name).strip())
    except DeploymentError as err:
        fail(str(err))


def tenant_up(tenant: str = typer.Option(..., help="This tenant's name (as in the federation settings)."),
              home: Path = typer.Option(Path("tenant-home"), help="keys/ (the tenant's keys, HQ's public key) "
                                                                   "and tenants/<tenant>/ (its store)."),
              settings: Path = typer.Option(..., help="The federation settings TOML HQ shared."),
              superlink: str = typer.Option("127.0.0.1:9300", help="HQ's SuperLink as host:port."),
              ca: Path = typer.Option(Path("certs/ca.crt"), help="The CA certificate HQ's SuperLink is checked "
                                                                 "against."),
              node_key: Path = typer.Option(..., help="This tenant's SuperNode private key (<tenant>.node)."),
              port: int = typer.Option(9400, help="Local port of the SuperNode's runtime API (127.0.0.1).")) -> None:
    """Start this tenant's SuperNode (TLS, authenticated with its node key) in the foreground."""
    try:
        load_settings(settings)
        exec_flower(SuperNodeSpec(tenant, home, settings, superlink, ca, node_key, port).command(), home)
    except ConfigError as err:
        fail(str(err))
    except (DeploymentError, OSError) as err:
        fail(str(err))


def run(settings: Path = typer.Option(..., help="HQ's federation settings TOML."), home: Path = HQ_HOME) -> None:
    """Submit a federated run to the SuperLink (`flwr run`) and stream its log until it ends."""
    try:
        load_settings(settings)
        status = submit_run(home, settings)
    except ConfigError as err:
        fail(str(err))
    except DeploymentError as err:
        fail(str(err))
    summary = home / "summary.json"
    if status != 0:
        fail(f"`flwr run` exited with {status}; see the log above")
    typer.echo(f"run submitted and finished; summary: {summary}" if summary.exists() else "run submitted")
