"""SM2 through OpenSSL 3's libcrypto (the library the `openssl` command line runs on).

OpenSSL implements SM2 signatures (GB/T 32918.2, with the user id in ZA),
SM2 public-key encryption (GB/T 32918.4, ciphertext as GM/T 0009 DER) and
SM2 keys in PKCS#8 / SubjectPublicKeyInfo with the SM2 curve OID, with
constant-time scalar multiplication for secret scalars. This module binds only
the EVP calls fedloop needs, through ctypes; every EVP object is freed before
the call returns or, for keys, when the Python object is collected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fedloop.shared.crypto import CryptoError

DEFAULT_USER_ID = b"1234567812345678"  # GB/T 35276's default distinguishing identifier


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("crypto") or "libcrypto.so.3"
    try:
        library = ctypes.CDLL(name)
        getattr(library, "EVP_PKEY_CTX_new_from_pkey")  # noqa: B009 - raises AttributeError before OpenSSL 3
    except (OSError, AttributeError):
        raise CryptoError("OpenSSL 3's libcrypto was not found: install the system package (Debian: libssl3)") from None
    return library


_lib = _load()
_ptr, _size = ctypes.c_void_p, ctypes.c_size_t
for _name, _result, _args in [
    ("d2i_AutoPrivateKey", _ptr, [_ptr, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long]),
    ("d2i_PUBKEY", _ptr, [_ptr, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long]),
    ("EVP_PKEY_free", None, [_ptr]),
    ("EVP_PKEY_is_a", ctypes.c_int, [_ptr, ctypes.c_char_p]),
    (
        "EVP_PKEY_get_octet_string_param",
        ctypes.c_int,
        [_ptr, ctypes.c_char_p, ctypes.c_char_p, _size, ctypes.POINTER(_size)],
    ),
    ("EVP_PKEY_CTX_new_from_pkey", _ptr, [_ptr, _ptr, _ptr]),
    ("EVP_PKEY_CTX_free", None, [_ptr]),
    ("EVP_PKEY_CTX_set1_id", ctypes.c_int, [_ptr, ctypes.c_char_p, ctypes.c_int]),
    ("EVP_MD_CTX_new", _ptr, []),
    ("EVP_MD_CTX_free", None, [_ptr]),
    ("EVP_MD_CTX_set_pkey_ctx", None, [_ptr, _ptr]),
    ("EVP_sm3", _ptr, []),
    ("EVP_DigestSignInit", ctypes.c_int, [_ptr, _ptr, _ptr, _ptr, _ptr]),
    ("EVP_DigestSign", ctypes.c_int, [_ptr, ctypes.c_char_p, ctypes.POINTER(_size), ctypes.c_char_p, _size]),
    ("EVP_DigestVerifyInit", ctypes.c_int, [_ptr, _ptr, _ptr, _ptr, _ptr]),
    ("EVP_DigestVerify", ctypes.c_int, [_ptr, ctypes.c_char_p, _size, ctypes.c_char_p, _size]),
    ("EVP_PKEY_encrypt_init", ctypes.c_int, [_ptr]),
    ("EVP_PKEY_encrypt", ctypes.c_int, [_ptr, ctypes.c_char_p, ctypes.POINTER(_size), ctypes.c_char_p, _size]),
    ("EVP_PKEY_decrypt_init", ctypes.c_int, [_ptr]),
    ("EVP_PKEY_decrypt", ctypes.c_int, [_ptr, ctypes.c_char_p, ctypes.POINTER(_size), ctypes.c_char_p, _size]),
    ("EVP_PKEY_get_bn_param", ctypes.c_int, [_ptr, ctypes.c_char_p, ctypes.POINTER(_ptr)]),
    ("BN_bn2binpad", ctypes.c_int, [_ptr, ctypes.c_char_p, ctypes.c_int]),
    ("BN_clear_free", None, [_ptr]),
    ("ERR_clear_error", None, []),
]:
    _function = getattr(_lib, _name)
    _function.restype, _function.argtypes = _result, _args


class NativeKey:
    """An OpenSSL EVP_PKEY holding an SM2 key, freed when this object is collected."""

    def __init__(self, handle: int, private: bool) -> None:
        self.handle: int | None = handle
        self.private = private

    def __del__(self) -> None:
        if getattr(self, "handle", None):
            _lib.EVP_PKEY_free(self.handle)
            self.handle = None

    def __repr__(self) -> str:
        return f"NativeKey(sm2, {'private' if self.private else 'public'})"


def _decode(decoder: Callable[..., int], der: bytes, private: bool, what: str) -> NativeKey:
    _lib.ERR_clear_error()
    cursor = ctypes.c_char_p(der)
    handle = decoder(None, ctypes.byref(cursor), len(der))
    if not handle:
        raise CryptoError(f"not a valid SM2 {what} (OpenSSL could not decode it)")
    key = NativeKey(handle, private)
    if not _lib.EVP_PKEY_is_a(handle, b"SM2"):
        raise CryptoError(f"the {what} is not on the SM2 curve (OID 1.2.156.10197.1.301)")
    return key


def private_key_from_pkcs8(der: bytes) -> NativeKey:
    """Load a PKCS#8 DER private key; its public point is derived by OpenSSL when the DER omits it."""
    return _decode(_lib.d2i_AutoPrivateKey, der, True, "private key")


