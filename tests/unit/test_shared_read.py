"""SharedRead: callers asking at once share one computation, and none gets figures older than its call."""

from __future__ import annotations

import asyncio

import pytest

from grace.shared_read import SharedRead


class Counter:
    """A value that changes, read by a computation the test lets finish when it chooses."""

    def __init__(self) -> None:
        self.value = 0
        self.reads = 0
        self.gate = asyncio.Event()
        self.reading = asyncio.Event()

    async def read(self) -> int:
        self.reads += 1
        seen = self.value  # what the computation saw when it began
        self.reading.set()
        await self.gate.wait()
        return seen


async def test_callers_who_arrive_during_a_read_share_the_next_one_which_sees_what_changed_before_they_asked() -> None:
    counter = Counter()
    shared = SharedRead(counter.read)
    first = asyncio.create_task(shared.get())
    await counter.reading.wait()  # the first read has begun and saw value 0
    counter.value = 1  # a change committed while that read runs
    later = [asyncio.create_task(shared.get()) for _ in range(20)]
    await asyncio.sleep(0)
    counter.gate.set()
    assert await first == 0
    assert await asyncio.gather(*later) == [1] * 20  # not the first read's stale 0
    assert counter.reads == 2  # twenty-one callers, two reads


async def test_a_caller_alone_reads_each_time() -> None:
    counter = Counter()
    counter.gate.set()
    shared = SharedRead(counter.read)
    for value in range(3):
        counter.value = value
        assert await shared.get() == value
    assert counter.reads == 3


async def test_a_failed_read_fails_everyone_who_shared_it_and_the_next_caller_reads_again() -> None:
    calls = 0
    gate = asyncio.Event()

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        if calls <= 2:
            raise RuntimeError(f"read {calls} failed")
        return "ok"

    shared = SharedRead(flaky)
    first = asyncio.create_task(shared.get())
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(shared.get()) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    with pytest.raises(RuntimeError, match="read 1 failed"):
        await first
    for waiter in waiters:  # they shared read 2
        with pytest.raises(RuntimeError, match="read 2 failed"):
            await waiter
    assert await shared.get() == "ok" and calls == 3


async def test_a_read_cancelled_with_its_caller_is_not_shared_the_next_waiter_reads() -> None:
    counter = Counter()
    shared = SharedRead(counter.read)
    first = asyncio.create_task(shared.get())
    await counter.reading.wait()
    waiter = asyncio.create_task(shared.get())
    await asyncio.sleep(0)
    counter.value = 7  # the cancelled read saw 0
    first.cancel()  # the client went away
    with pytest.raises(asyncio.CancelledError):
        await first
    counter.gate.set()
    assert await waiter == 7 and counter.reads == 2
