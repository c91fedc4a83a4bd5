"""The sealed envelope, SM2 wrapping and key files."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fedloop.shared.crypto import CryptoError, decrypt_field, encrypt_field
from fedloop.shared.envelope import Binding, EnvelopeError, open_envelope, seal
from fedloop.shared.keys import Identity, KeyFileError, Keyring, init_keys, key_paths, load_identity

BINDING = Binding("update", "acme", "run-1", 3, "v0002-abcdef12", {"num-examples": 40})


@pytest.fixture(scope="module")
def parties(tmp_path_factory: pytest.TempPathFactory) -> tuple[Identity, Identity, Identity, Keyring, Path]:
    keys = tmp_path_factory.mktemp("keys")
    hq = init_keys("hq", "hq", keys)
    acme = init_keys("tenant", "acme", keys)
    other_hq = init_keys("hq", "rogue", tmp_path_factory.mktemp("rogue"))
    return hq, acme, other_hq, Keyring.from_directory(keys), keys


@pytest.fixture(scope="module")
def envelope(parties) -> bytes:
    hq, acme, *_ = parties
    return seal(b"adapter-bytes" * 100, BINDING, acme, hq.public)


def test_round_trip(parties, envelope: bytes) -> None:
    hq, acme, _, keyring, _ = parties
    opened = open_envelope(envelope, hq, keyring, BINDING)
    assert opened.payload == b"adapter-bytes" * 100
    assert opened.sender.name == "acme" and opened.binding.details == {"num-examples": 40}


def test_every_single_bit_flip_is_refused(parties, envelope: bytes) -> None:
    hq, _, _, keyring, _ = parties
    positions = range(0, len(envelope) * 8, 7)  # a bit in every byte, spread over all sections
    for bit in positions:
        tampered = bytearray(envelope)
        tampered[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(EnvelopeError):
            open_envelope(bytes(tampered), hq, keyring, BINDING)


@pytest.mark.parametrize(
    "field, value",
    [("tenant", "bolt"), ("run", "run-2"), ("round", 4), ("base_version", "v0001-00000000"), ("kind", "global")],
)
def test_wrong_associated_data_is_refused(parties, envelope: bytes, field: str, value: object) -> None:
    hq, _, _, keyring, _ = parties
    expect = Binding(**{**BINDING.__dict__, field: value})
    with pytest.raises(EnvelopeError, match=f"associated data mismatch: {field}"):
        open_envelope(envelope, hq, keyring, expect)


def test_wrong_recipient_key_is_refused(parties, envelope: bytes) -> None:
    _, _, other_hq, keyring, _ = parties
    with pytest.raises(EnvelopeError, match="addressed to key"):
        open_envelope(envelope, other_hq, keyring, BINDING)


def test_same_key_id_but_wrong_private_key_fails_unwrap(parties, envelope: bytes) -> None:
    hq, _, other_hq, keyring, _ = parties
    impostor = Identity("hq", "hq", other_hq.signing_key, hq.storage, hq.pseudonym_key)
    forged_header = envelope.replace(hq.public.key_id.encode(), impostor.public.key_id.encode())
    with pytest.raises(EnvelopeError, match="bad signature"):
        open_envelope(forged_header, impostor, keyring, BINDING)
    wrapped = hq.public.key.wrap(b"k" * 16)
    with pytest.raises(CryptoError, match="wrapped for another key"):
        other_hq.signing_key.unwrap(wrapped)


def test_bad_signature_and_untrusted_sender_are_refused(parties, envelope: bytes) -> None:
    hq, acme, other_hq, keyring, _ = parties
    forged = envelope[:-64] + other_hq.signing_key.sign(b"x")
    with pytest.raises(EnvelopeError, match="bad signature"):
        open_envelope(forged, hq, keyring, BINDING)
    from_stranger = seal(b"x", BINDING, other_hq, hq.public)
    with pytest.raises(EnvelopeError, match="not trusted"):
        open_envelope(from_stranger, hq, keyring, BINDING)


def test_truncated_and_foreign_inputs_are_refused(parties, envelope: bytes) -> None:
    hq, _, _, keyring, _ = parties
    for data in (b"", b"hello world", envelope[:-1], envelope + b"\0"):
        with pytest.raises(EnvelopeError):
            open_envelope(data, hq, keyring, BINDING)


def test_field_encryption_binds_associated_data() -> None:
    key = b"0" * 16
    sealed = encrypt_field(key, b"secret", b"drafts/prompt/1")
    assert decrypt_field(key, sealed, b"drafts/prompt/1") == b"secret"
    with pytest.raises(CryptoError):
        decrypt_field(key, sealed, b"drafts/prompt/2")


def test_key_files(tmp_path: Path, parties) -> None:
    init_keys("tenant", "bolt", tmp_path)
    paths = key_paths(tmp_path, "bolt")
    assert stat.S_IMODE(paths["private"].stat().st_mode) == 0o600
    assert stat.S_IMODE(paths["storage"].stat().st_mode) == 0o600
    loaded = load_identity(tmp_path, "bolt")
    assert "sm2_private_key" not in repr(loaded) and loaded.storage.keys[1].hex() not in repr(loaded)
    with pytest.raises(KeyFileError, match="already exist"):
        init_keys("tenant", "bolt", tmp_path)
    with pytest.raises(KeyFileError, match="role"):
        init_keys("boss", "x", tmp_path)  # type: ignore[arg-type]
    with pytest.raises(KeyFileError, match="not found"):
        load_identity(tmp_path, "nobody")
