"""A separate process that floods one origin: ``python -m bench.htm_flooder URL ORIGIN PER_SECOND SECONDS``.

Used by the fairness benchmark so the flood, like real API traffic, does not share the workers' process.
"""

from __future__ import annotations

import asyncio
import sys
import time

from grace import storage
from grace.bus import InProcessBus
from grace.clock import SystemClock
from grace.htm import HTM, load_config


async def flood(url: str, origin: str, per_second: int, seconds: float) -> int:
    db = storage.Database(url)
    htm = HTM(db, InProcessBus(), SystemClock(), load_config(burst_per_minute=0, events=False))
    submitted = 0
    started = time.perf_counter()
    try:
        while (elapsed := time.perf_counter() - started) < seconds:
            due = int(per_second * elapsed) - submitted
            if due > 0:
                requests = [htm.request("bench.sleep", origin=origin) for _ in range(due)]
                await htm.submit_many(requests, creator=None)
                submitted += due
            await asyncio.sleep(0.02)
    finally:
        await htm.close(grace=0)
        await db.dispose()
    return submitted


if __name__ == "__main__":
    url, origin, rate, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    print(asyncio.run(flood(url, origin, rate, seconds)))
