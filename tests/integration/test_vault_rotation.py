"""Key rotation on both databases: re-wrapping, archiving, expiry, the schedule, and real crashes at every step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from grace import errors
from grace.bus import InProcessBus
from grace.clock import ManualClock, SystemClock
from grace.config import Settings, load_settings
from grace.htm import TaskContext
from grace.storage import Database
from grace.vault import ROTATION_TASK, Vault, generate_encoded
from grace.vault.tables import vault_keys, vault_rotations, vault_secret_versions
from tests.vaultkit import Cast

ROOT = Path(__file__).resolve().parents[2]


def _value(i: int, version: int = 1) -> str:
    return f"token-{i:03d}-v{version}-" + "k" * 20


async def _fill(cast: Cast, count: int = 7) -> dict[str, str]:
    expected: dict[str, str] = {}
    for i in range(count):
        key = f"svc_{i}"
        for version in range(1, 3 if i % 3 == 0 else 2):
            await cast.vault.store(cast.owner, key, _value(i, version), secret_type="api_key", service="svc")
            expected[key] = _value(i, version)
    return expected


async def _check_all_readable(vault: Vault, owner_id: str, expected: dict[str, str]) -> None:
    for info in await vault.secrets.list_for(owner_id):
        assert (await vault.secrets.decrypt(info.id)).reveal() == expected[info.key]
        for version in range(1, info.version + 1):
            value = (await vault.secrets.decrypt(info.id, version)).reveal()
            assert value.startswith(f"token-{int(info.key.split('_')[1]):03d}-v{version}-")


async def _key_states(db: Database) -> list[str]:
    async with db.read() as conn:
        return list((await conn.execute(select(vault_keys.c.status).order_by(vault_keys.c.term))).scalars())


async def test_rotation_rewraps_every_data_key_and_archives_the_old_key(cast: Cast) -> None:
    expected = await _fill(cast)
    before = await _key_states(cast.services.db)
    report = await cast.vault.rotate_keys(by="test", batch_size=3)
    assert report.rewrapped == 10 + 1  # ten versions of ours and the canary's one
    assert await _key_states(cast.services.db) == ["archived", "active"] and before == ["active"]
    await _check_all_readable(cast.vault, cast.owner.user_id, expected)
    async with cast.services.db.read() as conn:
        keys_used = set((await conn.execute(select(vault_secret_versions.c.key_id).distinct())).scalars())
    assert keys_used == {report.to_key_id}
    second = await cast.vault.rotate_keys(by="test")
    assert await _key_states(cast.services.db) == ["archived", "archived", "active"]
    assert second.archived == [report.to_key_id]
    events = [e.event for e in reversed(await cast.vault.audit.entries(limit=1000))]
    assert events.count("key.rotation_started") == 2 and events.count("key.rotation_completed") == 2
    assert (await cast.vault.verify_audit()).ok
    rotated = await cast.services.bus.replay("secrets.key.rotated", since=0)
    assert len(rotated) == 2


async def test_the_database_refuses_a_second_active_key_or_rotation(cast: Cast) -> None:
    async with cast.services.db.read() as conn:
        row = dict((await conn.execute(select(vault_keys))).mappings().one())
    key_id = row["id"]
    row.update(id="kek_intruder", term=99)
    with pytest.raises(IntegrityError):
        async with cast.services.db.write() as conn:
            await conn.execute(insert(vault_keys).values(**row))
    now = cast.clock.now()

    async def two_running() -> None:
        async with cast.services.db.write() as conn:
            for n in range(2):
                await conn.execute(
                    insert(vault_rotations).values(
                        id=f"rot_{n}",
                        from_key_id=None,
                        to_key_id=key_id,
                        status="running",
                        step="created",
                        rewrapped=0,
                        started_by="t",
                        started_at=now,
                        updated_at=now,
                    )
                )

    with pytest.raises(IntegrityError):
        await two_running()
    assert await _key_states(cast.services.db) == ["active"]


async def test_key_expiry_warns_seven_days_ahead_and_the_schedule_rotates(cast: Cast) -> None:
    status = await cast.vault.keys_status()
    assert status["active_keys"] == 1 and not status["expiring_soon"]
    assert status["next_scheduled_rotation"] == "2026-01-04T02:00:00+00:00"  # the first Sunday, 02:00 UTC
    assert not await cast.vault.keyring.rotation_due()
    cast.clock.advance(timedelta(days=3, hours=2).total_seconds())
    assert await cast.vault.keyring.rotation_due()
    done = await cast.vault.tick()
    # The rotation is queued on the task manager as a `vault.rotate_keys` task; a worker runs its handler.
    task_id = done["rotation_queued"]["task_id"]
    assert "rotation_queued" not in await cast.vault.tick()  # one task per key term
    htm = cast.services.htm
    assert htm is not None
    task = await htm.get(task_id, principal=None)
    assert task.task_type == ROTATION_TASK and task.payload["active_term"] == 1
    handler = htm.handlers.get(ROTATION_TASK)
    assert handler is not None
    result = await handler(TaskContext(task, "test-worker", cast.clock))
    assert result["rewrapped"] >= 1 and (await cast.vault.keys_status())["active_key"]["term"] == 2
    again = await handler(TaskContext(task, "test-worker", cast.clock))  # a retried or duplicate task
    assert again["skipped"] and (await cast.vault.keys_status())["active_key"]["term"] == 2
    status = await cast.vault.keys_status()
    assert status["next_scheduled_rotation"] == "2026-01-11T02:00:00+00:00"
    cast.clock.advance(timedelta(days=23, hours=1).total_seconds())  # 30-day key, 6 days 23 hours left
    status = await cast.vault.keys_status()
    assert status["expiring_soon"] and not status["expired"]
    assert await cast.vault.check_key_expiry()
    assert await cast.services.bus.replay("secrets.key.expiring", since=0)


async def test_a_different_master_key_is_refused_clearly(cast: Cast, settings: Settings) -> None:
    other = settings.model_copy(update={"master_key": None, "data_dir": settings.data_dir / "elsewhere"})
    with pytest.raises(errors.ConfigurationError, match="master key does not match"):
        await Vault.open(other, cast.services.db, cast.clock, InProcessBus())


async def test_a_passphrase_master_key_opens_the_same_vault_again(database_url: str, tmp_path: Path) -> None:
    db = Database(database_url)
    try:
        settings = load_settings(
            data_dir=tmp_path, database_url=database_url, master_passphrase="correct horse battery staple!"
        )
        first = await Vault.open(settings, db, ManualClock(), InProcessBus())
        second = await Vault.open(settings, db, ManualClock(), InProcessBus())
        assert first.master.key_id == second.master.key_id and first.master.source == "passphrase"
        wrong = settings.model_copy(update={"master_passphrase": SecretStr("another long phrase")})
        with pytest.raises(errors.ConfigurationError, match="does not match"):
            await Vault.open(wrong, db, ManualClock(), InProcessBus())
        assert not (tmp_path / "master.key").exists()
    finally:
        await db.dispose()


async def test_the_key_file_is_created_0600_and_refused_when_readable_by_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from grace.vault import masterkey

    path = tmp_path / "keys" / "master.key"
    created = masterkey.load_from_file(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert any(r.getMessage() == "vault.master_key_file_created" for r in caplog.records)
    assert masterkey.load_from_file(path).key_id == created.key_id
    path.chmod(0o644)
    with pytest.raises(errors.ConfigurationError, match="chmod 600"):
        masterkey.load_from_file(path)
    env = masterkey.from_settings(load_settings(data_dir=tmp_path, master_key=generate_encoded()))
    assert env.source == "environment"


CRASH_POINTS = [
    ("create_uncommitted", 1),
    ("key_created", 1),
    ("activate_uncommitted", 1),
    ("key_activated", 1),
    ("batch_uncommitted", 1),
    ("batch_committed", 1),
    ("batch_uncommitted", 2),
    ("batch_committed", 3),
    ("archive_uncommitted", 1),
    ("archived", 1),
]


@pytest.mark.slow
@pytest.mark.parametrize(("step", "occurrence"), CRASH_POINTS, ids=[f"{s}-{n}" for s, n in CRASH_POINTS])
async def test_a_crash_at_every_step_of_a_rotation_loses_nothing(
    settings: Settings, database_url: str, step: str, occurrence: int
) -> None:
    # The secrets are stored by one process; a second one rotates and is killed with SIGKILL mid-way.
    from grace.services import build

    services = await build(settings, clock=SystemClock(), migrate=False)
    assert services.vault is not None
    try:
        owner, _ = await services.accounts.create_user("crash", "member")
        from grace.auth import Principal, Role

        principal = Principal(owner.id, owner.username, Role.MEMBER)
        expected: dict[str, str] = {}
        for i in range(10):
            await services.vault.store(principal, f"svc_{i}", _value(i), secret_type="api_key", service="svc")
            expected[f"svc_{i}"] = _value(i)
    finally:
        await services.close()

    child = subprocess.Popen(  # noqa: ASYNC220 - a real process, killed for real
        [
            sys.executable,
            "-m",
            "tests.integration.vault_rotation_child",
            str(settings.data_dir),
            database_url,
            step,
            str(occurrence),
            "3",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])},
    )
    lines: list[str] = []
    deadline = time.monotonic() + 300  # a guard against a hang, not a budget
    assert child.stdout is not None and child.stderr is not None
    while time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
        if line.startswith("PAUSED"):
            break
    assert lines and lines[-1] == f"PAUSED {step}", (lines, child.stderr.read() if child.poll() is not None else "")
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    child.stdout.close()
    child.stderr.close()

    # "Restart": a fresh process-level view of the same database and key file.
    db = Database(database_url)
    try:
        vault = await Vault.open(settings, db, SystemClock(), InProcessBus())
        assert (await _key_states(db)).count("active") == 1
        await _check_all_readable(vault, owner.id, expected)
        report = await vault.rotate_keys(by="restart")
        states = await _key_states(db)
        assert states.count("active") == 1 and "retiring" not in states and "pending" not in states
        # Nothing deleted: the interrupted rotation's key (or a fresh one) is the new term; after a finished
        # rotation ("archived") the restart's rotation is a new one.
        assert len(states) == (3 if step == "archived" else 2)
        async with db.read() as conn:
            running = (
                await conn.execute(select(func.count()).where(vault_rotations.c.status == "running"))
            ).scalar_one()
            keys_used = set((await conn.execute(select(vault_secret_versions.c.key_id).distinct())).scalars())
        assert running == 0 and keys_used == {report.to_key_id}
        await _check_all_readable(vault, owner.id, expected)
        assert (await vault.verify_audit()).ok
    finally:
        await db.dispose()


async def test_rotation_resumes_from_the_recorded_step(cast: Cast) -> None:
    expected = await _fill(cast, 4)
    steps: list[str] = []

    async def stop_after_activation(step: str) -> None:
        steps.append(step)
        if step == "key_activated":
            raise RuntimeError("stopped here")

    with pytest.raises(RuntimeError):
        await cast.vault.rotate_keys(on_step=stop_after_activation)
    assert (await cast.vault.keys_status())["rotation_in_progress"]
    report = await cast.vault.rotate_keys()
    assert report.resumed and report.rewrapped == 7  # six versions of ours and the canary
    await _check_all_readable(cast.vault, cast.owner.user_id, expected)
    assert steps == ["create_uncommitted", "key_created", "activate_uncommitted", "key_activated"]
    assert await _key_states(cast.services.db) == ["archived", "active"]
