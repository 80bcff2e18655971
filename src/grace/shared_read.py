"""One computation shared by the callers who ask for it at the same time.

A dashboard polled by many clients asks for the same figures many times a second; computing them once
per request makes each request wait behind all the others' reads. :class:`SharedRead` runs one
computation at a time: a caller who arrives while one is running waits for it to end, and then the
callers who waited share the next one. Every answer was computed *after* its caller arrived, so a
caller never sees figures older than its own request (what it would have seen reading them itself).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SharedRead(Generic[T]):
    """Share one run of ``compute`` among the callers waiting for it (see the module's docstring).

    A failed computation's exception is raised to every caller who shared it; a computation cancelled
    with its caller (a client gone) is not shared: the next waiter computes again.
    """

    def __init__(self, compute: Callable[[], Awaitable[T]]) -> None:
        self._compute = compute
        self._lock = asyncio.Lock()
        self._started = 0  # computations begun so far
        self._finished = 0  # the number of the last computation that finished (result or exception)
        self._result: T | None = None
        self._error: BaseException | None = None

    async def get(self) -> T:
        """Return the result of a computation that began after this call did."""
        arrived_after = self._started
        async with self._lock:
            if self._finished > arrived_after:  # one that began after we arrived has ended: share it
                if self._error is not None:
                    raise self._error
                return self._result  # type: ignore[return-value]
            self._started += 1
            number = self._started
            try:
                result = await self._compute()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._finished, self._result, self._error = number, None, exc
                raise
            self._finished, self._result, self._error = number, result, None
            return result
