"""`fedloop tenant serve|up`: a tenant's services (FeedbackService, draft endpoint, release loop, SuperNode)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from fedloop.client.commands.context import CONFIG, FEDERATION, federation_settings_or_fail, open_runtime
from fedloop.shared.console import command_group, errors, fail
from fedloop.shared.flower_processes import stop_on_signals
from fedloop.shared.logs import configure_logging
from fedloop.shared.metrics import serve_metrics
from fedloop.shared.settings import Settings

if TYPE_CHECKING:
    from fedloop.client.ingest.runtime import TenantRuntime
    from fedloop.client.release.loop import ReleaseLoop
    from fedloop.client.serve.server import HttpServer

tenant_app = command_group("Run a tenant's services.")


def _start_draft_endpoint(
    runtime: TenantRuntime, federation: Settings, release_loop: ReleaseLoop, started: ExitStack
) -> HttpServer:
    """Load the base model and the released versions, and serve the OpenAI-compatible draft endpoint (what it
    started is stopped by `started`)."""
    from fedloop.client.bearer import load_api_keys
    from fedloop.client.serve.drafts import DraftService
    from fedloop.client.serve.http import build_http_app
    from fedloop.client.serve.server import start_http
    from fedloop.client.serve.transformers_engine import TransformersEngine
    from fedloop.shared.adapter import ModelLoadError, Placement

    serve = runtime.settings.serve
    keys = load_api_keys(serve.api_keys_file, "serve.api_keys_file")
    try:
        placement = Placement.of(federation.train.device, federation.train.dtype)
        engine = TransformersEngine(Path(federation.paths.model), federation.lora, placement, serve)
    except ModelLoadError as err:
        raise OSError(f"{err} (paths.model in the federation settings)") from None
    started.callback(engine.close)
    service = DraftService(runtime, engine, release_loop)
    service.sync()
    app = build_http_app(service, serve.model_alias, keys, serve.max_body_bytes)
    return start_http(app, serve.address, serve.tls_certificate, serve.tls_key)


def _start_service(runtime: TenantRuntime, federation: Settings | None) -> Callable[[], None]:
    """Start the FeedbackService, the draft endpoint (with `federation`), the release and maintenance loops.

    Returns what stops them all and closes the store.
    """
    from fedloop.client.ingest.service import MaintenanceLoop, start_server
    from fedloop.client.key_rotation import StorageKeyWatcher
    from fedloop.client.release.controller import ReleaseController
    from fedloop.client.release.export import ExportOnMove
    from fedloop.client.release.loop import ReleaseLoop

    settings = runtime.settings
    started = ExitStack()  # what is running, stopped in reverse order (on a failed start too)
    started.callback(runtime.close)
    release_export = (
        ExportOnMove(runtime.store, federation, settings)
        if federation is not None and settings.release.export_dir
        else None
    )
    release_loop = ReleaseLoop(
        ReleaseController(runtime.store, settings.release),
        settings.release,
        release_export.check if release_export is not None else None,
    )
    metrics_address = settings.metrics.address
    try:
        server, port = start_server(
            runtime, settings.ingest.address, settings.ingest.max_workers, release_loop.outcomes_recorded
        )
        started.callback(lambda: server.stop(grace=5).wait())
        try:
            exporter = serve_metrics(runtime.metrics, metrics_address)[0] if metrics_address else None
        except OSError as err:
            raise OSError(f"{err} (set metrics.address in the tenant config)") from None
        if exporter is not None:
            started.callback(exporter.shutdown)
        http = (
            _start_draft_endpoint(runtime, federation, release_loop, started)
            if federation is not None and settings.serve.address
            else None
        )
        if http is not None:
            started.callback(http.stop)
    except (OSError, ValueError) as err:
        started.close()
        fail(str(err))
    release_loop.start()
    started.callback(release_loop.stop)
    maintenance = MaintenanceLoop(runtime, StorageKeyWatcher(runtime, errors.print))
    maintenance.start()
    started.callback(maintenance.stop)
    host = settings.ingest.address.rsplit(":", 1)[0]
    typer.echo(
        f"fedloop FeedbackService for tenant {settings.tenant.name!r} listening on {host}:{port}"
        + (f"; metrics on http://{metrics_address}/metrics" if exporter else ""),
        err=False,
    )
    if http is not None:
        http_host = settings.serve.address.rsplit(":", 1)[0]
        scheme = "https" if settings.serve.tls_certificate else "http"
        typer.echo(
            f"draft endpoint (OpenAI-compatible) on {scheme}://{http_host}:{http.port}/v1/chat/completions "
            f"(model {settings.serve.model_alias!r} routes by the release pointer)"
        )
    else:
        typer.echo(
            "draft endpoint off: "
            + (
                "serve.address is empty"
                if federation is not None
                else "pass --settings (the federation settings: model and LoRA shape)"
            )
        )
    return started.close


@tenant_app.command("serve")
def serve(
    config: Path = CONFIG,
    settings: Path | None = typer.Option(
        None, help="The federation settings TOML HQ shared (model and LoRA shape): needed for the draft endpoint."
    ),
) -> None:
    """Serve the FeedbackService and, with --settings, the draft endpoint, until interrupted (SIGINT/SIGTERM)."""
    configure_logging()
    federation = federation_settings_or_fail(settings) if settings is not None else None
    stop_service = _start_service(open_runtime(config), federation)
    stop_on_signals().wait()
    stop_service()
    typer.echo("stopped")


@tenant_app.command("up")
def up(
    config: Path = CONFIG,
    settings: Path = FEDERATION,
    superlink: str = typer.Option("127.0.0.1:9300", help="HQ's SuperLink as host:port."),
    ca: Path = typer.Option(Path("certs/ca.crt"), help="The CA certificate HQ's SuperLink is checked against."),
    node_key: Path = typer.Option(..., help="This tenant's SuperNode private key (<tenant>.node)."),
    port: int = typer.Option(9400, help="Local port of the SuperNode's runtime API (127.0.0.1)."),
) -> None:
    """Run this tenant: FeedbackService, draft endpoint and SuperNode (TLS, node key), until SIGINT/SIGTERM."""
    from fedloop.shared.flower_processes import DeploymentError, SuperNodeSpec, start_flower, stop_flower, supervise_all

    configure_logging()
    federation = federation_settings_or_fail(settings)
    runtime = open_runtime(config)
    stop_service = _start_service(runtime, federation)
    try:
        home = Path(runtime.settings.tenant.data_dir)
        supernode = start_flower(SuperNodeSpec(config, settings, superlink, ca, node_key, port).command(home), home)
    except (DeploymentError, OSError) as err:
        stop_service()
        fail(str(err))
    ended = supervise_all({"the SuperNode": supernode})
    stop_flower(supernode)
    stop_service()
    if ended is not None:
        fail(
            f"the SuperNode exited with status {supernode.returncode}: see its log above; the FeedbackService "
            "was stopped too"
        )
    typer.echo("stopped")
