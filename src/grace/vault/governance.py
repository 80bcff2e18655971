"""The governance policy: declarative rules that high- and critical-risk consents must pass.

A policy is JSON (or TOML) like::

    {
      "default": "allow",
      "rules": [
        {"name": "github pushes in working hours", "effect": "allow",
         "services": ["github"], "actions": ["git_push", "read_*"],
         "hours_utc": "07:00-20:00", "weekdays": ["mon", "tue", "wed", "thu", "fri"]},
        {"name": "no deletions", "effect": "deny", "actions": ["delete*"]}
      ]
    }

Rules are read in order; the first that applies decides. Selectors
(``services``, ``agents``, ``risk``, ``secret_types``) are lists of glob
patterns; a rule without a selector matches everything for it.

- An ``allow`` rule applies when its selectors match; it then allows only the
  listed ``actions`` inside its time window (``hours_utc``, ``weekdays``) and
  denies everything else. This is how "allowed actions per service" is said.
- A ``deny`` rule applies when its selectors, ``actions`` and time window all
  match, and denies.

When no rule applies, ``default`` decides (``allow`` unless the file says otherwise).
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time
from pathlib import Path
from typing import Any

from grace import errors
from grace.clock import ensure_utc

__all__ = ["Decision", "Policy", "Request", "Rule", "load_policy"]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")


@dataclass(frozen=True)
class Request:
    """What the policy judges: who wants which secret for what, and when."""

    service: str
    action: str
    agent: str
    risk: str
    secret_type: str
    at: datetime


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "rule": self.rule, "reason": self.reason}


def _patterns(raw: Mapping[str, Any], key: str, name: str) -> tuple[str, ...]:
    value = raw.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise errors.InvalidInput(f"governance rule {name!r}: {key} must be a list of patterns")
    return tuple(v.lower() for v in value)


def _matches(patterns: Sequence[str], value: str) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(value.lower(), p) for p in patterns)


@dataclass(frozen=True)
class Rule:
    name: str
    effect: str
    services: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()
    risk: tuple[str, ...] = ()
    secret_types: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    hours: tuple[time, time] | None = None
    weekdays: tuple[int, ...] = ()

    @classmethod
    def parse(cls, raw: Any, index: int) -> Rule:
        if not isinstance(raw, Mapping):
            raise errors.InvalidInput(f"governance rule {index} must be a table of fields")
        name = str(raw.get("name") or f"rule {index + 1}")
        known = {"name", "effect", "services", "agents", "risk", "secret_types", "actions", "hours_utc", "weekdays"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise errors.InvalidInput(f"governance rule {name!r}: unknown fields {unknown}")
        effect = str(raw.get("effect", "")).lower()
        if effect not in {"allow", "deny"}:
            raise errors.InvalidInput(f"governance rule {name!r}: effect must be 'allow' or 'deny'")
        hours = None
        if raw.get("hours_utc"):
            found = _HOURS.match(str(raw["hours_utc"]))
            if not found or int(found[1]) > 23 or int(found[3]) > 24 or int(found[2]) > 59 or int(found[4]) > 59:
                raise errors.InvalidInput(f"governance rule {name!r}: hours_utc is 'HH:MM-HH:MM', e.g. '08:00-18:00'")
            end = time(0, 0) if int(found[3]) == 24 else time(int(found[3]), int(found[4]))
            hours = (time(int(found[1]), int(found[2])), end)
        days = _patterns(raw, "weekdays", name)
        if any(d not in WEEKDAYS for d in days):
            raise errors.InvalidInput(f"governance rule {name!r}: weekdays are {', '.join(WEEKDAYS)}")
        return cls(
            name=name,
            effect=effect,
            services=_patterns(raw, "services", name),
            agents=_patterns(raw, "agents", name),
            risk=_patterns(raw, "risk", name),
            secret_types=_patterns(raw, "secret_types", name),
            actions=_patterns(raw, "actions", name),
            hours=hours,
            weekdays=tuple(WEEKDAYS.index(d) for d in days),
        )

    def selects(self, request: Request) -> bool:
        return (
            _matches(self.services, request.service)
            and _matches(self.agents, request.agent)
            and _matches(self.risk, request.risk)
            and _matches(self.secret_types, request.secret_type)
        )

    def in_window(self, at: datetime) -> bool:
        at = ensure_utc(at)
        if self.weekdays and at.weekday() not in self.weekdays:
            return False
        if self.hours is None:
            return True
        start, end = self.hours
        now = at.time()
        if start < end or end == time(0, 0):
            return start <= now and (end == time(0, 0) or now < end)
        return now >= start or now < end  # a window across midnight


@dataclass(frozen=True)
class Policy:
    """An ordered list of rules and a default decision."""

    rules: tuple[Rule, ...] = ()
    default: str = "allow"
    source: str = "built-in"

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "inline") -> Policy:
        if not isinstance(raw, Mapping):
            raise errors.InvalidInput("a governance policy is a table with 'default' and 'rules'")
        default = str(raw.get("default", "allow")).lower()
        if default not in {"allow", "deny"}:
            raise errors.InvalidInput("a governance policy's default must be 'allow' or 'deny'")
        rules = raw.get("rules", [])
        if not isinstance(rules, list):
            raise errors.InvalidInput("a governance policy's rules must be a list")
        return cls(tuple(Rule.parse(r, i) for i, r in enumerate(rules)), default, source)

    def evaluate(self, request: Request) -> Decision:
        """Return the decision of the first rule that applies, or the default."""
        action = request.action.lower()
        for rule in self.rules:
            if not rule.selects(request):
                continue
            if rule.effect == "deny":
                if _matches(rule.actions, action) and rule.in_window(request.at):
                    return Decision(False, rule.name, f"denied by governance rule {rule.name!r}")
                continue
            if not _matches(rule.actions, action):
                return Decision(False, rule.name, f"action {request.action!r} is not allowed by rule {rule.name!r}")
            if not rule.in_window(request.at):
                return Decision(False, rule.name, f"outside the time window of rule {rule.name!r}")
            return Decision(True, rule.name, f"allowed by governance rule {rule.name!r}")
        allowed = self.default == "allow"
        return Decision(allowed, "default", f"policy default ({self.default}) from {self.source}")


def load_policy(path: Path | None) -> Policy:
    """Read the policy file (``.json`` or ``.toml``); no file means the built-in allow-by-default policy."""
    if path is None:
        return Policy()
    try:
        text = path.read_text()
    except OSError as exc:
        raise errors.ConfigurationError(f"GRACE_VAULT_POLICY_FILE: cannot read {path} ({exc.strerror})") from None
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise errors.ConfigurationError(f"GRACE_VAULT_POLICY_FILE: {path} is not valid: {exc}") from None
    try:
        return Policy.from_dict(raw, source=str(path))
    except errors.InvalidInput as exc:
        raise errors.ConfigurationError(f"GRACE_VAULT_POLICY_FILE: {exc.message}") from None
