"""The task manager's settings, read from ``GRACE_HTM_*`` environment variables.

Kept beside the capability (rather than in ``grace.config``) so the platform's
settings object need not know every capability; :func:`load_config` names the
variable to fix, as ``grace.config.load_settings`` does.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from grace import errors
from grace.config import configuration_error
from grace.htm.origins import DEFAULT_SHARES, Origin, parse_origin

__all__ = ["HTMConfig", "load_config"]

ENV_PREFIX = "GRACE_HTM_"
PRIORITY_NAMES = ("critical", "high", "normal", "low")
MAX_SLA_MS = 30 * 24 * 3600 * 1000


class HTMConfig(BaseSettings):
    """Shares, limits and timings of the task manager; see docs/htm.md."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    shares: Annotated[dict[Origin, float], NoDecode] = Field(default_factory=lambda: dict(DEFAULT_SHARES))
    burst_per_minute: int = Field(default=600, ge=0)
    burst_overrides: Annotated[dict[Origin, int], NoDecode] = Field(default_factory=dict)
    capacity: int = Field(default=0, ge=0)
    concurrency: int = Field(default=4, ge=1, le=1024)
    claim_batch: int = Field(default=16, ge=1, le=1000)
    embedded_workers: bool = True
    lease_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=100)
    retry_base_seconds: float = Field(default=2.0, gt=0)
    retry_max_seconds: float = Field(default=300.0, gt=0)
    timeout_seconds: float = Field(default=600.0, gt=0)
    max_payload_bytes: int = Field(default=64 * 1024, ge=256)
    defer_seconds: float = Field(default=5.0, gt=0)
    poll_seconds: float = Field(default=1.0, gt=0)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    events: bool = True
    sla_enabled: bool = True
    sla_tick_seconds: float = Field(default=1.0, gt=0, le=3600)
    sla_stats_seconds: float = Field(default=60.0, gt=0)
    sla_window_seconds: float = Field(default=86400.0, gt=0, le=30 * 86400)
    # SLA in ms for a task submitted without sla_ms, by "type:priority", "type" or "priority" (the first
    # that matches): "critical=60000,voice.transcribe=600000,voice.transcribe:high=300000".
    default_sla_ms: Annotated[dict[str, int], NoDecode] = Field(default_factory=dict)
    # The dashboard (grace/htm/dashboard.py, rollups.py): how often finished tasks are rolled up, how
    # long after finishing they are (so a slow commit is not missed), and how long finished rows stay.
    rollup_seconds: float = Field(default=60.0, gt=0, le=3600)
    rollup_settle_seconds: float = Field(default=30.0, ge=0, le=3600)
    retention_days: float = Field(default=30.0, ge=0, le=3650)
    # Health: each figure against a degraded and a failing threshold (see docs/htm.md, "Dashboard").
    health_window_hours: int = Field(default=1, ge=1, le=720)
    health_compliance_degraded: float = Field(default=0.95, ge=0, le=1)
    health_compliance_failing: float = Field(default=0.80, ge=0, le=1)
    health_failure_rate_degraded: float = Field(default=0.05, ge=0, le=1)
    health_failure_rate_failing: float = Field(default=0.25, ge=0, le=1)
    health_violations_degraded: int = Field(default=0, ge=0)
    health_violations_failing: int = Field(default=10, ge=0)
    health_queue_depth_degraded: int = Field(default=1000, ge=0)
    health_queue_depth_failing: int = Field(default=10000, ge=0)
    health_queue_wait_degraded_seconds: float = Field(default=60.0, ge=0)
    health_queue_wait_failing_seconds: float = Field(default=600.0, ge=0)

    @field_validator("shares", mode="before")
    @classmethod
    def _parse_shares(cls, value: Any) -> Any:
        parsed = _origin_mapping(value, float)
        merged = dict(DEFAULT_SHARES)
        merged.update(parsed)
        if any(v < 0 for v in merged.values()) or sum(merged.values()) <= 0:
            raise ValueError("shares must be zero or more, and not all zero")
        return merged

    @field_validator("burst_overrides", mode="before")
    @classmethod
    def _parse_bursts(cls, value: Any) -> Any:
        parsed = _origin_mapping(value, int)
        if any(v < 0 for v in parsed.values()):
            raise ValueError("a burst limit is a number of tasks per minute (0 for no limit)")
        return parsed

    @field_validator("default_sla_ms", mode="before")
    @classmethod
    def _parse_default_slas(cls, value: Any) -> Any:
        if isinstance(value, dict):
            items = list(value.items())
        elif isinstance(value, str):
            items = []
            for part in value.split(","):
                if not part.strip():
                    continue
                key, sep, number = part.partition("=")
                if not sep:
                    raise ValueError(f"expected type:priority=ms, type=ms or priority=ms, got {part.strip()!r}")
                items.append((key, number))
        else:
            raise ValueError("expected name=ms pairs separated by commas")
        out: dict[str, int] = {}
        for key, number in items:
            name = str(key).strip()
            task_type, _, priority = name.rpartition(":") if ":" in name else ("", "", "")
            if priority and priority not in PRIORITY_NAMES:
                raise ValueError(f"{name}: {priority!r} is not a priority ({', '.join(PRIORITY_NAMES)})")
            if not name or (":" in name and not task_type):
                raise ValueError(f"{name!r} names no task type")
            try:
                ms = int(number)
            except (TypeError, ValueError):
                raise ValueError(f"{name}: {number!r} is not a whole number of milliseconds") from None
            if not 0 < ms <= MAX_SLA_MS:
                raise ValueError(f"{name}: an SLA is between 1 ms and 30 days")
            out[name] = ms
        return out

    def default_sla(self, task_type: str, priority: str) -> int | None:
        """Return the SLA in ms for a task submitted without one: by type and priority, by type, then by priority."""
        slas = self.default_sla_ms
        if not slas:
            return None
        for key in (f"{task_type}:{priority}", task_type, priority):
            if key in slas:
                return slas[key]
        return None

    def burst_limit(self, origin: Origin) -> int:
        """Return how many tasks of ``origin`` may start routing per minute."""
        return self.burst_overrides.get(origin, self.burst_per_minute)


def _origin_mapping(value: Any, kind: type[float] | type[int]) -> dict[Origin, Any]:
    """Accept a mapping or ``"user_request=30,internal=2"`` (percent when any value exceeds 1)."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, str) and value.strip().startswith("{"):
        try:
            items = list(json.loads(value).items())
        except (ValueError, AttributeError):
            raise ValueError("is not a JSON object of origin: value") from None
    elif isinstance(value, str):
        items = []
        for part in value.split(","):
            if not part.strip():
                continue
            name, sep, number = part.partition("=")
            if not sep:
                raise ValueError(f"expected origin=value, got {part.strip()!r}")
            items.append((name, number))
    else:
        raise ValueError("expected origin=value pairs separated by commas")
    out: dict[Origin, Any] = {}
    for name, number in items:
        try:
            origin = name if isinstance(name, Origin) else parse_origin(str(name))
        except errors.InvalidInput as exc:
            raise ValueError(exc.message) from None
        try:
            out[origin] = kind(number)
        except (TypeError, ValueError):
            raise ValueError(f"{origin.value}: {number!r} is not a number") from None
    if kind is float and any(v > 1 for v in out.values()):
        out = {k: v / 100 for k, v in out.items()}
    return out


def load_config(**overrides: Any) -> HTMConfig:
    """Read the task manager's settings from the environment (and ``overrides``)."""
    try:
        return HTMConfig(**overrides)
    except ValidationError as exc:
        raise configuration_error(exc, ENV_PREFIX) from None
