"""SM2 as GB/T 32918 defines it: the standard's examples, range checks, and interop with OpenSSL's command line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fedloop.shared.crypto import CryptoError
from fedloop.shared.sm2 import N, SM2PrivateKey, SM2PublicKey, signature_from_der, signature_to_der

# GB/T 32918.5-2017 (GM/T 0003.5) examples on the recommended curve.
D = bytes.fromhex("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8")
PUBLIC = bytes.fromhex(
    "09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020"
    "CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13"
)
SIGNED = b"message digest"  # user id 1234567812345678
SIGNATURE = bytes.fromhex(
    "F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3"
    "B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA"
)
ENCRYPTED = b"encryption standard"
CIPHERTEXT_DER = bytes.fromhex(  # C1 = k·G, C3, C2 in GM/T 0009 DER
    "307C022004EBFC718E8D1798620432268E77FEB6415E2EDE0E073C0F4F640ECD2E149A73022100E858F9D81E5430A57B36DAAB8F950A3C"
    "64E6EE6A63094D99283AFF767E124DF0042059983C18F809E262923C53AEC295D30383B54E39D609D160AFCB1908D0BD87660413218"
    "86CA989CA9C7D58087307CA93092D651EFA"
)
DISTID = "distid:1234567812345678"


def test_known_answers_from_the_standard() -> None:
    key = SM2PrivateKey(D)
    assert key.public_key.point == PUBLIC
    assert key.public_key.verify(SIGNED, SIGNATURE)
    assert not key.public_key.verify(SIGNED + b"!", SIGNATURE)
    assert key.unwrap(CIPHERTEXT_DER) == ENCRYPTED


@pytest.mark.parametrize("r, s", [(0, 1), (1, 0), (N, 1), (1, N), (2**256 - 1, 1)])
def test_signatures_with_r_or_s_out_of_range_are_bad_signatures_not_errors(r: int, s: int) -> None:
    assert SM2PrivateKey(D).public_key.verify(SIGNED, r.to_bytes(32, "big") + s.to_bytes(32, "big")) is False


@pytest.mark.parametrize("d", [0, N - 1, N, 2**256 - 1])
def test_private_scalars_out_of_range_are_refused(d: int) -> None:
    with pytest.raises(CryptoError, match=r"\[1, n-2\]"):
        SM2PrivateKey(d.to_bytes(32, "big"))


def test_points_off_the_curve_are_refused() -> None:
    with pytest.raises(CryptoError, match="not a valid SM2 public key"):
        SM2PublicKey(PUBLIC[:-1] + bytes([PUBLIC[-1] ^ 1]))


def test_keys_whose_x_coordinate_starts_with_byte_04_sign_verifiably() -> None:
    """gmssl stripped such keys' leading '04' hex digits and never verified their signatures (1 key in 256)."""
    for _ in range(5000):
        key = SM2PrivateKey.generate()
        if key.public_key.point[0] == 0x04:
            break
    else:
        pytest.fail("no key with x starting 0x04 in 5000 tries")
    for index in range(5):
        message = f"round {index}".encode()
        assert key.public_key.verify(message, key.sign(message))


def test_pem_round_trip_and_a_wrap_is_not_for_another_key() -> None:
    key = SM2PrivateKey.generate()
    assert SM2PrivateKey.from_pem(key.to_pem()) == key
    assert SM2PublicKey.from_pem(key.public_key.to_pem()) == key.public_key
    assert key.to_pem().startswith(b"-----BEGIN PRIVATE KEY-----\n") and "scalar" not in repr(key)
    with pytest.raises(CryptoError, match="wrapped for another key or was altered"):
        SM2PrivateKey.generate().unwrap(key.public_key.wrap(b"k" * 16))
    wrapped = bytearray(key.public_key.wrap(b"k" * 16))
    wrapped[-1] ^= 1
    with pytest.raises(CryptoError, match="altered"):
        key.unwrap(bytes(wrapped))


