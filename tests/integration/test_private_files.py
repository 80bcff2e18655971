"""The data directory and what Grace writes in it are its owner's alone, whatever the umask, and no log
carries SQL parameters (password hashes, value hints), even at debug level."""

from __future__ import annotations

import io
import logging
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from grace import logs
from grace.config import Settings, load_settings
from grace.services import Services, build


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: files created with their mode as asked (0666, 0777) unless Grace says less."""
    before = os.umask(0)
    try:
        yield
    finally:
        os.umask(before)


def grace_settings(backend: str, database_url: str, data_dir: Path) -> Settings:
    # On SQLite the database is the default one, inside the data directory.
    return load_settings(data_dir=data_dir, database_url="" if backend == "sqlite" else database_url)


async def store_a_secret(services: Services) -> None:
    await services.accounts.create_user("owner", "member", "owner's long password")
    principal = await services.sign_in.verify_password("owner", "owner's long password")
    await services.vault.store(principal, "gh_token", "ghp_value_ending_Q7Z9", secret_type="api_key", service="gh")


def private_files(data_dir: Path, backend: str) -> list[Path]:
    names = ["master.key", "audit-anchor.json"] + (
        ["grace.db", "grace.db-wal", "grace.db-shm"] if backend == "sqlite" else []
    )
    return [data_dir / name for name in names]


async def test_the_data_directory_is_0700_and_its_files_0600_whatever_the_umask(
    backend: str, database_url: str, tmp_path: Path, open_umask: None
) -> None:
    data_dir = tmp_path / "data"
    services = await build(grace_settings(backend, database_url, data_dir))
    try:
        await store_a_secret(services)
        assert mode(data_dir) == 0o700
        for path in private_files(data_dir, backend):
            assert mode(path) == 0o600, path.name
    finally:
        await services.close()


async def test_modes_left_open_are_put_back_at_start(
    backend: str, database_url: str, tmp_path: Path, open_umask: None
) -> None:
    data_dir = tmp_path / "data"
    settings = grace_settings(backend, database_url, data_dir)
    services = await build(settings)
    await store_a_secret(services)
    await services.close()
    os.chmod(data_dir, 0o755)
    for path in private_files(data_dir, backend):
        if path.exists():
            os.chmod(path, 0o644)
    services = await build(settings)
    await services.close()
    assert mode(data_dir) == 0o700
    for path in private_files(data_dir, backend):
        if path.exists():
            assert mode(path) == 0o600, path.name


@pytest.fixture
def debug_log() -> Iterator[io.StringIO]:
    """Grace's own log set up at DEBUG (GRACE_LOG_LEVEL=DEBUG), with SQLAlchemy's statement log turned on too."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, sys.stderr)
    engine = logging.getLogger("sqlalchemy.engine")
    engine_level = engine.level
    out = io.StringIO()
    sys.stderr = out
    try:
        logs.configure("DEBUG")
        engine.setLevel(logging.INFO)  # every statement, as an operator chasing a bug would turn on
        yield out
    finally:
        sys.stderr = saved[2]
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        engine.setLevel(engine_level)
        logging.getLogger("aiosqlite").setLevel(logging.NOTSET)


async def test_no_log_carries_sql_parameters_even_at_debug_level(
    backend: str, database_url: str, tmp_path: Path, debug_log: io.StringIO
) -> None:
    services = await build(load_settings(data_dir=tmp_path / "data", database_url=database_url), migrate=False)
    try:
        await store_a_secret(services)
        await services.accounts.set_password("owner", "owner's next password")
    finally:
        await services.close()
    text = debug_log.getvalue()
    assert "INSERT INTO users" in text  # the statements are logged ...
    assert "$argon2" not in text  # ... but not their values: no password hash
    assert "Q7Z9" not in text and "ghp_value" not in text  # no value hint, no value
    assert "owner's long password" not in text
