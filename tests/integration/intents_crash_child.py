"""A separate process that submits an intent and dies between its two writes.

Usage: python -m tests.integration.intents_crash_child DATA_DIR DATABASE_URL USERNAME GOAL

Run with GRACE_INTENTS_TEST_EXIT_AFTER_RECORD=1: the process exits (code 75) right after the intent
is recorded, before its task is created, as a crash there would.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from grace.auth import Principal
from grace.config import load_settings
from grace.services import build


async def main(data_dir: str, database_url: str, username: str, goal: str) -> None:
    settings = load_settings(data_dir=Path(data_dir), database_url=database_url)
    services = await build(settings, migrate=False, bootstrap=False)
    user = await services.accounts.get_user(username)
    print("SUBMITTING", flush=True)
    await services.intents.submit(Principal(user.id, user.username, user.role), goal=goal, handler="echo")
    print("SUBMITTED", flush=True)  # never reached under the hook
    await services.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
