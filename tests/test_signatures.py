from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conversations.signatures import (
    ED25519_HEADER,
    HIGHLEVEL_ED25519_PUBLIC_KEY,
    HIGHLEVEL_RSA_PUBLIC_KEY,
    RSA_HEADER,
    SignatureVerifier,
    Verification,
)

BODY = b'{"type":"InboundMessage","locationId":"l1","body":"hi \xc3\xa9","webhookId":"w1"}'


def _public_pem(key: Ed25519PrivateKey | rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


ED_KEY = Ed25519PrivateKey.generate()
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
VERIFIER = SignatureVerifier(ed25519_pem=_public_pem(ED_KEY), rsa_pem=_public_pem(RSA_KEY))


def ed_sign(body: bytes, key: Ed25519PrivateKey = ED_KEY) -> str:
    return base64.b64encode(key.sign(body)).decode()


def rsa_sign(body: bytes, key: rsa.RSAPrivateKey = RSA_KEY) -> str:
    return base64.b64encode(key.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode()


def _flip_last_byte(body: bytes) -> bytes:
    return body[:-1] + bytes([body[-1] ^ 1])


def test_header_names() -> None:
    assert ED25519_HEADER == "x-ghl-signature"
    assert RSA_HEADER == "x-wh-signature"
    assert Verification("ed25519", True, "").header == "X-GHL-Signature"
    assert Verification("rsa", True, "").header == "X-WH-Signature"
    assert Verification(None, False, "").header is None


def test_valid_ed25519() -> None:
    result = VERIFIER.verify(BODY, ed_sign(BODY), None)
    assert result == Verification("ed25519", True, "valid Ed25519 signature")


def test_valid_rsa_legacy() -> None:
    result = VERIFIER.verify(BODY, None, rsa_sign(BODY))
    assert result == Verification("rsa", True, "valid RSA signature")


def test_ed25519_wrong_body() -> None:
    result = VERIFIER.verify(_flip_last_byte(BODY), ed_sign(BODY), None)
    assert result == Verification("ed25519", False, "Ed25519 signature does not match the body")


def test_ed25519_wrong_key() -> None:
    result = VERIFIER.verify(BODY, ed_sign(BODY, Ed25519PrivateKey.generate()), None)
    assert (result.scheme, result.valid) == ("ed25519", False)


def test_rsa_wrong_body_and_wrong_key() -> None:
    wrong_body = VERIFIER.verify(_flip_last_byte(BODY), None, rsa_sign(BODY))
    assert wrong_body == Verification("rsa", False, "RSA signature does not match the body")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    wrong_key = VERIFIER.verify(BODY, None, rsa_sign(BODY, other))
    assert (wrong_key.scheme, wrong_key.valid) == ("rsa", False)


@pytest.mark.parametrize("absent", [None, "", "   ", "N/A", "n/a", " N/a\t"])
def test_missing_both(absent: str | None) -> None:
    result = VERIFIER.verify(BODY, absent, absent)
    assert result == Verification(None, False, "no signature header")
    assert result.header is None


@pytest.mark.parametrize("absent", [None, "", "N/A", "n/a"])
def test_absent_ed25519_falls_back_to_rsa(absent: str | None) -> None:
    result = VERIFIER.verify(BODY, absent, rsa_sign(BODY))
    assert (result.scheme, result.valid) == ("rsa", True)


def test_invalid_ed25519_does_not_fall_back_to_valid_rsa() -> None:
    result = VERIFIER.verify(BODY, ed_sign(b"something else"), rsa_sign(BODY))
    assert (result.scheme, result.valid) == ("ed25519", False)


def test_valid_ed25519_wins_over_bad_rsa() -> None:
    result = VERIFIER.verify(BODY, ed_sign(BODY), "garbage!")
    assert (result.scheme, result.valid) == ("ed25519", True)


def test_whitespace_around_values() -> None:
    assert VERIFIER.verify(BODY, f"  {ed_sign(BODY)}\n", None).valid
    assert VERIFIER.verify(BODY, None, f"\t{rsa_sign(BODY)} ").valid


def test_padding_optional() -> None:
    ed = ed_sign(BODY)
    assert ed.endswith("=")
    assert VERIFIER.verify(BODY, ed.rstrip("="), None).valid


@pytest.mark.parametrize(
    "garbage",
    [
        "not base64!",
        "abc",  # impossible length
        "ab=c",
        "é" * 88,
        "\ud800",
        "\x00",
        "A" * 1_000_000,
        "-_-_" * 22,  # urlsafe alphabet is not standard base64
    ],
)
def test_garbage_never_raises(garbage: str) -> None:
    ed = VERIFIER.verify(BODY, garbage, rsa_sign(BODY))
    assert (ed.scheme, ed.valid) == ("ed25519", False)
    legacy = VERIFIER.verify(BODY, None, garbage)
    assert (legacy.scheme, legacy.valid) == ("rsa", False)


def test_invalid_base64_reason() -> None:
    assert VERIFIER.verify(BODY, "%%%", None).reason == "Ed25519 signature is not valid base64"
    assert VERIFIER.verify(BODY, None, "%%%").reason == "RSA signature is not valid base64"


def test_valid_base64_of_wrong_length() -> None:
    short = base64.b64encode(b"\x00" * 10).decode()
    assert not VERIFIER.verify(BODY, short, None).valid
    assert not VERIFIER.verify(BODY, None, short).valid


@pytest.mark.parametrize("size", [1, 63, 65, 128])
def test_ed25519_signature_of_wrong_length_is_a_mismatch(size: int) -> None:
    """A valid signature cut or padded: refused as Ed25519 (no RSA fallback), no raise."""
    signature = base64.b64encode((ED_KEY.sign(BODY) * 2)[:size]).decode()
    result = VERIFIER.verify(BODY, signature, rsa_sign(BODY))
    assert (result.scheme, result.valid) == ("ed25519", False)


@pytest.mark.parametrize("signature", [b"\xff" * 64, b"\x00" * 64, b"\x01" * 32 + b"\xff" * 32])
def test_ed25519_malformed_64_bytes_is_a_mismatch(signature: bytes) -> None:
    """Not a point, or S not reduced: libsodium refuses them, as a mismatch."""
    result = VERIFIER.verify(BODY, base64.b64encode(signature).decode(), None)
    assert result == Verification("ed25519", False, "Ed25519 signature does not match the body")


def test_empty_body() -> None:
    assert VERIFIER.verify(b"", ed_sign(b""), None).valid
    assert VERIFIER.verify(b"", None, rsa_sign(b"")).valid


def test_default_verifier_loads_highlevel_keys() -> None:
    verifier = SignatureVerifier()
    assert verifier.verify(BODY, ed_sign(BODY), None) == Verification(
        "ed25519", False, "Ed25519 signature does not match the body"
    )
    assert not verifier.verify(BODY, None, rsa_sign(BODY)).valid
    highlevel_rsa = serialization.load_pem_public_key(HIGHLEVEL_RSA_PUBLIC_KEY.encode())
    assert isinstance(highlevel_rsa, rsa.RSAPublicKey)
    assert highlevel_rsa.key_size == 4096
    assert "MCowBQYDK2VwAyEAi2HR1srL4o18O8BRa7gVJY7G7bupbN3H9AwJrHCDiOg=" in (
        HIGHLEVEL_ED25519_PUBLIC_KEY
    )


@pytest.mark.parametrize("bad_pem", ["", "not a pem", "-----BEGIN PUBLIC KEY-----\nAAAA\n"])
def test_bad_pem_names_the_key(bad_pem: str) -> None:
    with pytest.raises(ValueError, match=r"^Ed25519 public key"):
        SignatureVerifier(ed25519_pem=bad_pem)
    with pytest.raises(ValueError, match=r"^RSA public key"):
        SignatureVerifier(rsa_pem=bad_pem)


def test_wrong_key_type() -> None:
    with pytest.raises(ValueError, match=r"^Ed25519 public key.*not an Ed25519 key"):
        SignatureVerifier(ed25519_pem=_public_pem(RSA_KEY))
    with pytest.raises(ValueError, match=r"^RSA public key.*not an RSA key"):
        SignatureVerifier(rsa_pem=_public_pem(ED_KEY))
