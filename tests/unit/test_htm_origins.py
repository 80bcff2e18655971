"""Origin tagging, shares, settings and the validation of a submission."""

from __future__ import annotations

from typing import Any

import pytest

from grace import errors
from grace.htm import config, origins
from grace.htm.origins import Origin
from grace.htm.tasks import Priority, TaskRequest


def tag(**kwargs: object) -> tuple[Origin, str]:
    base: dict[str, object] = {
        "explicit": None,
        "payload": {},
        "intent_id": None,
        "creator_agent": None,
        "creator_is_user": True,
    }
    base.update(kwargs)
    return origins.tag_origin(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("from_filesystem_trigger", Origin.FILESYSTEM_TRIGGER),
        ("from_hunter_alert", Origin.HUNTER_ALERT),
        ("from_scheduler", Origin.SCHEDULER),
        ("from_webhook", Origin.EXTERNAL_API),
        ("from_remediation", Origin.REMEDIATION),
    ],
)
def test_payload_flags_tag_the_origin_and_the_rule_is_recorded(flag: str, expected: Origin) -> None:
    assert tag(payload={flag: True, "files": ["a"]}) == (expected, f"payload.{flag}")


def test_tagging_precedence_explicit_then_flags_then_intent_then_creator() -> None:
    assert tag(explicit="scheduler", payload={"from_hunter_alert": True}) == (Origin.SCHEDULER, "explicit")
    assert tag(payload={"from_hunter_alert": True}, intent_id="int_1") == (
        Origin.HUNTER_ALERT,
        "payload.from_hunter_alert",
    )
    assert tag(intent_id="int_1") == (Origin.INTENT, "intent_id")
    assert tag(creator_agent="file_watcher") == (Origin.FILESYSTEM_TRIGGER, "creator.agent:file_watcher")
    assert tag(creator_agent="code_agent") == (Origin.EXTERNAL_API, "creator.agent")
    assert tag() == (Origin.USER_REQUEST, "creator.user")
    assert tag(creator_is_user=False) == (Origin.INTERNAL, "creator.system")


def test_a_flag_must_be_true_not_merely_present() -> None:
    assert tag(payload={"from_scheduler": "yes"}) == (Origin.USER_REQUEST, "creator.user")


def test_unknown_origin_names_the_valid_values() -> None:
    with pytest.raises(errors.InvalidInput) as caught:
        origins.parse_origin("marketing")
    assert "user_request" in caught.value.message and "filesystem" in caught.value.message
    assert caught.value.details == {"valid": [o.value for o in Origin]}


def test_unknown_priority_names_the_valid_values() -> None:
    with pytest.raises(errors.InvalidInput, match="critical, high, normal, low"):
        Priority.parse("urgent")


def test_quota_is_the_share_of_capacity_rounded_up_and_at_least_one() -> None:
    weights = origins.weights_from_shares(origins.DEFAULT_SHARES)
    total = sum(weights.values())
    assert origins.max_concurrent(weights[Origin.USER_REQUEST], total, 50) == 15  # the seed's 12/15
    assert origins.max_concurrent(weights[Origin.FILESYSTEM_TRIGGER], total, 100) == 5  # the seed's "2/5"
    assert origins.max_concurrent(weights[Origin.INTERNAL], total, 8) == 1
    assert origins.max_concurrent(weights[Origin.HUNTER_ALERT], total, 16) == 3  # 2.4 slots: never capped below


def test_shares_are_configurable_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRACE_HTM_SHARES", "user_request=40,internal=5")
    monkeypatch.setenv("GRACE_HTM_BURST_OVERRIDES", "filesystem=20")
    cfg = config.load_config()
    assert cfg.shares[Origin.USER_REQUEST] == 0.40 and cfg.shares[Origin.INTERNAL] == 0.05
    assert cfg.shares[Origin.INTENT] == 0.25  # the rest keep their defaults
    assert cfg.burst_limit(Origin.FILESYSTEM_TRIGGER) == 20
    assert cfg.burst_limit(Origin.USER_REQUEST) == cfg.burst_per_minute


def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRACE_HTM_SHARES", "marketing=10")
    with pytest.raises(errors.ConfigurationError, match="GRACE_HTM_SHARES unknown origin 'marketing'"):
        config.load_config()
    monkeypatch.delenv("GRACE_HTM_SHARES")
    monkeypatch.setenv("GRACE_HTM_LEASE_SECONDS", "0")
    with pytest.raises(errors.ConfigurationError, match="GRACE_HTM_LEASE_SECONDS"):
        config.load_config()


def build(task_type: str = "htm.noop", **kwargs: object) -> TaskRequest:
    return TaskRequest.build(task_type, max_payload_bytes=1024, **kwargs)  # type: ignore[arg-type]


def test_payload_over_the_limit_is_refused_with_its_size() -> None:
    with pytest.raises(errors.PayloadTooLarge, match="limit is 1024") as caught:
        build(payload={"blob": "x" * 2000})
    assert caught.value.details["limit_bytes"] == 1024


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task_type": "Bad Type!"}, "task_type"),
        ({"sla_ms": 0}, "sla_ms"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"timeout_seconds": -1.0}, "timeout_seconds"),
        ({"intent_id": "no spaces allowed"}, "intent_id"),
        ({"data_size_bytes": -5}, "data_size_bytes"),
        ({"payload": {"x": float("nan")}}, "JSON"),
    ],
)
def test_bad_fields_are_refused_by_name(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(errors.InvalidInput, match=message):
        build(**kwargs)
