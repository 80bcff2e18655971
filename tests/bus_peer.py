"""A second process for bus tests: publish or consume events on a shared PostgreSQL database.

python -m tests.bus_peer publish URL TOPIC COUNT
python -m tests.bus_peer consume URL PATTERN NAME COUNT   (prints one JSON line per event)
"""

from __future__ import annotations

import asyncio
import json
import sys

from grace import storage
from grace.bus import PostgresBus


async def publish(url: str, topic: str, count: int) -> None:
    db = storage.Database(url)
    bus = PostgresBus(db)
    try:
        for i in range(count):
            await bus.publish(topic, {"n": i})
    finally:
        await bus.close()
        await db.dispose()


async def consume(url: str, pattern: str, name: str, count: int) -> None:
    db = storage.Database(url)
    bus = PostgresBus(db)
    await bus.start()
    try:
        async with bus.subscribe(pattern, name=name) as sub:
            print("ready", flush=True)
            for _ in range(count):
                event = await sub.get(timeout=30)
                if event is None:
                    break
                print(json.dumps({"id": event.id, "topic": event.topic, "payload": event.payload}), flush=True)
    finally:
        await bus.close()
        await db.dispose()


if __name__ == "__main__":
    command, url, *rest = sys.argv[1:]
    if command == "publish":
        asyncio.run(publish(url, rest[0], int(rest[1])))
    else:
        asyncio.run(consume(url, rest[0], rest[1], int(rest[2])))
