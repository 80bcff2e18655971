"""uvloop for ``grace serve`` (``GRACE_EVENT_LOOP=uvloop``), taking every waiting connection at once.

libuv, under uvloop, accepts one connection each time the listening socket is reported readable: a
busy loop turns every few milliseconds, so under load new connections wait in the kernel's queue, up
to two seconds for 200 of them (a liveness probe opens a new connection each time). Here the listening
socket is watched with ``add_reader`` and every waiting connection is accepted at once, as asyncio's own
loop does, then handed to uvloop as a transport (``connect_accepted_socket``). Measured on a bare
FastAPI app at 200 connections: p99 111-287 ms against 1,121-1,437 ms (docs/architecture.md, "The
edge's CPU and its tail").

uvicorn takes the loop factory by name: ``loop="grace.api.eventloop:eager_uvloop"``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from typing import Any

__all__ = ["EagerServer", "eager_uvloop"]

log = logging.getLogger("grace.api")

# Out of file descriptors: stop watching the socket for this long (it would be readable at once again).
PAUSE_SECONDS = 0.1


class EagerServer:
    """What uvicorn needs of a server (``sockets``, ``close``, ``wait_closed``), accepting eagerly."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.Protocol], sock: socket.socket
    ) -> None:
        self.loop = loop
        self.factory = factory
        self.sock = sock
        self.sockets = [sock]
        self._connecting: set[asyncio.Task[Any]] = set()
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("http.accept_paused", extra={"reason": exc.strerror})
                    self.loop.remove_reader(self.sock.fileno())
                    self.loop.call_later(PAUSE_SECONDS, self._resume)
                    return
                raise
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = self.loop.create_task(self._connect(conn))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    def _resume(self) -> None:
        if self.sock.fileno() != -1:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.factory, conn)
        except OSError:  # the client left before its connection was set up
            conn.close()

    def close(self) -> None:
        if self.sock.fileno() != -1:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()

    async def wait_closed(self) -> None:
        return None


def eager_uvloop() -> asyncio.AbstractEventLoop:
    """Return a uvloop loop whose TCP servers accept every waiting connection at once."""
    import uvloop

    class Loop(uvloop.Loop):
        async def create_server(  # type: ignore[override]
            self,
            protocol_factory: Callable[[], asyncio.Protocol],
            host: str | None = None,
            port: int | None = None,
            *,
            sock: socket.socket | None = None,
            backlog: int = 100,
            ssl: Any = None,
            **kwargs: Any,
        ) -> Any:
            if ssl is not None or kwargs or (sock is not None and sock.family not in (socket.AF_INET, socket.AF_INET6)):
                base: Any = super().create_server  # uvloop's overloads: host and port, or a socket
                return await base(protocol_factory, host, port, sock=sock, backlog=backlog, ssl=ssl, **kwargs)
            if sock is None:
                family = socket.AF_INET6 if host and ":" in host else socket.AF_INET
                sock = socket.create_server((host or "", port or 0), family=family, backlog=backlog)
            else:
                sock.listen(backlog)
            return EagerServer(self, protocol_factory, sock)

    return Loop()
