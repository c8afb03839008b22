"""Settings come from the environment, fail clearly, and the README documents each one."""

from __future__ import annotations

from pathlib import Path

import pytest

from conversations.settings import SETTINGS, Settings, SettingsError

README = Path(__file__).resolve().parent.parent / "README.md"


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.database_url is None
    assert settings.webhook_verify == "enforce"
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.port == 8000
    assert settings.body_timeout == 30.0
    assert Settings.from_env({"CONVERSATIONS_BODY_TIMEOUT": "2.5"}).body_timeout == 2.5


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CONVERSATIONS_PORT", "eighty", "not an integer"),
        ("CONVERSATIONS_PORT", "\u0668\u0660\u0668\u0660", "not an integer"),  # Arabic 8080
        ("CONVERSATIONS_BODY_TIMEOUT", "\uff12", "not a number"),  # a fullwidth 2
        ("CONVERSATIONS_MAX_BODY_BYTES", "0", "at least 1"),
        # Past a C size, every gzipped webhook was an OverflowError (quarantined as a bug);
        # past PostgreSQL's largest value, no body could be stored anyway.
        ("CONVERSATIONS_MAX_BODY_BYTES", "100000000000000000000", "at most 1073741823"),
        ("CONVERSATIONS_MAX_BODY_BYTES", "1073741824", "at most 1073741823"),
        ("CONVERSATIONS_WEBHOOK_VERIFY", "maybe", "not one of enforce, off"),
        ("CONVERSATIONS_AUTO_MIGRATE", "perhaps", "not a boolean"),
        ("CONVERSATIONS_DB_TIMEOUT", "-1", "must be positive"),
        ("CONVERSATIONS_BODY_TIMEOUT", "0", "must be positive"),
        ("CONVERSATIONS_BODY_TIMEOUT", "soon", "not a number"),
        ("CONVERSATIONS_BODY_TIMEOUT", "nan", "not a finite number"),
        ("CONVERSATIONS_BODY_TIMEOUT", "inf", "not a finite number"),
        ("CONVERSATIONS_WEBHOOK_ED25519_PUBLIC_KEY", "/no/such/key.pem", "neither PEM"),
    ],
)
def test_bad_values_name_the_setting(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message) as error:
        Settings.from_env({name: value})
    assert name in str(error.value)


def test_a_pem_can_be_given_as_a_path(tmp_path: Path) -> None:
    pem = "-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----\n"
    (tmp_path / "key.pem").write_text(pem)
    settings = Settings.from_env(
        {"CONVERSATIONS_WEBHOOK_RSA_PUBLIC_KEY": str(tmp_path / "key.pem")}
    )
    assert settings.rsa_public_key == pem


@pytest.mark.parametrize(
    "name", ["CONVERSATIONS_WEBHOOK_ED25519_PUBLIC_KEY", "CONVERSATIONS_WEBHOOK_RSA_PUBLIC_KEY"]
)
def test_a_key_file_that_is_not_text_names_the_setting(tmp_path: Path, name: str) -> None:
    """A DER key (binary) was a UnicodeDecodeError traceback from every command."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    der = tmp_path / "key.der"
    der.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(SettingsError, match="not PEM text") as error:
        Settings.from_env({name: str(der)})
    assert name in str(error.value)


def test_every_setting_is_in_the_readme_table() -> None:
    readme = README.read_text()
    for setting in SETTINGS:
        assert f"| `{setting.name}` |" in readme, setting.name
