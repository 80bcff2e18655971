"""Consent on both databases: the flow, every refusal (each audited), single use, anomalies, fail-closed audit."""

from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy import select

from grace import errors
from grace.auth import Principal
from grace.bus import Event
from grace.clock import ManualClock
from grace.config import Settings
from grace.vault import AccessResult, AuditUnavailable, SecretInfo, governance
from grace.vault.tables import secret_consent_records, vault_audit
from tests import canary
from tests.vaultkit import Cast, audit_offline, make_cast

GITHUB_TOKEN = "ghp_" + "A1b2C3d4" * 4


async def _store(
    c: Cast, key: str = "github_token", kind: str = "api_key", value: str = GITHUB_TOKEN, **kw: object
) -> SecretInfo:
    return await c.vault.store(c.owner, key, value, secret_type=kind, service=kw.pop("service", "github"), **kw)  # type: ignore[arg-type]


async def _events(c: Cast, consent_id: str | None = None, outcome: str | None = None) -> list[str]:
    async with c.services.db.read() as conn:
        query = select(vault_audit.c.event, vault_audit.c.outcome, vault_audit.c.consent_id).order_by(vault_audit.c.seq)
        rows = (await conn.execute(query)).all()
    return [e for e, o, cid in rows if (consent_id is None or cid == consent_id) and (outcome is None or o == outcome)]


async def _status(c: Cast, consent_id: str) -> str:
    return (await c.vault.get_consent(consent_id)).status


async def _ask(
    c: Cast, key: str = "github_token", action: str = "git_push", who: Principal | None = None, **kw: object
) -> AccessResult:
    return await c.vault.access(who or c.agent, key, action=action, purpose="push code", wait_seconds=0, **kw)  # type: ignore[arg-type]


async def _published_request(c: Cast) -> Event:
    """Wait (however long a busy machine takes) until the request is stored and published."""
    sub = await c.services.bus.subscribe("secrets.consent.request", since=0).open()
    event = None
    while event is None:
        event = await sub.get(timeout=60)
    await sub.close()
    return event


async def test_the_seed_flow_request_publish_approve_release(cast: Cast) -> None:
    info = await _store(cast)
    assert info.risk_level == "medium" and info.masked.endswith(GITHUB_TOKEN[-4:]) and GITHUB_TOKEN not in repr(info)
    waiter = asyncio.create_task(
        cast.vault.request_consent(
            secret_key="github_token",
            secret_type="api_key",
            service="github",
            requested_by="code_agent",
            requested_for="push code to repository",
            requested_action="git_push",
            user_id=cast.owner.user_id,
            risk_level="medium",
            context={"repo": "grace_2", "branch": "main"},
            timeout_seconds=300,
        )
    )
    payload = (await _published_request(cast)).payload
    assert payload["service"] == "github" and payload["expires_in_seconds"] == 300 and payload["risk_level"] == "medium"
    assert payload["context"] == {"repo": "grace_2", "branch": "main"}
    await cast.vault.respond(cast.owner, payload["consent_id"], True)
    decision = await waiter
    assert decision and decision.approved
    result = await cast.vault.redeem(cast.agent, payload["consent_id"])
    assert result.approved and result.value is not None and result.value.reveal() == GITHUB_TOKEN
    assert GITHUB_TOKEN not in repr(result)
    assert (await cast.vault.secret(cast.owner, "github_token")).usage_count == 1
    events_seen = await _events(cast, payload["consent_id"])
    assert events_seen == ["consent.requested", "consent.approved", "secret.released"]


async def test_no_answer_by_the_timeout_means_deny(cast: Cast) -> None:
    await _store(cast)
    waiter = asyncio.create_task(
        cast.vault.request_consent(
            "github_token",
            secret_type="api_key",
            service="github",
            requested_by="code_agent",
            requested_for="push",
            requested_action="git_push",
            user_id=cast.owner.user_id,
            timeout_seconds=300,
        )
    )
    await _published_request(cast)  # stored, with its expiry, before the clock moves
    cast.clock.advance(301)
    decision = await waiter
    assert not decision and decision.status == "expired"
    assert "consent.expired" in await _events(cast, decision.consent_id)


