"""The edge benchmark's peer: a bare ASGI app answering ``GET /health`` as Grace does, under uvicorn.

``python -m bench.edge_peer PORT LOOP`` serves, in one process, with the options ``grace serve`` gives
uvicorn (no access log, no server header, no proxy headers) and the event loop named (``asyncio`` as
``grace serve`` runs, or ``uvloop``), the same body ``/health`` sends: what a trivial ASGI server gets
on this machine, next to Grace in the same run (``bench_http_edge.py``).
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.types import Receive, Scope, Send

BODY = b'{"status":"ok","version":"0.1.0"}'
NOT_FOUND = b'{"error":{"code":"not_found","message":"only /health is served here","details":null}}'


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":  # the lifespan: nothing to start
        message = await receive()
        while message["type"] != "lifespan.shutdown":
            await send({"type": message["type"] + ".complete"})
            message = await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    status, body = (200, BODY) if scope["path"] == "/health" else (404, NOT_FOUND)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str]) -> None:
    port, loop = int(argv[0]), argv[1]
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        loop=loop,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
