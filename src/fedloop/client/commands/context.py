"""What a tenant command opens, as context managers: its settings, its store only, or the whole runtime.

Read and release commands open only the settings, keys and store (`tenant_store`): no
Presidio, no model, no MinHash index, so they answer in well under a second. Every
resource is closed when the `with` block ends, whatever happens in it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from fedloop.client.tenant_settings import TenantSettings, load_tenant_settings
from fedloop.shared.config_files import FEDERATION_SETTINGS, TENANT_CONFIG
from fedloop.shared.console import fail
from fedloop.shared.keys import Identity, KeyFileError, load_identity
from fedloop.shared.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from fedloop.client.ingest.runtime import TenantRuntime
    from fedloop.client.store import FeedbackStore

CONFIG = typer.Option(TENANT_CONFIG, "--config", help="The tenant's TOML settings.")
FEDERATION = typer.Option(FEDERATION_SETTINGS, "--settings", help="The federation settings TOML HQ shared.")
OPERATOR = typer.Option(..., "--operator", help="Who decides (recorded in the audit log).")


def tenant_settings_or_fail(config: Path) -> TenantSettings:
    """The tenant's settings from `config`; exits naming the file, key and fix if they are invalid."""
    try:
        return load_tenant_settings(config)
    except ConfigError as err:
        fail(str(err))


def federation_settings_or_fail(path: Path) -> Settings:
    """The federation settings HQ shared; exits naming the file, key and fix if they are invalid."""
    try:
        return load_settings(path)
    except ConfigError as err:
        fail(str(err))


def _identity(settings: TenantSettings) -> Identity:
    try:
        return load_identity(Path(settings.tenant.keys_dir), settings.tenant.name)
    except KeyFileError as err:
        fail(str(err))


@contextmanager
def tenant_store(config: Path) -> Iterator[tuple[TenantSettings, FeedbackStore]]:
    """The tenant's settings and its open store, without the privacy pipeline (whose PII models take seconds)."""
    from fedloop.client.store import FeedbackStore

    settings = tenant_settings_or_fail(config)
    identity = _identity(settings)
    store = FeedbackStore(
        settings.store_path, identity.storage, identity.pseudonym_key, settings.tenant.store_busy_timeout_s
    )
    try:
        yield settings, store
    finally:
        store.close()


def open_runtime(config: Path) -> TenantRuntime:
    """The tenant's store and pipeline from its TOML (the caller closes it); exits if the config or keys are bad."""
    from fedloop.client.ingest.runtime import open_tenant

    settings = tenant_settings_or_fail(config)
    return open_tenant(settings, _identity(settings))


@contextmanager
def tenant_runtime(config: Path) -> Iterator[TenantRuntime]:
    """The tenant's store and pipeline, closed when the block ends."""
    runtime = open_runtime(config)
    try:
        yield runtime
    finally:
        runtime.close()
