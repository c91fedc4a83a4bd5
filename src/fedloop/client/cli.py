"""Tenant commands: `fedloop tenant`, `fedloop vault`, `fedloop samples`."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from fedloop.client.store.api import Pool, SampleQuery, SampleStatus
from fedloop.client.tenant_settings import TenantSettings, load_tenant_settings
from fedloop.shared.command_line import FEDERATION_SETTINGS, TENANT_CONFIG
from fedloop.shared.console import audited, command_group, errors, fail, output_console
from fedloop.shared.flower_processes import stop_on_signals
from fedloop.shared.keys import KeyFileError, load_identity
from fedloop.shared.logs import configure_logging
from fedloop.shared.metrics import serve_metrics
from fedloop.shared.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from fedloop.client.ingest.runtime import TenantRuntime
    from fedloop.client.release.loop import ReleaseLoop
    from fedloop.client.serve.server import HttpServer
    from fedloop.client.store import FeedbackStore

tenant_app = command_group("Run a tenant's services.")
vault_app = command_group("Reverse placeholders (authorised operators only; every reveal is audited).")
samples_app = command_group("Curated samples: review, pools, sweeps, the moderation breaker.")
review_app = command_group("Human review of samples and pool promotions.")
samples_app.add_typer(review_app, name="review")
CONFIG = typer.Option(TENANT_CONFIG, "--config", help="The tenant's TOML settings.")
FEDERATION = typer.Option(FEDERATION_SETTINGS, "--settings", help="The federation settings TOML HQ shared.")
OPERATOR = typer.Option(..., "--operator", help="Who decides (recorded in the audit log).")


def _settings(config: Path) -> TenantSettings:
    try:
        return load_tenant_settings(config)
    except ConfigError as err:
        fail(str(err))


def open_runtime(config: Path) -> TenantRuntime:
    """The tenant's store and pipeline from its TOML; exits with a clear error if the config or keys are bad."""
    from fedloop.client.ingest.runtime import open_tenant

    settings = _settings(config)
    try:
        identity = load_identity(Path(settings.tenant.keys_dir), settings.tenant.name)
    except KeyFileError as err:
        fail(str(err))
    return open_tenant(settings, identity)


def open_store(config: Path) -> tuple[TenantSettings, FeedbackStore]:
    """The tenant's settings and store only, without the privacy pipeline (whose PII models take seconds to load):
    what an operator's release command needs, so it takes effect within a second or two."""
    from fedloop.client.store import FeedbackStore

    settings = _settings(config)
    try:
        identity = load_identity(Path(settings.tenant.keys_dir), settings.tenant.name)
    except KeyFileError as err:
        fail(str(err))
    store = FeedbackStore(
        settings.store_path, identity.storage, identity.pseudonym_key, settings.tenant.store_busy_timeout_s
    )
    return settings, store


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


def _federation_settings(path: Path) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as err:
        fail(str(err))


@tenant_app.command("serve")
def serve(
    config: Path = CONFIG,
    settings: Path | None = typer.Option(
        None, help="The federation settings TOML HQ shared (model and LoRA shape): needed for the draft endpoint."
    ),
) -> None:
    """Serve the FeedbackService and, with --settings, the draft endpoint, until interrupted (SIGINT/SIGTERM)."""
    configure_logging()
    federation = _federation_settings(settings) if settings is not None else None
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
    federation = _federation_settings(settings)
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


@vault_app.command("reveal")
def reveal(
    record: str = typer.Option(..., help="Record id (the draft id, or signal-<event id>)."),
    placeholder: str = typer.Option(..., help="Placeholder as it appears, e.g. '<CN_MOBILE_1>'."),
    reason: str = typer.Option(..., help="Why the original is needed (audited)."),
    operator: str = OPERATOR,
    config: Path = CONFIG,
) -> None:
    """Print the original behind a placeholder; the reveal (not the value) is audited."""
    operator = audited(operator, reason)
    _, store = open_store(config)
    try:
        with store.transaction():
            original = store.drafts.vault_lookup(record, placeholder)
            outcome = "revealed" if original is not None else "not found"
            store.audit(operator, "vault.reveal", f"{record} {placeholder} ({outcome}); reason: {reason}")
    finally:
        store.close()
    if original is None:
        fail(f"no placeholder {placeholder!r} in record {record!r}")
    typer.echo(original)


def _print_samples(samples: list) -> None:
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
    pool: str = typer.Option("", help="Only this pool."),
    status: str = typer.Option("", help="Only this status."),
    limit: int = typer.Option(50, help="At most this many."),
    config: Path = CONFIG,
) -> None:
    """List samples (redacted)."""
    _, store = open_store(config)
    query = SampleQuery(status=SampleStatus(status) if status else None, pools=(Pool(pool),) if pool else None)
    samples = store.samples.find(query)[-limit:]
    store.close()
    _print_samples(samples)


