"""Settings: defaults, and refusals that name the variable to fix."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import pytest

from grace import errors
from grace.config import load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("GRACE_DATA_DIR", "GRACE_DATABASE_URL", "GRACE_HOST", "GRACE_PORT", "GRACE_MASTER_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    settings = load_settings()
    assert settings.data_dir == tmp_path / "grace"
    assert settings.database_url == f"sqlite:///{tmp_path / 'grace' / 'grace.db'}"
    assert (settings.host, settings.port, settings.backend) == ("127.0.0.1", 8000, "sqlite")


def test_environment_is_read_with_the_grace_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRACE_DATABASE_URL", "postgresql://grace@db.internal/grace")
    monkeypatch.setenv("GRACE_PORT", "9000")
    settings = load_settings()
    assert settings.backend == "postgresql" and settings.port == 9000
    assert settings.async_database_url == "postgresql+asyncpg://grace@db.internal/grace"


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("GRACE_MASTER_KEY", "changeme", "placeholder"),
        ("GRACE_MASTER_KEY", "<your-master-key>", "placeholder"),
        ("GRACE_MASTER_KEY", base64.b64encode(b"too short").decode(), "32 random bytes"),
        ("GRACE_BOOTSTRAP_TOKEN", "your-token-here", "placeholder"),
        ("GRACE_BOOTSTRAP_TOKEN", "short", "at least 24"),
        ("GRACE_BOOTSTRAP_TOKEN", "a token with spaces, long enough", "letters, digits"),
        ("GRACE_MASTER_PASSPHRASE", "short phrase", "at least 16"),
        ("GRACE_PORT", "99999", "less than or equal"),
        ("GRACE_PORT", "eighty", "integer"),
        ("GRACE_DATABASE_URL", "mysql://x/y", "sqlite:/// or postgresql://"),
        ("GRACE_LOG_LEVEL", "LOUD", "DEBUG, INFO"),
        ("GRACE_EVENT_LOOP", "tokio", "'asyncio' or 'uvloop'"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(errors.ConfigurationError) as refused:
        load_settings()
    assert variable in refused.value.message and fragment in refused.value.message
    if variable in {"GRACE_MASTER_KEY", "GRACE_BOOTSTRAP_TOKEN", "GRACE_MASTER_PASSPHRASE"}:
        assert value not in refused.value.message


def test_a_real_master_key_is_accepted_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    monkeypatch.setenv("GRACE_MASTER_KEY", key)
    settings = load_settings()
    assert settings.master_key is not None and settings.master_key.get_secret_value() == key
    assert key not in repr(settings) and key not in str(settings.master_key)