async def test_answering_after_expiry_is_refused_and_audited(cast: Cast) -> None:
    await _store(cast)
    pending = await _ask(cast)
    assert pending.consent_id is not None
    assert pending.status == "pending" and pending.value is None
    cast.clock.advance(301)
    with pytest.raises(errors.Conflict, match="expired"):
        await cast.vault.respond(cast.owner, pending.consent_id, True)
    assert await _status(cast, pending.consent_id) == "expired"
    assert "consent.answer_refused" in await _events(cast, pending.consent_id, "refused")
    assert (await cast.vault.redeem(cast.agent, pending.consent_id)).status in {"denied", "expired"}


async def test_the_requesting_agent_cannot_approve(cast: Cast) -> None:
    await _store(cast)
    pending = await _ask(cast)
    assert pending.consent_id is not None
    with pytest.raises(errors.PermissionDenied, match="agent"):
        await cast.vault.respond(cast.agent, pending.consent_id, True)
    with pytest.raises(errors.PermissionDenied, match="agent"):
        await cast.vault.respond(cast.other_agent, pending.consent_id, True)
    assert await _status(cast, pending.consent_id) == "pending"
    assert (await _events(cast, pending.consent_id, "refused")).count("consent.answer_refused") == 2


async def test_only_a_principal_holding_the_consents_scope_answers_or_revokes(cast: Cast) -> None:
    await _store(cast)
    pending = await _ask(cast)
    assert pending.consent_id is not None
    # The owner's own token, narrowed to tasks: the vault refuses it even without the HTTP edge.
    _, token = await cast.services.accounts.create_token(cast.owner.user_id, scopes=["tasks", "secrets:ask"])
    narrowed = await cast.services.accounts.resolve_token(token)
    with pytest.raises(errors.PermissionDenied, match="'consents' scope"):
        await cast.vault.respond(narrowed, pending.consent_id, True)
    with pytest.raises(errors.PermissionDenied, match="'consents' scope"):
        await cast.vault.revoke_consent(narrowed, pending.consent_id)
    with pytest.raises(errors.PermissionDenied):
        await cast.vault.revoke_consent(cast.agent, pending.consent_id)
    assert await _status(cast, pending.consent_id) == "pending"
    assert (await _events(cast, pending.consent_id, "refused")).count("consent.revoke_refused") == 2
    await cast.vault.respond(cast.owner, pending.consent_id, True)
    assert await _status(cast, pending.consent_id) == "approved"


async def test_another_member_cannot_approve(cast: Cast) -> None:
    await _store(cast)
    pending = await _ask(cast)
    assert pending.consent_id is not None
    with pytest.raises(errors.PermissionDenied, match="owner"):
        await cast.vault.respond(cast.other, pending.consent_id, True)
    assert await _status(cast, pending.consent_id) == "pending"
    assert "consent.answer_refused" in await _events(cast, pending.consent_id, "refused")
    # Nor can they see it, redeem it or revoke it.
    with pytest.raises(errors.NotFound):
        await cast.vault.consent_for(cast.other, pending.consent_id)
    with pytest.raises(errors.NotFound):
        await cast.vault.revoke_consent(cast.other, pending.consent_id)
    # An admin may answer for the owner.
    record = await cast.vault.respond(cast.admin, pending.consent_id, False, reason="not today")
    assert record.status == "denied" and record.denial_reason == "not today"
    assert (await cast.vault.redeem(cast.agent, pending.consent_id)).status == "denied"


async def test_answering_twice_is_refused_and_changes_nothing(cast: Cast) -> None:
    await _store(cast)
    pending = await _ask(cast)
    assert pending.consent_id is not None
    await cast.vault.respond(cast.owner, pending.consent_id, False, reason="no")
    with pytest.raises(errors.Conflict, match="already denied"):
        await cast.vault.respond(cast.owner, pending.consent_id, True)
    record = await cast.vault.get_consent(pending.consent_id)
    assert record.status == "denied" and record.denial_reason == "no"


