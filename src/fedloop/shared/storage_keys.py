"""SM4 keys for data at rest, numbered so that they can be rotated while services run.

A encrypted value starts with a format byte and the number of the key that encrypted
it, so readers pick the right key and a rotation can re-encrypt old values row
by row while new writes already use the new key.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from fedloop.shared.crypto import CryptoError, decrypt_field, encrypt_field

_PREFIX = struct.Struct(">BH")
_FORMAT = 1
KEY_TAG_POSITION = 2  # 1-based byte position of the 2-byte key number in a encrypted value (for SQL substr)


@dataclass(frozen=True)
class StorageKeyring:
    """Numbered SM4 storage keys, one of them active for new writes; never shows key bytes."""

    keys: dict[int, bytes] = field(repr=False)
    active: int

    def __post_init__(self) -> None:
        if self.active not in self.keys:
            raise CryptoError(f"active storage key {self.active} is not in the keyring")

    def encrypt(self, data: bytes, aad: bytes) -> bytes:
        """Encrypt `data` under the active key, bound to `aad`."""
        return _PREFIX.pack(_FORMAT, self.active) + encrypt_field(self.keys[self.active], data, aad)

    def decrypt(self, encrypted: bytes, aad: bytes) -> bytes:
        """Decrypt a value encrypted by any key of this keyring."""
        key_no = self.key_number(encrypted)
        if key_no not in self.keys:
            raise CryptoError(f"value was encrypted with storage key {key_no}, which this keyring does not hold")
        try:
            return decrypt_field(self.keys[key_no], encrypted[_PREFIX.size :], aad)
        except CryptoError as err:
            raise CryptoError(
                f"stored value {aad.decode(errors='replace')!r} failed its integrity check "
                f"({err}): the row was edited outside fedloop, or the key file belongs to "
                "another store"
            ) from None

    def active_tag(self) -> bytes:
        """The 2 bytes at KEY_TAG_POSITION of every value encrypted by the active key."""
        return self.active.to_bytes(2, "big")

    @staticmethod
    def key_number(encrypted: bytes) -> int:
        """The number of the key that encrypted `encrypted`."""
        if len(encrypted) < _PREFIX.size:
            raise CryptoError("encrypted value is truncated")
        fmt, key_no = _PREFIX.unpack_from(encrypted)
        if fmt != _FORMAT:
            raise CryptoError(f"encrypted value has unknown format {fmt}")
        return int(key_no)

    def with_new_key(self, key: bytes) -> StorageKeyring:
        """A keyring that keeps the old keys for reading and makes `key` active."""
        number = max(self.keys) + 1
        return StorageKeyring({**self.keys, number: key}, number)
