"""SM2 keys, signatures and key wrapping (GB/T 32918), computed by OpenSSL (see `openssl_sm2.py`).

- Signatures are SM2-with-SM3 with the default user id 1234567812345678, carried
  as 64 bytes r || s; r and s outside [1, n−1] are refused before any curve math.
- Key wrapping is SM2 public-key encryption; the wrapped key is GM/T 0009 DER
  (SEQUENCE {x, y, C3, C2}), which OpenSSL, GmSSL and other GM libraries decrypt.
- Keys export and import as standard PEM: PKCS#8 and SubjectPublicKeyInfo with
  the SM2 curve OID, so OpenSSL, an HSM or a KMS can use them.
- A private scalar must lie in [1, n−2]; a public key must be a point on the curve.
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass, field

from fedloop.shared import openssl_sm2 as native
from fedloop.shared.crypto import CryptoError, sm3_digest

N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123  # the order of the SM2 base point
_POINT_BYTES = 64
SIGNATURE_BYTES = 64
_ALGORITHM = bytes.fromhex("301306072a8648ce3d020106082a811ccf5501822d")  # id-ecPublicKey, SM2 curve


def _der_length(length: int) -> bytes:
    return (
        bytes([length])
        if length < 0x80
        else bytes([0x81, length])
        if length < 0x100
        else bytes([0x82]) + length.to_bytes(2, "big")
    )


def _der_sequence_length(der: bytes) -> int | None:
    """The bytes one DER SEQUENCE at the start of `der` spans (header and content), or None if it starts none."""
    if len(der) < 2 or der[0] != 0x30:
        return None
    if der[1] < 0x80:
        return 2 + der[1]
    count = der[1] & 0x7F
    if not 1 <= count <= 4 or len(der) < 2 + count:
        return None
    return 2 + count + int.from_bytes(der[2 : 2 + count], "big")


def _der(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(content)) + content


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return _der(0x02, body)


def signature_to_der(raw: bytes) -> bytes:
    """r || s as the DER SEQUENCE {r, s} that OpenSSL and other GM libraries read."""
    return _der(0x30, _der_integer(int.from_bytes(raw[:32], "big")) + _der_integer(int.from_bytes(raw[32:], "big")))


def signature_from_der(der: bytes) -> bytes:
    """r || s from a DER SM2 signature (SEQUENCE of two INTEGERs below 2^256), as OpenSSL writes it."""
    values, offset = [], 2
    for _ in range(2):
        length = der[offset + 1]
        values.append(int.from_bytes(der[offset + 2 : offset + 2 + length], "big"))
        offset += 2 + length
    return b"".join(value.to_bytes(32, "big") for value in values)


def _pem(label: str, der: bytes) -> bytes:
    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----\n".encode()


def _unpem(label: str, pem: bytes) -> bytes:
    match = re.search(rf"-----BEGIN {label}-----(.*?)-----END {label}-----", pem.decode(errors="replace"), re.S)
    if match is None:
        raise CryptoError(f"no '-----BEGIN {label}-----' block found: expected a PEM {label.lower()}")
    try:
        return base64.b64decode("".join(match.group(1).split()), validate=True)
    except ValueError:
        raise CryptoError(f"the PEM {label.lower()} is not valid base64") from None


@dataclass(frozen=True)
class SM2PublicKey:
    """An SM2 public key: the 64-byte uncompressed point x || y."""

    point: bytes
    _native: native.NativeKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.point) != _POINT_BYTES:
            raise CryptoError("not a valid SM2 public key (64-byte point on the SM2 curve expected)")
        try:
            key = native.public_key_from_spki(self.spki())
        except CryptoError:
            raise CryptoError("not a valid SM2 public key (64-byte point on the SM2 curve expected)") from None
        object.__setattr__(self, "_native", key)

    def __reduce__(self) -> tuple[type, tuple[bytes]]:
        return SM2PublicKey, (self.point,)  # the OpenSSL handle is rebuilt, never pickled

    def spki(self) -> bytes:
        """SubjectPublicKeyInfo DER (id-ecPublicKey with the SM2 curve OID)."""
        return _der(0x30, _ALGORITHM + _der(0x03, b"\x00\x04" + self.point))

    def to_pem(self) -> bytes:
        """`-----BEGIN PUBLIC KEY-----` PEM, as `openssl pkey -pubout` writes it."""
        return _pem("PUBLIC KEY", self.spki())

    @classmethod
    def from_pem(cls, pem: bytes) -> SM2PublicKey:
        """Read a PEM SubjectPublicKeyInfo on the SM2 curve."""
        return cls(native.encoded_public_point(native.public_key_from_spki(_unpem("PUBLIC KEY", pem)))[1:])

    @property
    def key_id(self) -> str:
        """A short, stable identifier: the first 16 hex digits of SM3(point)."""
        return sm3_digest(self.point).hex()[:16]

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True when `signature` (r || s) is this key's SM2-with-SM3 signature of `message`."""
        if len(signature) != SIGNATURE_BYTES:
            return False
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        if not (1 <= r < N and 1 <= s < N):
            return False
        return native.verify_der(self._native, message, signature_to_der(signature))

    def wrap(self, secret: bytes) -> bytes:
        """Encrypt a short secret (a data key) to this key: SM2 encryption, GM/T 0009 DER."""
        return native.encrypt(self._native, secret)