async def test_replaying_a_used_single_use_consent_is_denied(cast: Cast) -> None:
    await _store(cast)
    pending = await _ask(cast)
    assert pending.consent_id is not None
    await cast.vault.respond(cast.owner, pending.consent_id, True)
    first = await cast.vault.redeem(cast.agent, pending.consent_id)
    assert first.approved
    replay = await cast.vault.redeem(cast.agent, pending.consent_id)
    assert replay.status == "denied" and replay.value is None and "already used" in replay.reason
    # Another agent of the same owner cannot use it either.
    assert (await cast.vault.redeem(cast.other_agent, pending.consent_id)).status == "denied"
    assert (await _events(cast, pending.consent_id, "refused")).count("secret.access_denied") == 2
    assert (await cast.vault.secret(cast.owner, "github_token")).usage_count == 1


async def test_persistent_consent_covers_exactly_agent_secret_action(cast: Cast) -> None:
    await _store(cast)
    await _store(cast, "gitlab_token", service="gitlab")
    pending = await _ask(cast)
    assert pending.consent_id is not None
    await cast.vault.respond(cast.owner, pending.consent_id, True, persistent=True, idle_timeout_seconds=600)
    assert (await cast.vault.redeem(cast.agent, pending.consent_id)).approved
    again = await _ask(cast)
    assert again.approved and again.consent_id == pending.consent_id
    assert (await _ask(cast, action="git_pull")).status == "pending"
    assert (await _ask(cast, who=cast.other_agent)).status == "pending"
    assert (await _ask(cast, key="gitlab_token")).status == "pending"
    # Idle past the timeout: a fresh consent is needed.
    cast.clock.advance(601)
    assert (await _ask(cast)).status == "pending"


async def test_persistent_consent_has_a_hard_expiry(cast: Cast) -> None:
    await _store(cast)
    pending = await _ask(cast)
    assert pending.consent_id is not None
    await cast.vault.respond(cast.owner, pending.consent_id, True, persistent=True, valid_for_seconds=3600)
    for _ in range(5):
        cast.clock.advance(600)
        assert (await _ask(cast)).approved
    cast.clock.advance(601)
    assert (await _ask(cast)).status == "pending"


async def test_revoking_a_consent_blocks_the_next_use(cast: Cast) -> None:
    await _store(cast)
    pending = await _ask(cast)
    assert pending.consent_id is not None
    await cast.vault.respond(cast.owner, pending.consent_id, True, persistent=True)
    assert (await _ask(cast)).approved
    await cast.vault.revoke_consent(cast.owner, pending.consent_id, "changed my mind")
    blocked = await cast.vault.redeem(cast.agent, pending.consent_id)
    assert blocked.status == "denied" and blocked.value is None
    assert (await _ask(cast)).status == "pending"
    assert "consent.revoked" in await _events(cast, pending.consent_id)
    assert "secret.access_denied" in await _events(cast, pending.consent_id, "refused")
    with pytest.raises(errors.Conflict):
        await cast.vault.revoke_consent(cast.owner, pending.consent_id)


async def test_every_late_answer_raises_consent_already_answered(cast: Cast) -> None:
    await _store(cast)
    answered = await _ask(cast)
    assert answered.consent_id is not None
    await cast.vault.respond(cast.owner, answered.consent_id, True)
    with pytest.raises(errors.ConsentAlreadyAnswered, match="already approved"):
        await cast.vault.respond(cast.owner, answered.consent_id, False)

    raced = await _ask(cast)
    assert raced.consent_id is not None
    outcomes = await asyncio.gather(
        *(cast.vault.respond(cast.owner, raced.consent_id, approve) for approve in (True, False)),
        return_exceptions=True,
    )
    assert sum(isinstance(o, errors.ConsentAlreadyAnswered) for o in outcomes) == 1
    assert sum(not isinstance(o, BaseException) for o in outcomes) == 1

    late = await _ask(cast)
    assert late.consent_id is not None
    cast.clock.advance(301)
    with pytest.raises(errors.ConsentAlreadyAnswered, match="expired"):
        await cast.vault.respond(cast.owner, late.consent_id, True)


