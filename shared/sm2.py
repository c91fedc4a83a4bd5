"""SM2 signatures and key wrapping on top of gmssl's curve arithmetic.

gmssl draws its signing and encryption nonces from `random` and does not check
the C3 hash when decrypting; this module supplies nonces from `secrets`, checks
that ciphertext points lie on the curve and verifies C3, so a tampered or
mis-addressed wrapped key fails loudly instead of yielding garbage.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field

from gmssl import sm2 as gm_sm2
from gmssl import sm3 as gm_sm3

from fedloop.shared.crypto import CryptoError, sm3_digest

_CURVE = gm_sm2.default_ecc_table
_N = int(_CURVE["n"], 16)
_P = int(_CURVE["p"], 16)
_A = int(_CURVE["a"], 16)
_B = int(_CURVE["b"], 16)
_POINT_BYTES = 64
_C3_BYTES = 32
SIGNATURE_BYTES = 64


def _random_scalar() -> int:
    return secrets.randbelow(_N - 2) + 1


def _curve(private_hex: str = "", public_hex: str = "") -> gm_sm2.CryptSM2:
    return gm_sm2.CryptSM2(private_key=private_hex, public_key=public_hex, mode=1)


def _on_curve(point: bytes) -> bool:
    x = int.from_bytes(point[:32], "big")
    y = int.from_bytes(point[32:], "big")
    return x < _P and y < _P and (y * y - (x * x * x + _A * x + _B)) % _P == 0


@dataclass(frozen=True)
class SM2PublicKey:
    """An SM2 public key: the 64-byte uncompressed point x || y."""

    point: bytes

    def __post_init__(self) -> None:
        if len(self.point) != _POINT_BYTES or not _on_curve(self.point):
            raise CryptoError("not a valid SM2 public key (64-byte point on the SM2 curve expected)")

    @property
    def key_id(self) -> str:
        """A short, stable identifier: the first 16 hex digits of SM3(point)."""
        return sm3_digest(self.point).hex()[:16]

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Return True when `signature` is this key's SM2-with-SM3 signature of `message`."""
        if len(signature) != SIGNATURE_BYTES:
            return False
        return bool(_curve(public_hex=self.point.hex()).verify_with_sm3(signature.hex(), message))

    def wrap(self, secret: bytes) -> bytes:
        """Encrypt a short secret (a data key) to this key: C1 || C3 || C2 per GB/T 32918.4."""
        k = _random_scalar()
        curve = _curve(public_hex=self.point.hex())
        c1 = curve._kg(k, _CURVE["g"])
        shared_point = curve._kg(k, self.point.hex())
        mask = bytes.fromhex(gm_sm3.sm3_kdf(shared_point.encode(), len(secret)))
        c2 = bytes(a ^ b for a, b in zip(secret, mask))
        shared = bytes.fromhex(shared_point)
        c3 = sm3_digest(shared[:32] + secret + shared[32:])
        return bytes.fromhex(c1) + c3 + c2


@dataclass(frozen=True)
class SM2PrivateKey:
    """An SM2 private key (a 32-byte scalar); its repr never shows the scalar."""

    scalar: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> SM2PrivateKey:
        """Create a new random key pair."""
        return cls(_random_scalar().to_bytes(32, "big"))

    @property
    def public_key(self) -> SM2PublicKey:
        """The matching public key."""
        point = _curve()._kg(int.from_bytes(self.scalar, "big"), _CURVE["g"])
        return SM2PublicKey(bytes.fromhex(point))

    def sign(self, message: bytes) -> bytes:
        """Sign `message` with SM2-with-SM3 (default user id); returns r || s, 64 bytes."""
        curve = _curve(self.scalar.hex(), self.public_key.point.hex())
        nonce = format(_random_scalar(), "064x")
        return bytes.fromhex(curve.sign_with_sm3(message, nonce))

    def unwrap(self, wrapped: bytes) -> bytes:
        """Recover a secret wrapped to this key; raises CryptoError if it was not, or was altered."""
        if len(wrapped) <= _POINT_BYTES + _C3_BYTES:
            raise CryptoError("SM2-wrapped key is truncated")
        c1 = wrapped[:_POINT_BYTES]
        c3 = wrapped[_POINT_BYTES : _POINT_BYTES + _C3_BYTES]
        c2 = wrapped[_POINT_BYTES + _C3_BYTES :]
        if not _on_curve(c1):
            raise CryptoError("SM2-wrapped key is corrupt (C1 is not a curve point)")
        shared_point = _curve()._kg(int.from_bytes(self.scalar, "big"), c1.hex())
        mask = bytes.fromhex(gm_sm3.sm3_kdf(shared_point.encode(), len(c2)))
        secret = bytes(a ^ b for a, b in zip(c2, mask))
        shared = bytes.fromhex(shared_point)
        if not hmac.compare_digest(sm3_digest(shared[:32] + secret + shared[32:]), c3):
            raise CryptoError(
                "SM2 key unwrap failed: the data key was wrapped for another key or was altered"
            )
        return secret
