"""An agent's token asks but never answers for its human: it cannot issue, list or revoke tokens (issue 13, failure 1).

Each test replays one part of the reported attack over HTTP, on both databases.
"""

from __future__ import annotations

import httpx
import pytest

from grace import errors
from tests.vaultkit import Cast

VALUE = "ghp_" + "Zx81Kq27Lm" * 3


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def ask_for_gh_token(http: httpx.AsyncClient, cast: Cast) -> str:
    stored = await http.post(
        "/api/secrets/store",
        json={"secret_key": "gh_token", "secret_value": VALUE, "service": "github"},
        headers=cast.headers("owner"),
    )
    assert stored.status_code == 201, stored.text
    asked = await http.post(
        "/api/secrets/gh_token/access",
        json={"requested_action": "git_push", "requested_for": "push a branch"},
        headers=cast.headers("agent"),
    )
    assert asked.status_code == 202, asked.text
    consent_id: str = asked.json()["consent_id"]
    return consent_id


async def test_an_agent_cannot_mint_a_token_and_approve_its_own_request(http: httpx.AsyncClient, cast: Cast) -> None:
    consent_id = await ask_for_gh_token(http, cast)

    minted = await http.post("/api/tokens", json={"name": "innocent"}, headers=cast.headers("agent"))
    assert minted.status_code == 403, minted.text
    assert "agent" in minted.json()["error"]["message"] and "token" not in minted.json()
    # Had it got one, this is what it would have done with it; with its own token it is refused too.
    answered = await http.post(
        "/api/secrets/consent/respond", json={"consent_id": consent_id, "approved": True}, headers=cast.headers("agent")
    )
    assert answered.status_code == 403

    collected = await http.post(
        "/api/secrets/gh_token/access", json={"consent_id": consent_id}, headers=cast.headers("agent")
    )
    assert collected.status_code == 202 and VALUE not in collected.text
    owners_view = await http.get(f"/api/secrets/consent/{consent_id}", headers=cast.headers("owner"))
    assert owners_view.json()["consent"]["consent_status"] == "pending"
    tokens = (await http.get("/api/tokens", headers=cast.headers("owner"))).json()["tokens"]
    assert "innocent" not in [t["name"] for t in tokens]


async def test_an_admins_agent_gets_no_admin_token_and_no_admin_powers(http: httpx.AsyncClient, cast: Cast) -> None:
    _, token = await cast.services.accounts.create_token(cast.admin.user_id, agent="ops_agent")
    agent = bearer(token)
    assert (await http.get("/api/auth/me", headers=agent)).json()["role"] == "admin"

    for body in ({"name": "innocent"}, {"name": "innocent", "user_id": cast.admin.user_id}, {"agent": "other"}):
        minted = await http.post("/api/tokens", json=body, headers=agent)
        assert minted.status_code == 403, minted.text
        assert "token" not in minted.json()
    made_user = await http.post("/api/users", json={"username": "mallory", "role": "admin"}, headers=agent)
    assert made_user.status_code == 403
    assert (await http.get("/api/users", headers=agent)).status_code == 403
    assert (await http.post("/api/secrets/keys/rotate", headers=agent)).status_code == 403
    assert (await http.get("/api/secrets/audit/verify", headers=agent)).status_code == 403


async def test_nothing_an_agent_holds_outlives_revoking_its_token(http: httpx.AsyncClient, cast: Cast) -> None:
    minted = await http.post("/api/tokens", json={"name": "spare"}, headers=cast.headers("agent"))
    assert minted.status_code == 403
    assert cast.agent.token_id is not None
    revoked = await http.post(f"/api/tokens/{cast.agent.token_id}/revoke", headers=cast.headers("owner"))
    assert revoked.status_code == 200
    assert (await http.get("/api/auth/me", headers=cast.headers("agent"))).status_code == 401

    # A token issued by another token goes when its issuer goes, down the line.
    child = await http.post("/api/tokens", json={"name": "child"}, headers=cast.headers("owner"))
    assert child.status_code == 201
    grandchild = await http.post("/api/tokens", json={"name": "grandchild"}, headers=bearer(child.json()["token"]))
    assert grandchild.status_code == 201
    assert cast.owner.token_id is not None
    await http.post(f"/api/tokens/{cast.owner.token_id}/revoke", headers=cast.headers("admin2"))
    for token in (child.json()["token"], grandchild.json()["token"]):
        assert (await http.get("/api/auth/me", headers=bearer(token))).status_code == 401


