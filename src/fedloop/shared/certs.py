"""Test and first-deployment certificates: a CA and the SuperLink's TLS certificate (HQ); node keys (each tenant).

Production operators bring their own PKI; this module exists so that a fresh
checkout can start a TLS-protected, node-authenticated federation on one
machine, and so that the integration tests exercise exactly that.

- `ca.crt` / `ca.key`: a self-signed CA (EC P-384), valid for `days`.
- `superlink.crt` / `superlink.key`: the SuperLink's server certificate, signed
  by the CA, with the given host names and IP addresses as subject alternative names, and always
  127.0.0.1 and localhost (HQ's gateway reaches the SuperLink on loopback and checks the name localhost).
- `<tenant>.node` / `<tenant>.node.pub`: a SuperNode authentication key pair
  (EC P-384, OpenSSH format, as `flower-supernode --auth-supernode-private-key`
  and `flwr supernode register` expect), made by the tenant itself (`fedloop keys node`):
  only the public half ever goes to HQ.

Private key files are written with mode 0600 and never overwritten.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedloop.shared.echo import echoed
from fedloop.shared.files import write_atomic
from fedloop.shared.names import PARTY_NAME_RULE, is_party_name

CURVE = ec.SECP384R1()


class CertificateError(Exception):
    """A certificate or key file could not be created."""


@dataclass(frozen=True)
class FederationCertificates:
    """Paths of the files `make_federation_certificates` wrote."""

    ca_certificate: Path
    superlink_certificate: Path
    superlink_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedloop"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _alternative_names(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    signing_key: ec.EllipticCurvePrivateKey,
    days: int,
    is_ca: bool,
    hosts: list[str],
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(_alternative_names(hosts), critical=False).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    return builder.sign(signing_key, hashes.SHA384())


def make_federation_certificates(
    out_dir: Path, hosts: list[str], days: int = 365, force: bool = False
) -> FederationCertificates:
    """Write a CA and a SuperLink certificate for `hosts` (and 127.0.0.1, localhost) into `out_dir`; existing ones
    are replaced only with `force` (every tenant then needs the new ca.crt)."""
    if not hosts:
        raise CertificateError("no host names: pass at least one --host (the SuperLink's address, e.g. 127.0.0.1)")
    hosts = list(dict.fromkeys([*hosts, "127.0.0.1", "localhost"]))
    targets = [out_dir / name for name in ("ca.key", "ca.crt", "superlink.key", "superlink.crt")]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        raise CertificateError(
            f"refusing to overwrite {', '.join(existing)}: choose another --out directory, or pass --force to "
            "replace them (every tenant then needs the new ca.crt)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(CURVE)
    ca_cert = _certificate(
        _name("fedloop federation CA"), _name("fedloop federation CA"), ca_key.public_key(), ca_key, days, True, []
    )
    server_key = ec.generate_private_key(CURVE)
    server_cert = _certificate(_name(hosts[0]), ca_cert.subject, server_key.public_key(), ca_key, days, False, hosts)
    write_atomic(out_dir / "ca.key", _pem_key(ca_key), 0o600)
    write_atomic(out_dir / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM))
    write_atomic(out_dir / "superlink.key", _pem_key(server_key), 0o600)
    write_atomic(out_dir / "superlink.crt", server_cert.public_bytes(serialization.Encoding.PEM))
    return FederationCertificates(out_dir / "ca.crt", out_dir / "superlink.crt", out_dir / "superlink.key")


def make_node_key(out_dir: Path, tenant: str) -> Path:
    """Write `<tenant>.node` (private, 0600) and `<tenant>.node.pub` in OpenSSH format; return the private path.

    `tenant` must be a plain name (letters, digits, '-', '_'): the files land in `out_dir` and nowhere else.
    """
    if not is_party_name(tenant):
        raise CertificateError(f"tenant name {echoed(tenant)} is invalid: use {PARTY_NAME_RULE}")
    private_path = out_dir / f"{tenant}.node"
    if private_path.exists():
        raise CertificateError(f"refusing to overwrite {private_path}; remove it first if you mean to replace it")
    key = ec.generate_private_key(CURVE)
    write_atomic(
        private_path,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
        0o600,
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    write_atomic(out_dir / f"{tenant}.node.pub", public + f" fedloop-{tenant}\n".encode())
    return private_path