async def test_governance_judges_at_request_and_at_approval_with_one_shape_of_record(cast: Cast) -> None:
    await _store(cast, "gh_password", kind="password", value="correct horse battery staple")
    pending = await _ask(cast, key="gh_password", action="git_push")
    assert pending.consent_id is not None
    await cast.vault.respond(cast.owner, pending.consent_id, True)
    async with cast.services.db.read() as conn:
        rows = (
            await conn.execute(
                select(vault_audit.c.consent_id, vault_audit.c.details)
                .where(vault_audit.c.event == "governance.decision")
                .order_by(vault_audit.c.seq)
            )
        ).all()
    details = [json.loads(d) for _, d in rows]
    assert [d["stage"] for d in details] == ["request", "approval"]
    assert all(d["action"] == "git_push" and d["requested_by"] == "code_agent" and d["allowed"] for d in details)
    assert [cid for cid, _ in rows] == [None, pending.consent_id]


async def test_critical_needs_a_second_approver_and_is_single_use_under_a_race(cast: Cast) -> None:
    await _store(cast, "deploy_key", kind="ssh_key", value="-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END-----")
    pending = await _ask(cast, key="deploy_key", action="ssh_deploy")
    assert pending.consent_id is not None
    record = await cast.vault.respond(cast.owner, pending.consent_id, True, persistent=True)
    assert record.status == "pending" and record.awaiting_second_approval
    with pytest.raises(errors.PermissionDenied, match="operator or admin"):
        await cast.vault.respond(cast.other, pending.consent_id, True)
    with pytest.raises(errors.PermissionDenied):
        await cast.vault.respond(cast.owner, pending.consent_id, True)
    with pytest.raises(errors.PermissionDenied):
        await cast.vault.respond(cast.agent, pending.consent_id, True)
    assert (await cast.vault.pending(cast.operator))[0].consent_id == pending.consent_id
    record = await cast.vault.respond(cast.operator, pending.consent_id, True, persistent=True)
    assert record.status == "approved" and record.single_use and record.second_approved_by == "olga"

    results = await asyncio.gather(*(cast.vault.redeem(cast.agent, pending.consent_id) for _ in range(2)))
    assert sorted(r.status for r in results) == ["approved", "denied"]
    assert await _status(cast, pending.consent_id) == "consumed"
    released = await _events(cast, pending.consent_id)
    assert released.count("secret.released") == 1 and "secret.access_denied" in released


async def test_governance_denies_high_risk_outside_policy(cast: Cast) -> None:
    cast.vault.consents.policy = governance.Policy.from_dict(
        {"rules": [{"name": "github pushes only", "effect": "allow", "services": ["github"], "actions": ["git_push"]}]}
    )
    await _store(cast, "gh_password", kind="password", value="correct horse battery staple")
    refused = await _ask(cast, key="gh_password", action="delete_repo")
    assert refused.status == "denied" and "governance" in refused.reason
    allowed = await _ask(cast, key="gh_password", action="git_push")
    assert allowed.status == "pending"
    events = await _events(cast)
    assert events.count("governance.decision") == 2 and "consent.denied" in events


async def test_low_risk_read_only_approves_itself_and_is_audited(cast: Cast) -> None:
    await _store(cast, "weather_key", kind="other", value="weather-key-value-1234567890", service="weather")
    auto = await _ask(cast, key="weather_key", action="read_forecast")
    assert auto.approved and auto.value is not None
    assert (await cast.vault.get_consent(auto.consent_id or "")).auto_approved
    assert await _events(cast, auto.consent_id) == ["consent.auto_approved", "secret.released"]
    assert (await _ask(cast, key="weather_key", action="update_forecast")).status == "pending"


