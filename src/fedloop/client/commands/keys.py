"""`fedloop keys rotate` at a tenant: a new active storage key, the store re-encrypted while services run."""

from __future__ import annotations

from pathlib import Path

import typer

from fedloop.client.commands.context import CONFIG, tenant_settings_or_fail
from fedloop.shared.console import errors, fail
from fedloop.shared.keys import KeyFileError


def keys_rotate(
    config: Path = CONFIG,
    operator: str = typer.Option(..., help="Who rotates (audited)."),
) -> None:
    """Add a new active SM4 storage key and re-encrypt the tenant's store while it keeps serving."""
    from fedloop.client.key_rotation import rotate_tenant_storage_key

    settings = tenant_settings_or_fail(config)
    try:
        total = rotate_tenant_storage_key(settings, operator, lambda n: errors.print(f"re-encrypted {n} values"))
    except KeyFileError as err:
        fail(str(err))
    typer.echo(f"storage key rotated for {settings.tenant.name!r}; {total} values re-encrypted")
