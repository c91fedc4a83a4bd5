"""Symmetric GM primitives: SM4-GCM authenticated encryption and SM3 digests.

Both run through `cryptography` (OpenSSL), which is hundreds of times faster
than gmssl's pure-Python SM4; SM2 runs on OpenSSL's libcrypto too (see `sm2.py`).
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SM4_KEY_BYTES = 16
GCM_NONCE_BYTES = 12
GCM_TAG_BYTES = 16


class CryptoError(Exception):
    """A cryptographic check failed; the message says which and what to do."""


def sm3_digest(*parts: bytes) -> bytes:
    """Return the 32-byte SM3 digest of `parts` concatenated (hashed piece by piece, never joined)."""
    digest = hashes.Hash(hashes.SM3())
    for part in parts:
        digest.update(part)
    return digest.finalize()


def new_sm4_key() -> bytes:
    """Return a fresh random 128-bit SM4 key."""
    return os.urandom(SM4_KEY_BYTES)


def _check_key(key: bytes) -> None:
    if len(key) != SM4_KEY_BYTES:
        raise CryptoError(f"SM4 key must be {SM4_KEY_BYTES} bytes, got {len(key)}")


def sm4_gcm_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt `plaintext` under SM4-GCM; returns ciphertext with the 16-byte tag appended."""
    _check_key(key)
    encryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
    encryptor.authenticate_additional_data(aad)
    return encryptor.update(plaintext) + encryptor.finalize() + encryptor.tag


def sm4_gcm_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """Decrypt SM4-GCM `ciphertext` (tag appended); raises CryptoError if anything was altered."""
    _check_key(key)
    if len(ciphertext) < GCM_TAG_BYTES:
        raise CryptoError("SM4-GCM ciphertext is shorter than its authentication tag")
    body, tag = ciphertext[:-GCM_TAG_BYTES], ciphertext[-GCM_TAG_BYTES:]
    decryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce, tag)).decryptor()
    decryptor.authenticate_additional_data(aad)
    try:
        return decryptor.update(body) + decryptor.finalize()
    except InvalidTag:
        raise CryptoError(
            "SM4-GCM authentication failed: wrong key, wrong associated data, or the ciphertext was altered"
        ) from None


def encrypt_field(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt one value at rest: a fresh nonce followed by the SM4-GCM ciphertext."""
    nonce = os.urandom(GCM_NONCE_BYTES)
    return nonce + sm4_gcm_encrypt(key, nonce, plaintext, aad)


def decrypt_field(key: bytes, encrypted: bytes, aad: bytes) -> bytes:
    """Decrypt a value written by `encrypt_field` with the same key and associated data."""
    if len(encrypted) < GCM_NONCE_BYTES + GCM_TAG_BYTES:
        raise CryptoError("encrypted value is truncated")
    return sm4_gcm_decrypt(key, encrypted[:GCM_NONCE_BYTES], encrypted[GCM_NONCE_BYTES:], aad)


def hmac_sm3(key: bytes, data: bytes) -> bytes:
    """Keyed SM3 HMAC of `data`."""
    mac = crypto_hmac.HMAC(key, hashes.SM3())
    mac.update(data)
    return mac.finalize()
