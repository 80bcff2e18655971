"""What the pages say: the seed's prompt, who may answer a card, the history filters, the sign-in pause."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from grace.auth import Principal, Role
from grace.vault import ConsentRecord
from grace.web import signin, views

NOW = datetime(2026, 12, 6, 14, 30, tzinfo=UTC)
AARON = Principal("usr_aaron", "aaron", Role.MEMBER, session_id="ses_1")
OLGA = Principal("usr_olga", "olga", Role.OPERATOR, session_id="ses_2")
ADAM = Principal("usr_adam", "adam", Role.ADMIN, session_id="ses_3")
BELLA = Principal("usr_bella", "bella", Role.MEMBER, session_id="ses_4")


def record(**changes: object) -> ConsentRecord:
    base = ConsentRecord(
        consent_id="cns_1",
        secret_key="GITHUB_API_TOKEN",
        secret_id="sec_1",
        secret_type="api_key",
        service="github",
        requested_by="code_agent",
        requested_for="Push code to repository",
        requested_action="git_push",
        user_id="usr_aaron",
        requester_user_id="usr_aaron",
        status="pending",
        risk_level="high",
        single_use=True,
        used_count=0,
        governance_approval_required=True,
        governance_decision=None,
        second_approval_required=False,
        approved_by=None,
        second_approved_by=None,
        denial_reason=None,
        auto_approved=False,
        anomalies=[],
        context={"repo": "grace_2", "files": 3},
        created_at=NOW,
        expires_at=NOW + timedelta(minutes=5),
        responded_at=None,
        valid_until=None,
        idle_timeout_seconds=None,
        last_used_at=None,
        revoked_at=None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_the_prompt_is_the_seeds_sentence() -> None:
    assert views.prompt(record()) == "Grace wants to use your github credentials to push code. Allow?"
    assert views.action_phrase("rotate_dns_record") == "rotate dns record"


def test_the_owner_answers_their_own_request_and_another_member_cannot() -> None:
    card = views.card(record(), AARON, NOW)
    assert card.can_answer and not card.as_second and card.expires_in == 300
    assert card.context == [("repo", "grace_2"), ("files", "3")]
    assert not views.card(record(), BELLA, NOW).can_answer
    assert views.card(record(), ADAM, NOW).can_answer  # an admin answers for anyone


def test_a_critical_request_waits_for_a_second_approver_who_is_someone_else() -> None:
    first = record(risk_level="critical", second_approval_required=True)
    assert "second person" in views.card(first, AARON, NOW).note
    waiting = replace(first, approved_by="aaron")
    owner = views.card(waiting, AARON, NOW)
    assert not owner.can_answer and owner.note.startswith("You approved this")
    operator = views.card(waiting, OLGA, NOW)
    assert operator.can_answer and operator.as_second and operator.note.startswith("aaron approved this")
    assert owner.version != views.card(first, AARON, NOW).version  # the owner's card is drawn again
    approved_by_olga = replace(first, approved_by="olga")
    assert not views.card(approved_by_olga, OLGA, NOW).can_answer  # not twice by the same person


def test_an_agent_never_gets_a_card_it_may_answer() -> None:
    agent = Principal("usr_aaron", "aaron", Role.MEMBER, token_id="tok_1", agent="code_agent")
    assert not views.card(record(), agent, NOW).can_answer


def test_history_filters_combine() -> None:
    records = [
        record(consent_id="a", status="approved"),
        record(consent_id="b", status="denied", service="mail"),
        record(consent_id="c", status="denied", requested_by="mail_agent", risk_level="medium"),
    ]
    assert [r.consent_id for r in views.filter_history(records, status="denied")] == ["b", "c"]
    assert [r.consent_id for r in views.filter_history(records, status="denied", service="GIT")] == ["c"]
    assert [r.consent_id for r in views.filter_history(records, agent="mail", risk="medium")] == ["c"]
    assert views.filter_history(records) == records


def test_the_sign_in_pause_reads_as_a_person_would_want() -> None:
    text = signin.paused_message(271, until="2026-12-06 14:35 UTC")
    assert "Try again in 5 minutes (after 2026-12-06 14:35 UTC)" in text
    assert "Try again in 40 seconds" in signin.paused_message(40, until="x")
    assert "Try again in a minute" in signin.paused_message(60, until="x")
