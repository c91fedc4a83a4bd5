"""The sealed envelope: the one format in which anything leaves a party.

Layout (all integers big-endian)::

    b"FLENV" | format version (u8) | header length (u32) | header (canonical JSON)
    | wrapped key length (u16) | SM4 data key wrapped with SM2 encryption (GM/T 0009 DER)
    | ciphertext length (u64) | SM4-GCM ciphertext + tag
    | SM2 signature (64 bytes) over SM3(everything before it)

The header names the algorithms, the recipient's and sender's key ids, the GCM
nonce and the binding (kind, tenant, run, round, base version, details). The
header is the GCM associated data and is covered by the signature, so a replay
into another round, a splice into another tenant's slot or any flipped bit is
refused before a single byte is decrypted.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

from fedloop.shared.crypto import (
    GCM_NONCE_BYTES,
    CryptoError,
    new_sm4_key,
    sm3_digest,
    sm4_gcm_decrypt,
    sm4_gcm_encrypt,
)
from fedloop.shared.keys import Identity, Keyring, PartyPublicKey
from fedloop.shared.sm2 import SIGNATURE_BYTES

MAGIC = b"FLENV"
FORMAT_VERSION = 2  # 2: the data key wrap is GM/T 0009 DER (1 was gmssl's raw C1 || C3 || C2)
ALGORITHMS = {"enc": "SM4-GCM", "wrap": "SM2", "sig": "SM2-SM3"}
_PREFIX = struct.Struct(">5sBI")


class EnvelopeError(CryptoError):
    """An envelope was refused; the message says why and `reason` names the check for counting.

    Reasons: `malformed`, `unknown-key`, `bad-signature` (any altered byte, or a forgery: the
    signature covers every byte before it), `unsupported`, `wrong-recipient`, `replay` (sealed
    for an earlier round or base version), `wrong-associated-data`.
    """

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Binding:
    """What an envelope is bound to: checked by the receiver, authenticated by GCM and SM2.

    `details` carries signed facts the receiver reads (sample count, version id,
    digest); the other fields must equal what the receiver expects.
    """

    kind: str
    tenant: str
    run: str
    round: int
    base_version: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OpenedEnvelope:
    """A verified, decrypted envelope."""

    binding: Binding
    sender: PartyPublicKey
    payload: bytes = field(repr=False)


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def seal(payload: bytes, binding: Binding, sender: Identity, recipient: PartyPublicKey) -> bytes:
    """Encrypt `payload` for `recipient`, bind it to `binding` and sign it as `sender`."""
    data_key = new_sm4_key()
    nonce = os.urandom(GCM_NONCE_BYTES)
    header = _canonical(
        {
            "v": FORMAT_VERSION,
            "alg": ALGORITHMS,
            "recipient": recipient.key_id,
            "sender": sender.public.key_id,
            "nonce": nonce.hex(),
            "binding": asdict(binding),
        }
    )
    wrapped = recipient.key.wrap(data_key)
    ciphertext = sm4_gcm_encrypt(data_key, nonce, payload, header)
    head = b"".join(
        [
            _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)),
            header,
            struct.pack(">H", len(wrapped)),
            wrapped,
            struct.pack(">Q", len(ciphertext)),
        ]
    )
    return b"".join([head, ciphertext, sender.signing_key.sign(sm3_digest(head, ciphertext))])


def _split(envelope: bytes) -> tuple[bytes, dict[str, Any], bytes, bytes, bytes, bytes]:
    """Parse the layout strictly; returns body, header, header bytes, wrapped key, ciphertext, signature."""
    if len(envelope) < _PREFIX.size:
        raise EnvelopeError("envelope is truncated (shorter than its fixed prefix)")
    magic, version, header_len = _PREFIX.unpack_from(envelope)
    if magic != MAGIC:
        raise EnvelopeError("not a fedloop envelope (bad magic bytes)")
    if version != FORMAT_VERSION:
        raise EnvelopeError(f"envelope format version {version} is not supported (expected {FORMAT_VERSION})")
    offset = _PREFIX.size
    try:
        header_bytes = envelope[offset : offset + header_len]
        offset += header_len
        (wrapped_len,) = struct.unpack_from(">H", envelope, offset)
        offset += 2
        wrapped = envelope[offset : offset + wrapped_len]
        offset += wrapped_len
        (ct_len,) = struct.unpack_from(">Q", envelope, offset)
        offset += 8
        ciphertext = envelope[offset : offset + ct_len]
        offset += ct_len
    except struct.error:
        raise EnvelopeError("envelope is truncated") from None
    if len(header_bytes) != header_len or len(wrapped) != wrapped_len or len(ciphertext) != ct_len:
        raise EnvelopeError("envelope is truncated")
    if len(envelope) - offset != SIGNATURE_BYTES:
        raise EnvelopeError("envelope length does not match its declared sections (truncated or padded)")
    try:
        header = json.loads(header_bytes)
    except ValueError:
        raise EnvelopeError("envelope header is not valid JSON (corrupted)") from None
    if not isinstance(header, dict):
        raise EnvelopeError("envelope header is not a JSON object (corrupted)")
    return envelope[:offset], header, header_bytes, wrapped, ciphertext, envelope[offset:]


def open_envelope(envelope: bytes, recipient: Identity, trusted: Keyring, expect: Binding) -> OpenedEnvelope:
    """Verify and decrypt `envelope`.

    Checks, in order: layout, sender is trusted, SM2 signature, algorithms,
    recipient, binding fields against `expect` (its `details` are not compared),
    then unwraps the data key and decrypts. Raises EnvelopeError naming the
    first check that failed; nothing is decrypted unless all pass.
    """
    body, header, header_bytes, wrapped, ciphertext, signature = _split(envelope)
    sender = trusted.get(str(header.get("sender")))
    if sender is None:
        raise EnvelopeError(
            f"envelope sender key {header.get('sender')!r} is not trusted: add its .sm2.pub.json to the keyring",
            "unknown-key",
        )
    if not sender.key.verify(sm3_digest(body), signature):
        raise EnvelopeError(
            f"bad signature: envelope claims to be from {sender.role} {sender.name!r} "
            "but its SM2 signature does not verify (altered or forged)",
            "bad-signature",
        )
    if header.get("alg") != ALGORITHMS or header.get("v") != FORMAT_VERSION:
        raise EnvelopeError(f"unsupported algorithms {header.get('alg')!r}; expected {ALGORITHMS}", "unsupported")
    if header.get("recipient") != recipient.public.key_id:
        raise EnvelopeError(
            f"envelope is addressed to key {header.get('recipient')!r}, not to this party's key "
            f"{recipient.public.key_id!r} ({recipient.role} {recipient.name!r})",
            "wrong-recipient",
        )
    try:
        binding = Binding(**header["binding"])
    except (KeyError, TypeError):
        raise EnvelopeError("envelope header has no valid binding") from None
    for name in ("kind", "tenant", "run", "round", "base_version"):
        got, want = getattr(binding, name), getattr(expect, name)
        if got != want:
            stale = name in ("round", "base_version") and binding.kind == expect.kind
            raise EnvelopeError(
                f"associated data mismatch: {name} is {got!r}, expected {want!r} (replayed, spliced or stale envelope)",
                "replay" if stale else "wrong-associated-data",
            )
    data_key = recipient.signing_key.unwrap(wrapped)
    payload = sm4_gcm_decrypt(data_key, bytes.fromhex(header["nonce"]), ciphertext, header_bytes)
    return OpenedEnvelope(binding, sender, payload)
