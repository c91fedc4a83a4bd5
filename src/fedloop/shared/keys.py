"""Key files for HQ and tenants: an SM2 identity key pair and an SM4 storage key.

`fedloop keys init --role hq|tenant --name NAME --out DIR` writes three files:

- `NAME.sm2.pub.json`   the public key, to hand to the other side (mode 0644)
- `NAME.sm2.key.json`   the SM2 private key (mode 0600)
- `NAME.sm4.key.json`   the numbered SM4 keys that encrypt this party's data at rest, and
                        the HMAC key for user pseudonyms (mode 0600)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from fedloop.shared.crypto import new_sm4_key
from fedloop.shared.echo import echoed
from fedloop.shared.files import FilePermissionError, require_private, write_atomic
from fedloop.shared.names import PARTY_NAME_RULE, is_party_name
from fedloop.shared.sm2 import SM2PrivateKey, SM2PublicKey
from fedloop.shared.storage_keys import StorageKeyring

Role = Literal["hq", "tenant"]
ROLES: tuple[Role, ...] = ("hq", "tenant")
KEY_FORMAT = "fedloop-key/1"


class KeyFileError(Exception):
    """A key file is missing, unreadable or of the wrong kind; the message names the file."""


@dataclass(frozen=True)
class PartyPublicKey:
    """The public half of a party's identity, as shared with the other side."""

    role: Role
    name: str
    key: SM2PublicKey

    @property
    def key_id(self) -> str:
        """Identifier carried in envelope headers."""
        return self.key.key_id


@dataclass(frozen=True)
class Identity:
    """A party's own secrets: SM2 signing/unwrapping key, SM4 storage keys, pseudonym HMAC key."""

    role: Role
    name: str
    signing_key: SM2PrivateKey = field(repr=False)
    storage: StorageKeyring = field(repr=False)
    pseudonym_key: bytes = field(repr=False)

    @property
    def public(self) -> PartyPublicKey:
        """This party's public key."""
        return PartyPublicKey(self.role, self.name, self.signing_key.public_key)


def key_paths(directory: Path, name: str) -> dict[str, Path]:
    """The three key file paths for party `name` in `directory`."""
    return {
        "public": directory / f"{name}.sm2.pub.json",
        "private": directory / f"{name}.sm2.key.json",
        "storage": directory / f"{name}.sm4.key.json",
    }


def _check_name(name: str) -> None:
    if not is_party_name(name):
        raise KeyFileError(f"party name {echoed(name)} is invalid: use {PARTY_NAME_RULE}")


def init_keys(role: Role, name: str, directory: Path, signing_key: SM2PrivateKey | None = None) -> Identity:
    """Create and write a new identity for `name` (with `signing_key` if given, e.g. from an HSM's PEM export);
    refuses to overwrite existing key files."""
    if role not in ROLES:
        raise KeyFileError(f"role {role!r} is invalid: use one of {', '.join(ROLES)}")
    _check_name(name)
    paths = key_paths(directory, name)
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing:
        raise KeyFileError(
            f"key files already exist: {', '.join(existing)}; "
            "choose another --name or --out, or move the old files away first"
        )
    identity = Identity(
        role, name, signing_key or SM2PrivateKey.generate(), StorageKeyring({1: new_sm4_key()}, 1), os.urandom(32)
    )
    common = _common(role, name)
    key_id = identity.public.key_id
    write_atomic(
        paths["private"],
        _dump({**common, "key_id": key_id, "sm2_private_key": identity.signing_key.scalar.hex()}),
        0o600,
    )
    write_storage_keys(directory, identity)
    write_atomic(
        paths["public"], _dump({**common, "key_id": key_id, "sm2_public_key": identity.public.key.point.hex()})
    )
    return identity


def _common(role: str, name: str) -> dict[str, str]:
    created = datetime.now(UTC).isoformat(timespec="seconds")
    return {"format": KEY_FORMAT, "role": role, "name": name, "created_at": created}


def write_storage_keys(directory: Path, identity: Identity) -> None:
    """(Re)write `identity`'s storage key file atomically, mode 0600."""
    document = {
        **_common(identity.role, identity.name),
        "sm4_keys": {str(n): k.hex() for n, k in sorted(identity.storage.keys.items())},
        "active_sm4_key": str(identity.storage.active),
        "pseudonym_key": identity.pseudonym_key.hex(),
    }
    write_atomic(key_paths(directory, identity.name)["storage"], _dump(document), 0o600)


