"""A worker process that dies right after its outcome's statement commits.

Usage: python -m tests.integration.htm_outbox_crash_child DATABASE_URL

It submits one task, claims it and records it completed through the queue, then exits (code 75)
the moment the statement returns: before the recorder, the event publisher or its relay run again,
as a ``kill -9`` there would. It prints the task's id first.
"""

from __future__ import annotations

import asyncio
import os
import sys

from grace import storage
from grace.bus import PostgresBus
from grace.clock import SystemClock
from grace.htm import HTM, load_config
from grace.htm.queue import Outcome
from grace.htm.tasks import Status

EXIT_CODE = 75


async def main(database_url: str) -> None:
    clock = SystemClock()
    db = storage.Database(database_url)
    bus = PostgresBus(db, clock=clock)
    htm = HTM(db, bus, clock, load_config(burst_per_minute=0))
    await htm.prepare()
    [submitted] = await htm.submit_many([htm.request("htm.noop", origin="intent")], creator=None)
    print(submitted.task_id, flush=True)
    [task] = await htm.queue.claim("crash-worker", 1, fallback_capacity=1)
    assert task.task_id == submitted.task_id
    await htm.queue.finish("crash-worker", [Outcome(task.task_id, task.attempts, Status.COMPLETED, clock.now())])
    os._exit(EXIT_CODE)  # the outcome is committed; nothing of this process runs after it


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
