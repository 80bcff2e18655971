"""A separate process that revokes a token and dies the moment the revocation has committed.

Usage: python -m tests.acceptance.revoke_and_die_child DATA_DIR DATABASE_URL TOKEN_ID

The fault is injected here, not in Grace: what runs after the revocation's commit (this process's own
cache and the epoch file) is replaced by an exit, as a ``kill -9`` landing right after the commit would.
Whatever reaches the other processes must already have been written with the change.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from grace.auth import Accounts
from grace.config import load_settings
from grace.services import build

DIED = 75


async def _die(*_args: object, **_kwargs: object) -> None:
    sys.stdout.flush()
    os._exit(DIED)


async def main(data_dir: str, database_url: str, token_id: str) -> None:
    settings = load_settings(data_dir=Path(data_dir), database_url=database_url)
    services = await build(settings, migrate=False, bootstrap=False)
    Accounts._changed = _die  # type: ignore[method-assign]
    print("REVOKING", flush=True)
    await services.accounts.revoke_token(token_id)
    print("REVOKED", flush=True)  # never reached: the process died as the commit returned
    await services.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