@dataclass(frozen=True)
class SM2PrivateKey:
    """An SM2 private key (a 32-byte scalar d, 1 ≤ d ≤ n−2) and its public key; its repr never shows the scalar."""

    scalar: bytes = field(repr=False)
    _native: native.NativeKey = field(init=False, repr=False, compare=False)
    public_key: SM2PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        d = int.from_bytes(self.scalar, "big") if len(self.scalar) == 32 else 0
        if not 1 <= d <= N - 2:
            raise CryptoError("not a valid SM2 private key: the scalar must be 32 bytes in [1, n-2]")
        key = native.private_key_from_pkcs8(self._pkcs8(public=b""))
        object.__setattr__(self, "_native", key)
        object.__setattr__(self, "public_key", SM2PublicKey(native.encoded_public_point(key)[1:]))  # d·G by OpenSSL

    def __reduce__(self) -> tuple[type, tuple[bytes]]:
        return SM2PrivateKey, (self.scalar,)  # the OpenSSL handle is rebuilt, never pickled

    def _pkcs8(self, public: bytes) -> bytes:
        ec_private_key = _der(0x30, bytes.fromhex("020101") + _der(0x04, self.scalar) + public)
        return _der(0x30, bytes.fromhex("020100") + _ALGORITHM + _der(0x04, ec_private_key))

    @classmethod
    def generate(cls) -> SM2PrivateKey:
        """Create a new random key pair (d drawn uniformly from [1, n−2] by the OS's CSPRNG)."""
        return cls((secrets.randbelow(N - 2) + 1).to_bytes(32, "big"))

    def to_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as `openssl genpkey -algorithm SM2` writes it."""
        return _pem("PRIVATE KEY", self._pkcs8(_der(0xA1, _der(0x03, b"\x00\x04" + self.public_key.point))))

    @classmethod
    def from_pem(cls, pem: bytes) -> SM2PrivateKey:
        """Read an unencrypted PKCS#8 PEM private key on the SM2 curve."""
        return cls(native.private_scalar(native.private_key_from_pkcs8(_unpem("PRIVATE KEY", pem))))

    def sign(self, message: bytes) -> bytes:
        """Sign `message` with SM2-with-SM3 (default user id); returns r || s, 64 bytes."""
        return signature_from_der(native.sign_der(self._native, message))

    def unwrap(self, wrapped: bytes) -> bytes:
        """Recover a secret wrapped to this key; raises CryptoError if it was not, or was altered (bytes after the
        DER SEQUENCE too: OpenSSL's parser would ignore them)."""
        if _der_sequence_length(wrapped) != len(wrapped):
            raise CryptoError("SM2 key unwrap failed: the wrapped key is not exactly one DER SEQUENCE")
        try:
            return native.decrypt(self._native, wrapped)
        except CryptoError:
            raise CryptoError(
                "SM2 key unwrap failed: the data key was wrapped for another key or was altered"
            ) from None