async def test_an_agent_can_neither_see_nor_revoke_its_owners_tokens(http: httpx.AsyncClient, cast: Cast) -> None:
    assert (await http.get("/api/tokens", headers=cast.headers("agent"))).status_code == 403
    for token_id in (cast.owner.token_id, cast.other_agent.token_id, cast.agent.token_id):
        refused = await http.post(f"/api/tokens/{token_id}/revoke", headers=cast.headers("agent"))
        assert refused.status_code == 403, refused.text
    for who in ("owner", "other_agent", "agent"):
        assert (await http.get("/api/auth/me", headers=cast.headers(who))).status_code == 200
    listed = (await http.get("/api/tokens", headers=cast.headers("owner"))).json()["tokens"]
    assert all(t["revoked_at"] is None for t in listed)


async def test_an_agent_cannot_mint_fresh_agent_names_to_dodge_the_burst_check(
    http: httpx.AsyncClient, cast: Cast
) -> None:
    before = (await http.get("/api/tokens", headers=cast.headers("owner"))).json()["tokens"]
    for n in range(3):
        minted = await http.post("/api/tokens", json={"agent": f"fresh_{n}"}, headers=cast.headers("agent"))
        assert minted.status_code == 403, minted.text
    after = (await http.get("/api/tokens", headers=cast.headers("owner"))).json()["tokens"]
    assert [t["id"] for t in after] == [t["id"] for t in before]
    assert not any((t["agent"] or "").startswith("fresh_") for t in after)


async def test_an_agent_cannot_answer_its_owners_playbook_approval(http: httpx.AsyncClient, cast: Cast) -> None:
    # A playbook run for the owner reached an approval step: the owner is asked in the consent inbox.
    asked = await cast.vault.ask_approval(
        user_id=cast.owner.user_id,
        asked_by="playbook.htm_timing_and_sizing",
        action="htm.reap",
        what="run step 'remediate' (htm.reap) of playbook htm_timing_and_sizing",
        why="Return the dead worker's tasks to the queue?",
        service="playbooks",
        timeout_seconds=600,
        context={"playbook": "htm_timing_and_sizing", "run_id": "pbr_test", "step": "remediate"},
    )
    body = {"consent_id": asked.consent_id, "approved": True}
    for agent in ("agent", "other_agent"):
        answered = await http.post("/api/secrets/consent/respond", json=body, headers=cast.headers(agent))
        assert answered.status_code == 403, answered.text
        assert "agent" in answered.json()["error"]["message"]
    # Knowing the id gets an agent nothing either: an approval is tied to no secret.
    assert not (await cast.vault.redeem(cast.agent, asked.consent_id)).approved
    owners_view = await http.get(f"/api/secrets/consent/{asked.consent_id}", headers=cast.headers("owner"))
    assert owners_view.json()["consent"]["consent_status"] == "pending"
    assert owners_view.json()["consent"]["kind"] == "approval"
    # Past the edge, the vault refuses too, and puts the refusal on the audit record.
    with pytest.raises(errors.PermissionDenied, match="an agent cannot answer"):
        await cast.vault.respond(cast.agent, asked.consent_id, True)
    entries = await cast.vault.audit_entries(cast.admin, "*", limit=50)
    assert [e.actor for e in entries if e.event == "consent.answer_refused" and e.consent_id == asked.consent_id]
