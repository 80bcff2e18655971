"""Risk levels from the seed, and the declarative governance policy."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from grace import errors
from grace.vault import governance, risk
from grace.vault.keyring import next_scheduled_rotation

WEDNESDAY_NOON = datetime(2026, 1, 7, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kind", "level"),
    [
        ("api_key", "medium"),
        ("password", "high"),
        ("oauth_token", "high"),
        ("ssh_key", "critical"),
        ("certificate", "critical"),
    ],
)
def test_risk_follows_the_seed(kind: str, level: str) -> None:
    assert risk.effective_risk(risk.SecretType.parse(kind), None).value == level


def test_risk_may_be_raised_never_lowered() -> None:
    assert risk.effective_risk(risk.SecretType.API_KEY, "critical") is risk.RiskLevel.CRITICAL
    with pytest.raises(errors.InvalidInput, match="never lowered"):
        risk.effective_risk(risk.SecretType.PASSWORD, "medium")
    with pytest.raises(errors.InvalidInput, match="unknown secret type"):
        risk.SecretType.parse("bitcoin_wallet")


def test_api_keys_rotate_weekly_by_default() -> None:
    assert risk.default_rotation_days(risk.SecretType.API_KEY) == 7
    assert risk.default_rotation_days(risk.SecretType.PASSWORD) is None


def test_read_only_actions() -> None:
    assert risk.is_read_only("read") and risk.is_read_only("list_repos")
    assert not risk.is_read_only("git_push") and not risk.is_read_only("readme_write".replace("readme", "write"))


def _request(**overrides: object) -> governance.Request:
    values: dict[str, object] = {
        "service": "github",
        "action": "git_push",
        "agent": "code_agent",
        "risk": "high",
        "secret_type": "oauth_token",
        "at": WEDNESDAY_NOON,
    }
    values.update(overrides)
    return governance.Request(**values)  # type: ignore[arg-type]


POLICY = governance.Policy.from_dict(
    {
        "default": "deny",
        "rules": [
            {"name": "no deletes", "effect": "deny", "actions": ["delete*"]},
            {
                "name": "github in working hours",
                "effect": "allow",
                "services": ["github"],
                "actions": ["git_push", "read_*"],
                "hours_utc": "08:00-18:00",
                "weekdays": ["mon", "tue", "wed", "thu", "fri"],
            },
            {"name": "night jobs", "effect": "allow", "services": ["backup"], "hours_utc": "22:00-06:00"},
        ],
    }
)


def test_allowed_actions_per_service_and_time_windows() -> None:
    assert POLICY.evaluate(_request()).allowed
    refused = POLICY.evaluate(_request(action="force_push"))
    assert not refused.allowed and refused.rule == "github in working hours"
    assert not POLICY.evaluate(_request(at=WEDNESDAY_NOON.replace(hour=20))).allowed
    assert not POLICY.evaluate(_request(at=datetime(2026, 1, 10, 12, tzinfo=UTC))).allowed  # a Saturday
    assert not POLICY.evaluate(_request(action="delete_repo")).allowed
    assert POLICY.evaluate(_request(service="backup", action="upload", at=WEDNESDAY_NOON.replace(hour=23))).allowed
    assert not POLICY.evaluate(_request(service="backup", action="upload")).allowed
    assert POLICY.evaluate(_request(service="gitlab")).rule == "default"


def test_policy_files_are_checked(tmp_path: Path) -> None:
    good = tmp_path / "policy.json"
    good.write_text(json.dumps({"rules": [{"effect": "allow", "services": ["x"]}]}))
    assert governance.load_policy(good).rules[0].services == ("x",)
    toml = tmp_path / "policy.toml"
    toml.write_text('default = "deny"\n[[rules]]\nname = "a"\neffect = "allow"\nactions = ["read"]\n')
    assert governance.load_policy(toml).default == "deny"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rules": [{"effect": "maybe"}]}))
    with pytest.raises(errors.ConfigurationError, match="effect"):
        governance.load_policy(bad)
    bad.write_text(json.dumps({"rules": [{"effect": "allow", "hours_utc": "9-5"}]}))
    with pytest.raises(errors.ConfigurationError, match="hours_utc"):
        governance.load_policy(bad)
    bad.write_text(json.dumps({"rules": [{"effect": "allow", "colour": "red"}]}))
    with pytest.raises(errors.ConfigurationError, match="unknown fields"):
        governance.load_policy(bad)


def test_key_rotation_is_weekly_on_sunday_at_two_utc() -> None:
    assert next_scheduled_rotation(WEDNESDAY_NOON) == datetime(2026, 1, 11, 2, 0, tzinfo=UTC)
    sunday_two = datetime(2026, 1, 11, 2, 0, tzinfo=UTC)
    assert next_scheduled_rotation(sunday_two) == datetime(2026, 1, 18, 2, 0, tzinfo=UTC)
    assert next_scheduled_rotation(sunday_two.replace(hour=1)) == sunday_two