async def test_a_burst_forces_a_fresh_consent_and_publishes_an_anomaly(cast: Cast) -> None:
    await _store(cast)
    pending = await _ask(cast)
    assert pending.consent_id is not None
    await cast.vault.respond(cast.owner, pending.consent_id, True, persistent=True)
    assert (await cast.vault.redeem(cast.agent, pending.consent_id)).approved
    for _ in range(9):
        assert (await _ask(cast)).approved
    flagged = await _ask(cast)
    assert flagged.status == "pending" and "burst" in flagged.anomalies
    event = (await cast.services.bus.replay("secrets.anomaly", since=0))[0]
    assert event.payload["anomalies"] == ["burst"] and event.payload["requested_by"] == "code_agent"
    # The anomaly is audited with the fresh request it forced, one after the other (one transaction, one flush).
    assert (await _events(cast))[-2:] == ["secret.anomaly", "consent.requested"]
    assert (await _events(cast, flagged.consent_id)) == ["consent.requested"]


async def test_a_lapsed_newer_standing_consent_does_not_hide_an_older_one_still_in_force(cast: Cast) -> None:
    await _store(cast)
    older = await _ask(cast)
    assert older.consent_id is not None
    await cast.vault.respond(cast.owner, older.consent_id, True, persistent=True)  # no idle timeout
    assert (await cast.vault.redeem(cast.agent, older.consent_id)).approved
    for _ in range(9):
        assert (await _ask(cast)).approved
    newer = await _ask(cast)  # the burst forces a fresh consent beside the standing one
    assert newer.status == "pending" and newer.consent_id is not None
    await cast.vault.respond(cast.owner, newer.consent_id, True, persistent=True, idle_timeout_seconds=120)
    assert (await cast.vault.redeem(cast.agent, newer.consent_id)).approved
    cast.clock.advance(121)  # past the burst window; the newer consent has lapsed, idle
    again = await _ask(cast)
    assert again.approved and again.consent_id == older.consent_id
    assert (await _status(cast, newer.consent_id)) == "approved"


async def test_the_burst_threshold_is_a_setting(settings: Settings, clock: ManualClock) -> None:
    """GRACE_VAULT_BURST_PER_MINUTE: an agent that reads a secret often by design is let past the default 10."""
    cast = await make_cast(settings.model_copy(update={"vault_burst_per_minute": 30}), clock)
    try:
        await _store(cast)
        pending = await _ask(cast)
        assert pending.consent_id is not None
        await cast.vault.respond(cast.owner, pending.consent_id, True, persistent=True)
        for _ in range(30):
            assert (await _ask(cast)).approved
        flagged = await _ask(cast)
        assert flagged.status == "pending" and flagged.anomalies == ("burst",)
        cast.clock.advance(61)  # the minute has passed: the standing consent serves again
        assert (await _ask(cast)).approved
    finally:
        await canary.sweep(cast.services)
        await cast.services.close()


async def test_a_burst_threshold_of_0_checks_no_burst(settings: Settings, clock: ManualClock) -> None:
    cast = await make_cast(settings.model_copy(update={"vault_burst_per_minute": 0}), clock)
    try:
        await _store(cast)
        pending = await _ask(cast)
        assert pending.consent_id is not None
        await cast.vault.respond(cast.owner, pending.consent_id, True, persistent=True)
        for _ in range(40):
            assert (await _ask(cast)).approved
        new_action = await _ask(cast, action="git_fetch")  # the other anomalies are still checked
        assert new_action.status == "pending" and new_action.anomalies == ("first_time_action",)
    finally:
        await canary.sweep(cast.services)
        await cast.services.close()