def rotate_storage_key(directory: Path, name: str) -> Identity:
    """Add a new active SM4 storage key for `name`, keeping the old ones for reading."""
    identity = load_identity(directory, name)
    rotated = Identity(
        identity.role, name, identity.signing_key, identity.storage.with_new_key(new_sm4_key()), identity.pseudonym_key
    )
    write_storage_keys(directory, rotated)
    return rotated


def _dump(document: Mapping[str, object]) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode()


def _read(path: Path, field_name: str, private: bool = False) -> dict[str, Any]:
    try:
        if private:
            require_private(path)
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} not found: create it with `fedloop keys init`") from None
    except FilePermissionError as err:
        raise KeyFileError(str(err)) from None
    except (OSError, ValueError) as err:
        raise KeyFileError(f"key file {path} is unreadable ({type(err).__name__})") from None
    if not isinstance(document, dict) or document.get("format") != KEY_FORMAT or field_name not in document:
        raise KeyFileError(f"{path} is not a {KEY_FORMAT} file holding {field_name!r}")
    if document.get("role") not in ROLES:
        raise KeyFileError(f"{path} names an unknown role; expected one of {', '.join(ROLES)}")
    return document


def _hex(path: Path, value: Any, field_name: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except (TypeError, ValueError):
        raise KeyFileError(f"{path}: field {field_name!r} is not hex") from None


def _hex_field(path: Path, document: dict[str, Any], field_name: str) -> bytes:
    return _hex(path, document[field_name], field_name)


def load_public_key(path: Path) -> PartyPublicKey:
    """Read a `*.sm2.pub.json` file."""
    document = _read(path, "sm2_public_key")
    return PartyPublicKey(
        document["role"],
        document["name"],
        SM2PublicKey(_hex_field(path, document, "sm2_public_key")),
    )


def load_identity(directory: Path, name: str) -> Identity:
    """Read party `name`'s private and storage keys from `directory`."""
    _check_name(name)
    paths = key_paths(directory, name)
    private = _read(paths["private"], "sm2_private_key", private=True)
    storage = _read(paths["storage"], "sm4_keys", private=True)
    try:
        keys = {int(n): _hex(paths["storage"], k, "sm4_keys") for n, k in storage["sm4_keys"].items()}
        keyring = StorageKeyring(keys, int(storage["active_sm4_key"]))
    except (AttributeError, KeyError, ValueError) as err:
        raise KeyFileError(f"{paths['storage']}: invalid sm4_keys / active_sm4_key ({err})") from None
    return Identity(
        private["role"],
        name,
        SM2PrivateKey(_hex_field(paths["private"], private, "sm2_private_key")),
        keyring,
        _hex_field(paths["storage"], storage, "pseudonym_key"),
    )


def key_ages(directory: Path, name: str) -> dict[str, dict[str, Any]]:
    """When party `name`'s SM2 key was created and its storage key file last written (a rotation), with ages."""
    paths = key_paths(directory, name)
    private, storage = _read(paths["private"], "sm2_private_key"), _read(paths["storage"], "sm4_keys")
    now = datetime.now(UTC)

    def age(document: dict[str, Any]) -> dict[str, Any]:
        days = (now - datetime.fromisoformat(document["created_at"])).total_seconds() / 86400
        return {"created_at": document["created_at"], "age_days": round(days, 2)}

    return {"sm2": age(private), "storage": {**age(storage), "active_key": int(storage["active_sm4_key"])}}


class Keyring:
    """The public keys a party trusts, looked up by key id."""

    def __init__(self, keys: list[PartyPublicKey]) -> None:
        self._by_id = {key.key_id: key for key in keys}

    @classmethod
    def from_directory(cls, directory: Path) -> Keyring:
        """Trust every `*.sm2.pub.json` file in `directory`."""
        return cls([load_public_key(path) for path in sorted(directory.glob("*.sm2.pub.json"))])

    def parties(self) -> list[PartyPublicKey]:
        """Every trusted public key."""
        return list(self._by_id.values())

    def get(self, key_id: str) -> PartyPublicKey | None:
        """The trusted key with this id, or None."""
        return self._by_id.get(key_id)

    def by_name(self, role: Role, name: str) -> PartyPublicKey:
        """The trusted key of party `name` in `role`; raises KeyFileError if none is trusted."""
        for key in self._by_id.values():
            if key.role == role and key.name == name:
                return key
        raise KeyFileError(f"no trusted {role} public key named {name!r}; add its .sm2.pub.json")
