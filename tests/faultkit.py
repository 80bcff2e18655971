"""Faults a test can cause on purpose: :class:`TcpProxy` stands between Grace and PostgreSQL.

The PostgreSQL server on a development machine is shared (other suites, other sessions), so an
outage is simulated here rather than by stopping the server: the proxy can cut every connection
through it at once (what a server restart or a network drop does to its clients) and refuse new
ones (the server down) until it is told to accept them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine, Iterator
from typing import Any


class TcpProxy:
    """A fake network between a client and a server: forwards bytes, and cuts or refuses on demand.

    It runs its own event loop on a thread of its own, so a test can use it with a server in a
    subprocess and blocking or async clients alike.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.cuts = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._losing = False

    # -- control, from any thread ------------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def cut(self) -> int:
        """Drop every connection through the proxy now (both ends); return how many there were."""
        return self._call(self._cut())

    def lose_answers(self) -> None:
        """Keep forwarding what clients send, but drop what the server answers, until :meth:`cut`.

        A request then reaches the server and commits, and its answer is lost on the way back:
        the connection dropping just after a commit.
        """
        self._losing = True

    def refuse(self) -> None:
        """Stop listening and drop every connection: new connections are refused, as by a server that is down."""
        self._call(self._refuse())

    def accept(self) -> None:
        """Listen again on the same port."""
        self._call(self._listen())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._shut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """Refuse and cut for the duration of the block, then accept again."""
        self.refuse()
        try:
            yield
        finally:
            self.accept()

    def _call(self, coro: Coroutine[Any, Any, int | None]) -> int:
        result = asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)
        return int(result or 0)

    # -- on the proxy's loop ---------------------------------------------------------

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _refuse(self) -> int:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        return await self._cut()

    async def _shut(self) -> int:
        """Refuse, then end every connection's handler, so no connection outlives the proxy's loop.

        A handler still opening its upstream connection when the loop stopped left both sockets
        open; collected later, in another test, they failed it with an unclosed-transport warning.
        """
        cut = await self._refuse()
        handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await self._cut()
        return cut

    async def _cut(self) -> int:
        writers, self._writers = self._writers, set()
        for w in writers:
            w.transport.abort()  # a reset, not a polite close: what a dead peer looks like
        self.cuts += 1
        self._losing = False
        return len(writers) // 2

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except BaseException as exc:  # refused, or the proxy closing meanwhile
            writer.transport.abort()
            if isinstance(exc, OSError):
                return
            raise
        pair = {writer, up_writer}
        self._writers |= pair
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer, answers=True))
        finally:
            self._writers -= pair
            for w in pair:
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, answers: bool = False) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if answers and self._losing:
                    continue
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