async def test_first_time_action_and_unusual_hour_against_the_agents_baseline(cast: Cast) -> None:
    await _store(cast, "weather_key", kind="other", value="weather-key-value-1234567890", service="weather")
    for _ in range(20):
        assert (await _ask(cast, key="weather_key", action="read")).approved
        cast.clock.advance(120)
    new_action = await _ask(cast, key="weather_key", action="list")
    assert new_action.status == "pending" and new_action.anomalies == ("first_time_action",)
    cast.clock.advance(12 * 3600)  # the agent has only ever worked around midnight
    odd_hour = await _ask(cast, key="weather_key", action="read")
    assert odd_hour.status == "pending" and "unusual_hour" in odd_hour.anomalies


async def test_a_revoked_secret_is_never_released(cast: Cast) -> None:
    await _store(cast)
    pending = await _ask(cast)
    assert pending.consent_id is not None
    await cast.vault.respond(cast.owner, pending.consent_id, True)
    await cast.vault.revoke_secret(cast.owner, "github_token", reason="leaked")
    assert (await cast.vault.redeem(cast.agent, pending.consent_id)).status == "denied"
    assert (await _ask(cast)).status == "denied"
    info = (await cast.vault.list_secrets(cast.owner))[0]
    assert info.status == "revoked" and info.version == 1
    with pytest.raises(errors.Conflict):
        await cast.vault.revoke_secret(cast.owner, "github_token")
    assert "secret.revoked" in await _events(cast)


async def test_an_audit_write_failure_releases_nothing(cast: Cast) -> None:
    await _store(cast)
    pending = await _ask(cast)
    assert pending.consent_id is not None
    await cast.vault.respond(cast.owner, pending.consent_id, True)
    db = cast.services.db
    async with audit_offline(db):
        with pytest.raises(AuditUnavailable):
            await cast.vault.redeem(cast.agent, pending.consent_id)
        with pytest.raises(AuditUnavailable):
            await cast.vault.store(cast.owner, "other_token", "x" * 30, secret_type="api_key", service="x")
        record = await cast.vault.get_consent(pending.consent_id)
        assert record.status == "approved" and record.used_count == 0
        assert (await cast.vault.secret(cast.owner, "github_token")).usage_count == 0
        assert [s.key for s in await cast.vault.list_secrets(cast.owner)] == ["github_token"]
    assert "secret.released" not in await _events(cast, pending.consent_id)
    assert (await cast.vault.redeem(cast.agent, pending.consent_id)).approved


async def test_consent_records_keep_the_seed_schema(cast: Cast) -> None:
    await _store(cast)
    pending = await _ask(cast)
    async with cast.services.db.read() as conn:
        row = (
            (
                await conn.execute(
                    select(secret_consent_records).where(secret_consent_records.c.consent_id == pending.consent_id)
                )
            )
            .mappings()
            .one()
        )
    for column in (
        "secret_key",
        "secret_type",
        "service",
        "requested_by",
        "requested_for",
        "requested_action",
        "user_id",
        "consent_status",
        "risk_level",
        "single_use",
        "used_count",
        "governance_approval_required",
    ):
        assert column in row
    assert row["consent_status"] == "pending" and row["requested_by"] == "code_agent"


async def test_an_agent_of_the_same_name_under_another_users_token_gets_nothing(cast: Cast) -> None:
    await _store(cast)
    pending = await _ask(cast)
    assert pending.consent_id is not None
    await cast.vault.respond(cast.owner, pending.consent_id, True, persistent=True)
    assert (await cast.vault.redeem(cast.agent, pending.consent_id)).approved
    # An admin's token for an agent that is also called code_agent: neither the consent id nor the standing consent.
    _, token = await cast.services.accounts.create_token(cast.admin.user_id, agent="code_agent")
    admins_agent = await cast.services.accounts.resolve_token(token)
    taken = await cast.vault.redeem(admins_agent, pending.consent_id or "")
    assert taken.status == "denied" and taken.value is None
    fresh = await cast.vault.access(
        admins_agent, "github_token", action="git_push", user_id=cast.owner.user_id, wait_seconds=0
    )
    assert fresh.status == "pending" and fresh.consent_id != pending.consent_id
