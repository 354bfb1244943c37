"""Settings: every bad value is refused with one line that names the SMMGW_ variable.

Settings are read the way a running gateway reads them: from the environment (or a .env file
in the working directory), with no overrides.
"""

import os
from decimal import Decimal
from pathlib import Path

import pytest

from app.settings import SMMMIX_API_URL, Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SMMGW_ variable from the outer environment, and no stray .env file."""
    for name in list(os.environ):
        if name.startswith("SMMGW_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def load_from_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(f"SMMGW_{name.upper()}", value)
    return load_settings()


INVALID = [
    ("database_url", "mysql://user@host/db"),
    ("database_url", "not a url"),
    ("upstream_url", "ftp://panel.example/api/v2"),
    ("upstream_url", "panel.example/api/v2"),
    ("upstream_double_decode", "maybe"),
    ("upstream_family", "perfectpanel"),
    ("upstream_max_link_length", "5"),
    ("upstream_max_link_length", "100000"),
    ("upstream_connect_timeout_seconds", "0"),
    ("upstream_connect_timeout_seconds", "soon"),
    ("upstream_timeout_seconds", "-1"),
    ("default_markup_percent", "-5"),
    ("default_markup_percent", "12.345"),
    ("default_markup_percent", "NaN"),
    ("default_markup_percent", "Infinity"),
    ("default_markup_percent", "lots"),
    ("default_dialect", "perfectpanel"),
    ("currency", ""),
    ("currency", "DOLLARS-US"),
    ("sync_interval_seconds", "0"),
    ("services_ttl_seconds", "-10"),
    ("rate_limit_per_second", "-1"),
    ("max_body_bytes", "0"),
    ("max_body_bytes", "1MB"),
    ("max_ids_per_call", "101"),
    ("max_ids_per_call", "0"),
    ("admin_token", "a"),
    ("admin_token", "x" * 31),
]


@pytest.mark.parametrize(("name", "value"), INVALID)
def test_invalid_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_from_env(monkeypatch, **{name: value})
    message = str(caught.value)
    assert f"SMMGW_{name.upper()}" in message
    assert "\n" not in message
    # Only the bad setting is named: the others are fine.
    assert message.count("SMMGW_") == 1


def test_several_invalid_settings_are_all_named_on_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_from_env(monkeypatch, default_dialect="x", max_body_bytes="-1", currency="")
    message = str(caught.value)
    assert "\n" not in message
    for name in ("DEFAULT_DIALECT", "MAX_BODY_BYTES", "CURRENCY"):
        assert f"SMMGW_{name}" in message


def test_invalid_setting_from_a_dotenv_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("SMMGW_DEFAULT_DIALECT=klingon\n", encoding="utf-8")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "SMMGW_DEFAULT_DIALECT" in str(caught.value)


def test_a_bad_database_url_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    # The URL may carry a password: the message names the setting, not its value.
    with pytest.raises(SettingsError) as caught:
        load_from_env(monkeypatch, database_url="mysql://admin:hunter2secret@db.internal/x")
    assert "hunter2secret" not in str(caught.value)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.database_url.startswith("sqlite+aiosqlite:///")
    assert settings.is_sqlite
    assert settings.upstream_url == SMMMIX_API_URL
    assert settings.default_dialect == "standard"
    assert settings.default_markup_bp == 0
    assert settings.currency == "USD"
    assert settings.upstream_double_decode is None  # as the upstream's family does
    assert settings.upstream_family == "auto"
    assert settings.max_ids_per_call == 100


def test_valid_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_from_env(
        monkeypatch,
        upstream_url="http://127.0.0.1:9000/api/v2",
        upstream_key="k-123",
        default_markup_percent="12.5",
        default_dialect="smartpanel",
        currency="EUR",
        upstream_double_decode="false",
        upstream_timeout_seconds="2.5",
        max_body_bytes="2048",
    )
    assert settings.upstream_url == "http://127.0.0.1:9000/api/v2"
    assert settings.upstream_key == "k-123"
    assert settings.default_markup_percent == Decimal("12.5")
    assert settings.default_markup_bp == 1250
    assert settings.default_dialect == "smartpanel"
    assert settings.currency == "EUR"
    assert settings.upstream_double_decode is False
    assert settings.upstream_timeout_seconds == 2.5
    assert settings.max_body_bytes == 2048


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("postgres://app:pw@db.example:5432/gw", "postgresql+asyncpg://app:pw@db.example:5432/gw"),
        ("postgresql://app@127.0.0.1/gw", "postgresql+asyncpg://app@127.0.0.1/gw"),
        ("postgresql+asyncpg://app@127.0.0.1/gw", "postgresql+asyncpg://app@127.0.0.1/gw"),
        ("sqlite:///./gw.db", "sqlite+aiosqlite:///./gw.db"),
        ("sqlite:////var/lib/gw.db", "sqlite+aiosqlite:////var/lib/gw.db"),
        ("sqlite+aiosqlite:///gw.db", "sqlite+aiosqlite:///gw.db"),
    ],
)
def test_database_urls_are_normalised(
    monkeypatch: pytest.MonkeyPatch, given: str, normalised: str
) -> None:
    settings = load_from_env(monkeypatch, database_url=given)
    assert settings.database_url == normalised
    assert settings.is_sqlite == normalised.startswith("sqlite")


def test_admin_token_of_32_characters_or_blank(monkeypatch: pytest.MonkeyPatch) -> None:
    """Below 32 characters the token is refused at start-up (above); 32 is enough, and a blank
    one means the admin API is off, as when it is unset."""
    assert load_from_env(monkeypatch, admin_token="x" * 32).admin_token == "x" * 32
    assert load_from_env(monkeypatch, admin_token="   ").admin_token == ""


def test_a_short_admin_token_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError) as caught:
        load_from_env(monkeypatch, admin_token="hunter2")
    assert "hunter2" not in str(caught.value)
    assert "SMMGW_ADMIN_TOKEN" in str(caught.value) and "32" in str(caught.value)