def test_bytes_after_the_der_key_wrap_are_refused() -> None:
    """OpenSSL's DER parser reads the SEQUENCE and ignores what follows: the unwrap used to accept it."""
    key = SM2PrivateKey.generate()
    wrapped = key.public_key.wrap(b"k" * 16)
    assert key.unwrap(wrapped) == b"k" * 16
    for padded in (wrapped + b"\x00", wrapped + b"trailing bytes", wrapped[:-1], b"\x31" + wrapped[1:], b""):
        with pytest.raises(CryptoError, match="SM2 key unwrap failed"):
            key.unwrap(padded)


def _openssl(*args: str, cwd: Path) -> bytes:
    return subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True).stdout


def test_interop_with_the_openssl_command_line(tmp_path: Path) -> None:
    ours = SM2PrivateKey.generate()
    (tmp_path / "ours.pem").write_bytes(ours.to_pem())
    (tmp_path / "ours.pub.pem").write_bytes(ours.public_key.to_pem())
    (tmp_path / "message").write_bytes(b"the adapter digest")
    assert b"ASN1 OID: SM2" in _openssl("pkey", "-in", "ours.pem", "-noout", "-text", cwd=tmp_path)

    # fedloop signs, OpenSSL verifies; OpenSSL signs, fedloop verifies.
    (tmp_path / "ours.sig").write_bytes(signature_to_der(ours.sign(b"the adapter digest")))
    assert b"Verified OK" in _openssl(
        "dgst", "-sm3", "-verify", "ours.pub.pem", "-sigopt", DISTID, "-signature", "ours.sig", "message", cwd=tmp_path
    )
    _openssl("genpkey", "-algorithm", "SM2", "-out", "theirs.pem", cwd=tmp_path)
    theirs = SM2PrivateKey.from_pem((tmp_path / "theirs.pem").read_bytes())
    _openssl("dgst", "-sm3", "-sign", "theirs.pem", "-sigopt", DISTID, "-out", "theirs.sig", "message", cwd=tmp_path)
    signature = signature_from_der((tmp_path / "theirs.sig").read_bytes())
    assert theirs.public_key.verify(b"the adapter digest", signature)
    assert not ours.public_key.verify(b"the adapter digest", signature)

    # fedloop wraps, OpenSSL decrypts; OpenSSL encrypts, fedloop unwraps.
    (tmp_path / "wrapped").write_bytes(ours.public_key.wrap(b"sixteen byte key"))
    assert _openssl("pkeyutl", "-decrypt", "-inkey", "ours.pem", "-in", "wrapped", cwd=tmp_path) == b"sixteen byte key"
    _openssl(
        "pkeyutl", "-encrypt", "-pubin", "-inkey", "ours.pub.pem", "-in", "message", "-out", "theirs.ct", cwd=tmp_path
    )
    assert ours.unwrap((tmp_path / "theirs.ct").read_bytes()) == b"the adapter digest"


def test_keys_export_to_pem_and_init_from_an_openssl_key(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedloop.cli import app
    from fedloop.shared.keys import load_identity

    runner = CliRunner()
    _openssl("genpkey", "-algorithm", "SM2", "-out", "hsm.pem", cwd=tmp_path)
    made = runner.invoke(
        app,
        [
            "keys",
            "init",
            "--role",
            "tenant",
            "--name",
            "acme",
            "--out",
            str(tmp_path / "k"),
            "--sm2-pem",
            str(tmp_path / "hsm.pem"),
        ],
    )
    assert made.exit_code == 0, made.output
    identity = load_identity(tmp_path / "k", "acme")
    assert identity.signing_key == SM2PrivateKey.from_pem((tmp_path / "hsm.pem").read_bytes())
    exported = runner.invoke(
        app, ["keys", "export", "--keys", str(tmp_path / "k"), "--name", "acme", "--out", str(tmp_path / "pem")]
    )
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "pem" / "acme.sm2.pem").stat().st_mode & 0o777 == 0o600
    assert (
        _openssl("pkey", "-in", "pem/acme.sm2.pem", "-pubout", cwd=tmp_path)
        == (tmp_path / "pem" / "acme.sm2.pub.pem").read_bytes()
    )
