"""One side of the voice bench's before/after search comparison (``BENCH_VOICE_SOURCES``).

Started by bench/bench_voice.py as its own process with ``PYTHONPATH`` naming one source tree, it
opens the bench's database (``GRACE_DATABASE_URL``, ``GRACE_DATA_DIR``), loads the owner's vectors with
a first search, says ``ready``, then for each query read from stdin answers one JSON line: the
search's time with the query embedded (``search``), again with its vector kept (``same_query_again``),
and the notes found. An empty line ends it. Only what every version of Grace has is used here.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from grace.auth import Principal, Role
from grace.config import load_settings
from grace.services import build


async def main(owner_id: str, username: str) -> None:
    services = await build(load_settings(), migrate=False, bootstrap=False)
    me = Principal(owner_id, username, Role.MEMBER)
    voice = services.voice
    await voice.search(me, "warm up", top_k=10)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while query := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
        voice.forget_queries()
        began = time.perf_counter()
        hits = await voice.search(me, query, top_k=10)
        first = time.perf_counter() - began
        began = time.perf_counter()
        await voice.search(me, query, top_k=10)
        again = time.perf_counter() - began
        found = [h.note_id for h in hits]
        print(json.dumps({"search": first, "same_query_again": again, "found": found}), flush=True)
    await services.close()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    asyncio.run(main(sys.argv[1], sys.argv[2]))
