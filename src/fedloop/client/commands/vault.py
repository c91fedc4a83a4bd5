"""`fedloop vault reveal`: the original behind a placeholder, for authorised operators (every reveal audited)."""

from __future__ import annotations

from pathlib import Path

import typer

from fedloop.client.commands.context import CONFIG, OPERATOR, tenant_store
from fedloop.shared.console import audited, command_group, fail

vault_app = command_group("Reverse placeholders (authorised operators only; every reveal is audited).")


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
    with tenant_store(config) as (_, store), store.transaction():
        original = store.drafts.vault_lookup(record, placeholder)
        outcome = "revealed" if original is not None else "not found"
        store.audit(operator, "vault.reveal", f"{record} {placeholder} ({outcome}); reason: {reason}")
    if original is None:
        fail(f"no placeholder {placeholder!r} in record {record!r}")
    typer.echo(original)