def public_key_from_spki(der: bytes) -> NativeKey:
    """Load a SubjectPublicKeyInfo DER public key; the point is checked to lie on the curve."""
    return _decode(_lib.d2i_PUBKEY, der, False, "public key")


def encoded_public_point(key: NativeKey) -> bytes:
    """The uncompressed public point 04 || x || y (65 bytes)."""
    out, length = ctypes.create_string_buffer(65), _size()
    if not _lib.EVP_PKEY_get_octet_string_param(key.handle, b"encoded-pub-key", out, 65, ctypes.byref(length)):
        raise CryptoError("OpenSSL could not export the SM2 public point")
    return out.raw[: length.value]


def private_scalar(key: NativeKey) -> bytes:
    """The private scalar d, 32 bytes big-endian (the caller keeps it out of every output)."""
    number = _ptr()
    if not key.private or _lib.EVP_PKEY_get_bn_param(key.handle, b"priv", ctypes.byref(number)) != 1:
        raise CryptoError("OpenSSL could not export the SM2 private scalar")
    out = ctypes.create_string_buffer(32)
    try:
        if _lib.BN_bn2binpad(number, out, 32) != 32:
            raise CryptoError("the SM2 private scalar does not fit 32 bytes")
        return out.raw
    finally:
        _lib.BN_clear_free(number)


@contextmanager
def _pkey_context(key: NativeKey, user_id: bytes | None = None) -> Iterator[int]:
    _lib.ERR_clear_error()
    context = _lib.EVP_PKEY_CTX_new_from_pkey(None, key.handle, None)
    if not context:
        raise CryptoError("OpenSSL could not create an SM2 context")
    try:
        if user_id is not None and _lib.EVP_PKEY_CTX_set1_id(context, user_id, len(user_id)) != 1:
            raise CryptoError("OpenSSL refused the SM2 user id")
        yield context
    finally:
        _lib.EVP_PKEY_CTX_free(context)


@contextmanager
def _digest_context(key: NativeKey, user_id: bytes, init: Callable[..., int]) -> Iterator[int]:
    digest = _lib.EVP_MD_CTX_new()
    try:
        with _pkey_context(key, user_id) as context:
            _lib.EVP_MD_CTX_set_pkey_ctx(digest, context)  # the digest context borrows it; freed after it
            if init(digest, None, _lib.EVP_sm3(), None, key.handle) != 1:
                raise CryptoError("OpenSSL could not start an SM2-with-SM3 operation")
            try:
                yield digest
            finally:
                _lib.EVP_MD_CTX_set_pkey_ctx(digest, None)
    finally:
        _lib.EVP_MD_CTX_free(digest)


def sign_der(key: NativeKey, message: bytes, user_id: bytes = DEFAULT_USER_ID) -> bytes:
    """SM2-with-SM3 signature of `message` (ZA over `user_id`), DER SEQUENCE {r, s}."""
    with _digest_context(key, user_id, _lib.EVP_DigestSignInit) as digest:
        out, length = ctypes.create_string_buffer(80), _size(80)
        if _lib.EVP_DigestSign(digest, out, ctypes.byref(length), message, len(message)) != 1:
            raise CryptoError("OpenSSL failed to sign with SM2")
        return out.raw[: length.value]


def verify_der(key: NativeKey, message: bytes, signature: bytes, user_id: bytes = DEFAULT_USER_ID) -> bool:
    """True when `signature` (DER) is a valid SM2-with-SM3 signature of `message` under `key`."""
    with _digest_context(key, user_id, _lib.EVP_DigestVerifyInit) as digest:
        verdict = _lib.EVP_DigestVerify(digest, signature, len(signature), message, len(message))
    _lib.ERR_clear_error()
    return bool(verdict == 1)


def _crypt(key: NativeKey, data: bytes, init: Callable[[int], int], run: Callable[..., int], what: str) -> bytes:
    with _pkey_context(key) as context:
        if init(context) != 1:
            raise CryptoError(f"OpenSSL could not start SM2 {what}")
        length = _size()
        if run(context, None, ctypes.byref(length), data, len(data)) != 1:
            raise CryptoError(f"SM2 {what} failed")
        out = ctypes.create_string_buffer(length.value)
        if run(context, out, ctypes.byref(length), data, len(data)) != 1:
            _lib.ERR_clear_error()
            raise CryptoError(f"SM2 {what} failed")
        return out.raw[: length.value]


def encrypt(key: NativeKey, plaintext: bytes) -> bytes:
    """SM2 public-key encryption (SM3 for the KDF and C3); the ciphertext is GM/T 0009 DER."""
    return _crypt(key, plaintext, _lib.EVP_PKEY_encrypt_init, _lib.EVP_PKEY_encrypt, "encryption")


def decrypt(key: NativeKey, ciphertext: bytes) -> bytes:
    """Decrypt a GM/T 0009 DER SM2 ciphertext; raises CryptoError if C1 is off the curve or C3 does not match."""
    return _crypt(key, ciphertext, _lib.EVP_PKEY_decrypt_init, _lib.EVP_PKEY_decrypt, "decryption")
