"""A separate process that runs a key rotation and stops dead at a chosen step.

Usage: python -m tests.integration.vault_rotation_child DATA_DIR DATABASE_URL STEP OCCURRENCE BATCH

It prints each step as it passes; at the OCCURRENCE-th time STEP is reached it
prints ``PAUSED STEP`` and waits there (inside the open transaction for the
``*_uncommitted`` steps) until the test kills it with SIGKILL.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from grace import storage
from grace.bus import InProcessBus
from grace.clock import SystemClock
from grace.config import load_settings
from grace.vault import Vault


async def main(data_dir: str, database_url: str, stop_at: str, occurrence: int, batch: int) -> None:
    settings = load_settings(data_dir=Path(data_dir), database_url=database_url)
    db = storage.Database(database_url)
    vault = await Vault.open(settings, db, SystemClock(), InProcessBus())
    seen: dict[str, int] = {}

    async def on_step(step: str) -> None:
        seen[step] = seen.get(step, 0) + 1
        print(f"STEP {step} {seen[step]}", flush=True)
        if step == stop_at and seen[step] == occurrence:
            print(f"PAUSED {step}", flush=True)
            await asyncio.sleep(3600)

    await vault.rotate_keys(by="crash-test", on_step=on_step, batch_size=batch)
    print("DONE", flush=True)
    await db.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