@review_app.command("show")
def review_show(sample_id: str, config: Path = CONFIG) -> None:
    """Show one sample in full (redacted texts only)."""
    _, store = open_store(config)
    found = store.samples.find(SampleQuery(sample_id=sample_id))
    store.close()
    if not found:
        fail(f"unknown sample {sample_id!r}")
    for name, value in vars(found[0]).items():
        if name != "user_pseudonym":
            typer.echo(f"{name:19} {value}")


def _review_action(action: str, sample_id: str, value: str, operator: str, config: Path) -> None:
    from fedloop.client.samples import pools

    _, store = open_store(config)
    try:
        sample = getattr(pools, action)(store, sample_id, value, operator)
    except pools.ReviewError as err:
        fail(str(err))
    finally:
        store.close()
    typer.echo(f"{sample.id}: pool {sample.pool}, status {sample.status}, label {sample.label!r}")


@review_app.command("promote")
def review_promote(
    sample_id: str,
    to: str = typer.Option(..., help="secondary_baseline or core_baseline, ..."),
    operator: str = OPERATOR,
    config: Path = CONFIG,
) -> None:
    """Move a sample up the pool lifecycle (a human decision, audited)."""
    _review_action("promote", sample_id, to, operator, config)


@review_app.command("demote")
def review_demote(
    sample_id: str, to: str = typer.Option(..., help="A lower pool."), operator: str = OPERATOR, config: Path = CONFIG
) -> None:
    """Move a sample down the pool lifecycle (audited)."""
    _review_action("demote", sample_id, to, operator, config)


@review_app.command("decide")
def review_decide(
    sample_id: str,
    decision: str = typer.Option(..., help="admit (it may train) or reject."),
    operator: str = OPERATOR,
    config: Path = CONFIG,
) -> None:
    """Decide on a sample that waits for review (high-risk PII, curation.review_risk); audited."""
    _review_action("decide", sample_id, decision, operator, config)


@review_app.command("label")
def review_label(
    sample_id: str,
    text: str = typer.Option(..., "--text", help="The label."),
    operator: str = OPERATOR,
    config: Path = CONFIG,
) -> None:
    """Attach a label to a sample (audited)."""
    _review_action("label", sample_id, text, operator, config)


@review_app.command("export")
def review_export(
    out: Path = typer.Option(..., help="Label Studio tasks JSON to write."), config: Path = CONFIG
) -> None:
    """Export admitted samples as Label Studio tasks (config: configs/label_studio.xml)."""
    from fedloop.client.samples.pools import export_label_studio

    _, store = open_store(config)
    count = export_label_studio(store, out)
    store.close()
    typer.echo(f"{count} tasks written to {out}")


@review_app.command("import")
def review_import(path: Path, operator: str = OPERATOR, config: Path = CONFIG) -> None:
    """Apply a Label Studio JSON export: pool choices and labels (all checked before any change)."""
    from fedloop.client.samples.pools import ReviewError, import_label_studio

    _, store = open_store(config)
    try:
        counts = import_label_studio(store, path, operator)
    except ReviewError as err:
        fail(str(err))
    finally:
        store.close()
    typer.echo(f"{counts['moved']} samples moved, {counts['labelled']} labelled")


@samples_app.command("sweep")
def samples_sweep(config: Path = CONFIG) -> None:
    """Apply the absence rules (no click, no order, no response, no conversion) now."""
    runtime = open_runtime(config)
    raised = runtime.pipeline.sweep()
    runtime.close()
    typer.echo(f"{raised} drafts flagged")


@samples_app.command("breaker-reset")
def breaker_reset(operator: str = OPERATOR, config: Path = CONFIG) -> None:
    """Reset the moderation breaker; held samples are moderated again."""
    runtime = open_runtime(config)
    admitted, quarantined = runtime.curator.reset_breaker(operator)
    runtime.close()
    typer.echo(f"breaker reset: {admitted} held samples admitted, {quarantined} quarantined")


@samples_app.command("problem-rate")
def problem_rate(
    problem_type: str = typer.Option(..., "--type", help="e.g. repeated_question"),
    versions: list[str] = typer.Option(..., "--version", help="Model version (repeatable)."),
    config: Path = CONFIG,
) -> None:
    """Share of each version's drafts flagged with a problem type."""
    _, store = open_store(config)
    for version in versions:
        flagged, total = store.drafts.problem_rate(problem_type, version)
        rate = f"{flagged / total:.1%}" if total else "n/a"
        typer.echo(f"{version}\t{problem_type}\t{flagged}/{total}\t{rate}")
    store.close()


def rotate_keys(config: Path, operator: str) -> None:
    """`fedloop keys rotate`: new active storage key, store re-encrypted while services run."""
    from fedloop.client.key_rotation import rotate_tenant_storage_key

    settings = _settings(config)
    try:
        total = rotate_tenant_storage_key(settings, operator, lambda n: errors.print(f"re-encrypted {n} values"))
    except KeyFileError as err:
        fail(str(err))
    typer.echo(f"storage key rotated for {settings.tenant.name!r}; {total} values re-encrypted")
