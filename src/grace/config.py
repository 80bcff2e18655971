"""Grace's settings: one typed object read from ``GRACE_*`` environment variables.

Nothing reads the environment at import time; :func:`load_settings` is called by
the composition root, the CLI and tests, and turns every invalid value into a
:class:`~grace.errors.ConfigurationError` that names the variable to fix.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Callable
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from grace import errors

__all__ = ["Settings", "configuration_error", "default_data_dir", "load_settings"]

ENV_PREFIX = "GRACE_"

_PLACEHOLDERS = re.compile(
    r"^(?:change[-_ ]?me.*|changeit|secret|password|passw0rd|placeholder|todo|tbd|xxx+|"
    r"example|test|dummy|default|none|null|your[-_ ].*|<.*>|\$\{.*\}|\.\.\.)$",
    re.IGNORECASE,
)


def default_data_dir() -> Path:
    """Return the per-user data directory (XDG data home, or ``~/.local/share``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "grace"


def _refuse_placeholder(value: str) -> None:
    if _PLACEHOLDERS.match(value.strip()) or len(set(value)) <= 2:
        raise ValueError("is a placeholder, not a real value")


# What each secret setting must be besides not a placeholder: a test of the value, and the rule it states.
_SECRET_RULES: dict[str, tuple[Callable[[str], bool], str]] = {
    "master_key": (
        lambda raw: len(_decode_key(raw)) == 32,
        "must be 32 random bytes, base64 or hex encoded (try: grace keys generate)",
    ),
    "master_passphrase": (
        lambda raw: len(raw) >= 16,
        "must be at least 16 characters (a long passphrase; it is stretched with Argon2id)",
    ),
    "bootstrap_token": (
        lambda raw: len(raw) >= 24 and re.fullmatch(r"[A-Za-z0-9_\-.~]+", raw) is not None,
        "must be at least 24 characters of letters, digits, '-', '_', '.' or '~'",
    ),
    "metrics_token": (
        lambda raw: len(raw) >= 24 and re.fullmatch(r"[A-Za-z0-9_\-.~]+", raw) is not None,
        "must be at least 24 characters of letters, digits, '-', '_', '.' or '~'",
    ),
}


class Settings(BaseSettings):
    """Grace's configuration; see docs/configuration.md for every variable."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    master_key: SecretStr | None = None
    master_key_file: Path | None = None
    master_passphrase: SecretStr | None = None
    vault_policy_file: Path | None = None
    vault_key_lifetime_days: int = Field(default=30, ge=8, le=3650)
    # Releases of one secret to one agent within a minute from which a request is a burst (an anomaly: a fresh
    # human consent, whatever standing consent the agent holds); 0: no burst check.
    vault_burst_per_minute: int = Field(default=10, ge=0)
    audit_anchor_path: Path | None = None
    bootstrap_token: SecretStr | None = None
    # The bearer token Prometheus scrapes GET /metrics with; without it only an admin may read them.
    metrics_token: SecretStr | None = None
    max_request_bytes: int = Field(default=1024 * 1024, ge=1024)
    voice_max_upload_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    voice_model_dir: Path | None = None
    # How notes and queries are embedded: all-MiniLM-L6-v2 with int8 weights on onnxruntime (the
    # default, 2.5 times faster per query) or the same model on torch through sentence-transformers.
    voice_embedder: Literal["minilm-int8", "minilm"] = "minilm-int8"
    # Where `grace serve` and the API find playbooks (*.yaml); relative to the working directory.
    playbooks_dir: Path = Path("playbooks")
    # Whether a serving process runs the playbook scheduler (cron and bus-event triggers).
    playbooks_scheduler: bool = True
    bus_retention_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    session_ttl_seconds: int = Field(default=12 * 3600, ge=60)
    login_max_failures: int = Field(default=5, ge=1)
    login_window_seconds: int = Field(default=300, ge=1)
    login_client_max_failures: int = Field(default=100, ge=1)
    # Proxies whose X-Forwarded-For is believed (addresses or networks); none by default.
    trusted_proxies: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = ()
    cookie_secure: bool = False
    # How long a process keeps a resolved bearer token (0: read its rows on every request). A revocation
    # or a disabled user empties it at once on every node (auth/tokencache.py); this bounds only a
    # missed notification.
    token_cache_seconds: float = Field(default=10.0, ge=0, le=300)
    log_level: str = "INFO"
    log_json: bool = True
    # The event loop `grace serve` runs on. uvloop's own server left new connections in the kernel's accept
    # queue for up to 2 s under load (GET /health p99 0.7-2.8 s at 200 connections), so on uvloop Grace
    # accepts them itself (api/eventloop.py), as asyncio's loop does. uvloop spends less CPU per task
    # submission on SQLite (docs/architecture.md, "The edge's CPU and its tail").
    event_loop: Literal["asyncio", "uvloop"] = "asyncio"

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(("sqlite", "postgresql", "postgres://")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value

    @field_validator(*_SECRET_RULES)
    @classmethod
    def _check_secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value()
        _refuse_placeholder(raw)
        accepts, rule = _SECRET_RULES[str(info.field_name)]
        if not accepts(raw):
            raise ValueError(rule)
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        try:
            return tuple(ip_network(part.strip(), strict=False) for part in value.split(",") if part.strip())
        except ValueError:
            raise ValueError(
                "must be IP addresses or networks separated by commas (e.g. 127.0.0.1,10.0.0.0/8)"
            ) from None

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return upper

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.data_dir / 'grace.db'}")
        return self

    @property
    def async_database_url(self) -> str:
        """Return the SQLAlchemy URL with the async driver for this backend."""
        return to_async_url(self.database_url)

    @property
    def audit_anchor_file(self) -> Path:
        """Return where the audit log's signed anchor is kept (``audit-anchor.json`` in the data directory)."""
        return self.audit_anchor_path or self.data_dir / "audit-anchor.json"

    @property
    def backend(self) -> str:
        """Return ``"sqlite"`` or ``"postgresql"``."""
        return "sqlite" if self.database_url.startswith("sqlite") else "postgresql"

    def __repr__(self) -> str:
        return (
            f"Settings(data_dir={str(self.data_dir)!r}, backend={self.backend!r}, host={self.host!r}, port={self.port})"
        )


def _decode_key(raw: str) -> bytes:
    raw = raw.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", raw):
        return bytes.fromhex(raw)
    try:
        return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        return b""


def to_async_url(url: str) -> str:
    """Map a user-facing database URL to the async driver SQLAlchemy uses."""
    for prefix in ("postgresql+asyncpg://", "sqlite+aiosqlite://"):
        if url.startswith(prefix):
            return url
    if url.startswith(("postgres://", "postgresql://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url.split("://", 1)[1]
    raise errors.ConfigurationError(f"GRACE_DATABASE_URL: unsupported database URL scheme in {url.split(':', 1)[0]!r}")


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment (and ``overrides``), naming any bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise configuration_error(exc, ENV_PREFIX) from None


def configuration_error(exc: ValidationError, prefix: str) -> errors.ConfigurationError:
    """Turn a settings validation error into one message that names each bad variable."""
    problems = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "settings"
        message = str(err["msg"]).removeprefix("Value error, ")
        problems.append(f"{prefix}{field.upper()} {message}")
    return errors.ConfigurationError("; ".join(problems), details=problems)
