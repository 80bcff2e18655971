"""The intents' settings, read from ``GRACE_INTENTS_*`` environment variables (see docs/intents.md)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from grace.config import configuration_error

__all__ = ["IntentsConfig", "load_config"]

ENV_PREFIX = "GRACE_INTENTS_"


class IntentsConfig(BaseSettings):
    """How often the sweep runs, and how old a pending intent must be before it is taken for lost."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # A pending intent younger than this may still be in the middle of its submission (another process).
    recover_after_seconds: float = Field(default=60.0, gt=0, le=86400)
    sweep_seconds: float = Field(default=30.0, gt=0, le=86400)


def load_config(**overrides: Any) -> IntentsConfig:
    """Read the intents' settings from the environment (and ``overrides``)."""
    try:
        return IntentsConfig(**overrides)
    except ValidationError as exc:
        raise configuration_error(exc, ENV_PREFIX) from None
