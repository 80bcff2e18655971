"""Secrets at rest on both databases: versions, masking, bad input, rotation schedule, and tampering in the tables."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from grace import errors
from grace.vault import IntegrityFailure
from grace.vault.tables import vault_keys, vault_secret_versions
from tests.vaultkit import Cast

VALUE_A = "sk_live_" + "a1B2c3D4e5" * 3
VALUE_B = "sk_live_" + "z9Y8x7W6v5" * 3


async def _row(cast: Cast, secret_id: str, version: int) -> dict[str, Any]:
    async with cast.services.db.read() as conn:
        return dict(
            (
                await conn.execute(
                    select(vault_secret_versions).where(
                        vault_secret_versions.c.secret_id == secret_id, vault_secret_versions.c.version == version
                    )
                )
            )
            .mappings()
            .one()
        )


async def _set(cast: Cast, secret_id: str, version: int, **values: object) -> None:
    async with cast.services.db.write() as conn:
        await conn.execute(
            update(vault_secret_versions)
            .where(vault_secret_versions.c.secret_id == secret_id, vault_secret_versions.c.version == version)
            .values(**values)
        )


async def test_versions_keep_history_and_the_list_is_masked(cast: Cast) -> None:
    first = await cast.vault.store(cast.owner, "stripe", VALUE_A, secret_type="api_key", service="stripe")
    second = await cast.vault.store(cast.owner, "stripe", VALUE_B, secret_type="api_key", service="stripe")
    assert (first.version, second.version, second.id) == (1, 2, first.id)
    assert (await cast.vault.secrets.decrypt(first.id, 1)).reveal() == VALUE_A
    assert (await cast.vault.secrets.decrypt(first.id)).reveal() == VALUE_B
    short = await cast.vault.store(cast.owner, "pin", "12345678", secret_type="password", service="bank")
    listed = {s.key: s for s in await cast.vault.list_secrets(cast.owner)}
    assert listed["stripe"].masked == "****" + VALUE_B[-4:]
    assert listed["pin"].masked == "********" and short.risk_level == "high"
    for info in listed.values():
        text = repr(info) + repr(info.as_dict())
        assert VALUE_A not in text and VALUE_B not in text and "12345678" not in text
    assert [v["version"] for v in await cast.vault.secrets.versions(first.id)] == [1, 2]
    # Members see only their own; admins may look at anyone's.
    assert await cast.vault.list_secrets(cast.other) == []
    with pytest.raises(errors.PermissionDenied):
        await cast.vault.list_secrets(cast.other, cast.owner.user_id)
    assert len(await cast.vault.list_secrets(cast.admin, cast.owner.user_id)) == 2
    # The audit keeps an HMAC of each value, never the value.
    entries = [e for e in await cast.vault.audit.entries(user_id=cast.owner.user_id) if e.event == "secret.stored"]
    assert all(e.details["value_hmac"].startswith("hmac-sha256:") for e in entries)
    assert entries[-1].details["value_hmac"] != entries[-2].details["value_hmac"]
    assert all(VALUE_A not in repr(e) and VALUE_B not in repr(e) for e in entries)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"secret_type": "bitcoin_wallet"}, errors.InvalidInput, "unknown secret type"),
        ({"value": ""}, errors.InvalidInput, "must not be empty"),
        ({"value": "   \n"}, errors.InvalidInput, "must not be empty"),
        ({"value": "x" * (64 * 1024 + 1)}, errors.PayloadTooLarge, "at most"),
        ({"key": "has spaces"}, errors.InvalidInput, "secret key"),
        ({"risk_level": "low"}, errors.InvalidInput, "never lowered"),
        ({"risk_level": "extreme"}, errors.InvalidInput, "unknown risk level"),
        ({"secret_type": "password"}, errors.Conflict, "cannot change"),
        ({"rotation_days": 0}, errors.InvalidInput, "rotation_days"),
    ],
)
async def test_bad_input_is_refused_and_changes_nothing(
    cast: Cast, kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    await cast.vault.store(cast.owner, "stripe", VALUE_A, secret_type="api_key", service="stripe")
    before = await cast.vault.list_secrets(cast.owner)
    audit_before = len(await cast.vault.audit.entries(limit=1000))
    args: dict[str, object] = {"key": "stripe", "value": VALUE_B, "secret_type": "api_key", "service": "stripe"}
    args.update(kwargs)
    key, value = args.pop("key"), args.pop("value")
    with pytest.raises(error, match=message):
        await cast.vault.store(cast.owner, key, value, **args)  # type: ignore[arg-type]
    assert await cast.vault.list_secrets(cast.owner) == before
    assert (await cast.vault.secrets.decrypt(before[0].id)).reveal() == VALUE_A
    assert len(await cast.vault.audit.entries(limit=1000)) == audit_before


async def test_agents_cannot_store_or_revoke(cast: Cast) -> None:
    with pytest.raises(errors.PermissionDenied):
        await cast.vault.store(cast.agent, "x", VALUE_A, secret_type="api_key", service="x")
    await cast.vault.store(cast.owner, "x", VALUE_A, secret_type="api_key", service="x")
    with pytest.raises(errors.PermissionDenied):
        await cast.vault.revoke_secret(cast.agent, "x")


async def test_api_keys_fall_due_weekly_and_the_event_goes_out_once(cast: Cast) -> None:
    await cast.vault.store(cast.owner, "stripe", VALUE_A, secret_type="api_key", service="stripe")
    await cast.vault.store(cast.owner, "db_password", VALUE_B, secret_type="password", service="db")
    await cast.vault.store(cast.owner, "monthly", VALUE_B, secret_type="password", service="db", rotation_days=30)
    assert await cast.vault.rotation_due(cast.owner) == []
    cast.clock.advance(timedelta(days=7).total_seconds())
    assert [s.key for s in await cast.vault.rotation_due(cast.owner)] == ["stripe"]
    assert await cast.vault.publish_rotation_due() == 2  # ours and the canary (also an api_key)
    assert await cast.vault.publish_rotation_due() == 0
    events = await cast.services.bus.replay("secrets.rotation.due", since=0)
    assert {e.payload["secret_key"] for e in events} == {"stripe", "canary_token"}
    assert all("value" not in e.payload for e in events)
    await cast.vault.store(cast.owner, "stripe", VALUE_B, secret_type="api_key", service="stripe")
    assert await cast.vault.rotation_due(cast.owner) == []
    cast.clock.advance(timedelta(days=23).total_seconds())
    assert [s.key for s in await cast.vault.rotation_due(cast.owner)] == ["stripe", "monthly"]


async def test_flipping_any_byte_in_the_tables_is_refused(cast: Cast) -> None:
    info = await cast.vault.store(cast.owner, "stripe", VALUE_A, secret_type="api_key", service="stripe")
    original = await _row(cast, info.id, 1)
    for column in ("ciphertext", "wrapped_dek"):
        blob = bytes(original[column])
        for index in range(len(blob)):
            tampered = bytearray(blob)
            tampered[index] ^= 0x01 << (index % 8)
            await _set(cast, info.id, 1, **{column: bytes(tampered)})
            with pytest.raises(IntegrityFailure):
                await cast.vault.secrets.decrypt(info.id)
        await _set(cast, info.id, 1, **{column: blob})
    assert (await cast.vault.secrets.decrypt(info.id)).reveal() == VALUE_A


async def test_a_tampered_key_encryption_key_is_refused(cast: Cast) -> None:
    info = await cast.vault.store(cast.owner, "stripe", VALUE_A, secret_type="api_key", service="stripe")
    async with cast.services.db.read() as conn:
        key = (await conn.execute(select(vault_keys))).mappings().one()
    blob = bytearray(key["wrapped_key"])
    blob[20] ^= 0xFF
    async with cast.services.db.write() as conn:
        await conn.execute(update(vault_keys).where(vault_keys.c.id == key["id"]).values(wrapped_key=bytes(blob)))
    cast.vault.keyring._unwrapped.clear()  # a fresh process: nothing cached
    with pytest.raises(IntegrityFailure):
        await cast.vault.secrets.decrypt(info.id)


async def test_swapping_ciphertexts_between_secrets_or_versions_is_refused(cast: Cast) -> None:
    a = await cast.vault.store(cast.owner, "a", VALUE_A, secret_type="api_key", service="s")
    b = await cast.vault.store(cast.owner, "b", VALUE_B, secret_type="api_key", service="s")
    await cast.vault.store(cast.owner, "a", VALUE_B, secret_type="api_key", service="s")
    row_a1, row_a2, row_b1 = await _row(cast, a.id, 1), await _row(cast, a.id, 2), await _row(cast, b.id, 1)
    moves = ("ciphertext", "wrapped_dek", "dek_id")
    # b's whole envelope copied onto a (another secret), and a v1's onto a v2 (another version).
    for target, target_version, source in ((a, 2, row_b1), (a, 2, row_a1), (a, 1, row_a2)):
        saved = await _row(cast, target.id, target_version)
        await _set(cast, target.id, target_version, **{c: source[c] for c in moves})
        with pytest.raises(IntegrityFailure):
            await cast.vault.secrets.decrypt(target.id, target_version)
        await _set(cast, target.id, target_version, **{c: saved[c] for c in moves})
    # Only the value ciphertext swapped, keeping the data key: also refused.
    await _set(cast, b.id, 1, ciphertext=row_a1["ciphertext"])
    with pytest.raises(IntegrityFailure):
        await cast.vault.secrets.decrypt(b.id)


async def test_relabelling_the_key_is_refused(cast: Cast) -> None:
    info = await cast.vault.store(cast.owner, "stripe", VALUE_A, secret_type="api_key", service="stripe")
    old_key = (await _row(cast, info.id, 1))["key_id"]
    await cast.vault.rotate_keys()
    new_row = await _row(cast, info.id, 1)
    assert new_row["key_id"] != old_key
    # The data key names the archived key instead of the one that wrapped it, and the other way round.
    await _set(cast, info.id, 1, key_id=old_key)
    with pytest.raises(IntegrityFailure):
        await cast.vault.secrets.decrypt(info.id)
    await _set(cast, info.id, 1, key_id=new_row["key_id"], dek_id="dek_other")
    with pytest.raises(IntegrityFailure):
        await cast.vault.secrets.decrypt(info.id)
    await _set(cast, info.id, 1, dek_id=new_row["dek_id"])
    assert (await cast.vault.secrets.decrypt(info.id)).reveal() == VALUE_A


async def test_a_tampered_secret_is_never_released_and_the_failure_is_audited(cast: Cast) -> None:
    info = await cast.vault.store(cast.owner, "stripe", VALUE_A, secret_type="api_key", service="stripe")
    pending = await cast.vault.access(cast.agent, "stripe", action="charge", wait_seconds=0)
    await cast.vault.respond(cast.owner, pending.consent_id or "", True)
    blob = bytearray((await _row(cast, info.id, 1))["ciphertext"])
    blob[-1] ^= 0x80
    await _set(cast, info.id, 1, ciphertext=bytes(blob))
    with pytest.raises(IntegrityFailure) as caught:
        await cast.vault.redeem(cast.agent, pending.consent_id or "")
    assert VALUE_A not in str(caught.value)
    assert (await cast.vault.get_consent(pending.consent_id or "")).status == "approved"
    events = [e.event for e in await cast.vault.audit.entries(limit=10)]
    assert "secret.integrity_failure" in events and "secret.released" not in events
