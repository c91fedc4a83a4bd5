"""`fedloop keys init|export|node` and `fedloop certs`: the key files and certificates of either side."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from fedloop.shared.certs import CertificateError, make_federation_certificates, make_node_key
from fedloop.shared.console import command_group, fail
from fedloop.shared.crypto import CryptoError
from fedloop.shared.files import write_atomic
from fedloop.shared.keys import KeyFileError, init_keys, key_paths, load_identity
from fedloop.shared.sm2 import SM2PrivateKey

keys_app = command_group("Create and manage key files.")


class Side(StrEnum):
    """Which side a party's keys are for."""

    HQ = "hq"
    TENANT = "tenant"


@keys_app.command("init")
def keys_init(
    role: Side = typer.Option(..., help="Which side the keys are for."),
    name: str = typer.Option(..., help="Party name, e.g. 'hq' or the tenant's name."),
    out: Path = typer.Option(..., help="Directory for the key files (created if missing)."),
    sm2_pem: Path | None = typer.Option(
        None,
        help="Use this SM2 private key (unencrypted PKCS#8 PEM, e.g. "
        "`openssl genpkey -algorithm SM2`) instead of a new one.",
    ),
) -> None:
    """Write an SM2 key pair and an SM4 storage key (private files mode 0600)."""
    try:
        signing_key = SM2PrivateKey.from_pem(sm2_pem.read_bytes()) if sm2_pem else None
        identity = init_keys(role.value, name, out, signing_key)
    except (KeyFileError, CryptoError, OSError) as err:
        fail(f"{sm2_pem}: {err}" if sm2_pem and not isinstance(err, KeyFileError) else str(err))
    for kind, path in key_paths(out, name).items():
        typer.echo(f"{kind:8} {path}")
    typer.echo(f"key id   {identity.public.key_id}")


@keys_app.command("export")
def keys_export(
    keys: Path = typer.Option(..., help="The key directory (as given to `keys init --out`)."),
    name: str = typer.Option(..., help="The party's name."),
    out: Path = typer.Option(..., help="Directory for <name>.sm2.pem (0600) and <name>.sm2.pub.pem."),
) -> None:
    """Export the SM2 key pair as standard PEM (PKCS#8 / SubjectPublicKeyInfo, SM2 curve OID) for OpenSSL, an HSM
    or a KMS."""
    try:
        identity = load_identity(keys, name)
    except KeyFileError as err:
        fail(str(err))
    private, public = out / f"{name}.sm2.pem", out / f"{name}.sm2.pub.pem"
    if private.exists():
        fail(f"refusing to overwrite {private}; choose another --out")
    write_atomic(private, identity.signing_key.to_pem(), 0o600)
    write_atomic(public, identity.public.key.to_pem())
    typer.echo(f"private  {private} (mode 0600)\npublic   {public}")


def certs(
    out: Path = typer.Option(Path("certs"), help="Directory for the CA and SuperLink files."),
    host: list[str] = typer.Option(
        ["127.0.0.1", "localhost"], help="Name or IP the SuperLink is reached at (repeat the option)."
    ),
    force: bool = typer.Option(False, help="Replace an existing CA and SuperLink certificate in --out."),
) -> None:
    """Make a CA and the SuperLink's TLS certificate at HQ (tests, first deployments). Tenants make their own node
    keys with `fedloop keys node`."""
    try:
        made = make_federation_certificates(out, host, force=force)
    except CertificateError as err:
        fail(str(err))
    typer.echo(f"CA certificate       {made.ca_certificate} (give it to every tenant)")
    typer.echo(f"SuperLink TLS        {made.superlink_certificate}, {made.superlink_key} (HQ only)")


@keys_app.command("node")
def keys_node(
    name: str = typer.Option(..., help="The tenant's name."),
    out: Path = typer.Option(Path("certs"), help="Directory for <name>.node and <name>.node.pub."),
) -> None:
    """Make this tenant's SuperNode key pair (at the tenant): keep <name>.node, send only <name>.node.pub to HQ."""
    try:
        private = make_node_key(out, name)
    except CertificateError as err:
        fail(str(err))
    typer.echo(f"private  {private} (stays with this tenant, mode 0600)")
    typer.echo(f"public   {private.with_suffix('.node.pub')} (send it to HQ: `fedloop hq register-node`)")
