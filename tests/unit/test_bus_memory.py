"""The single-node bus's in-memory log, as the garbage collector sees it, and as subscribers read it back."""

from __future__ import annotations

import gc

from grace.bus import InProcessBus


async def test_events_kept_in_the_log_leave_the_collector_nothing_to_walk() -> None:
    # The log holds the last max_events events. Kept as objects, they were all tracked by the
    # collector, and under load they all sat in its youngest generation (one appended as one left, so
    # the count that starts a collection never grew): every collection walked them, 90-150 ms with the
    # event loop held. Kept as plain tuples, the collector stops tracking them once it has seen them.
    bus = InProcessBus(max_events=20_000)
    gc.collect()
    empty = len(gc.get_objects())
    for round_ in range(4):
        await bus.publish_batch(
            [("htm.task.completed", {"task_id": f"r{round_}-{i}", "attempt": 1}) for i in range(5_000)]
        )
    gc.collect()
    assert len(await bus.replay("htm.#", limit=20_000)) == 20_000  # all kept
    gc.collect()
    assert len(gc.get_objects()) - empty < 1_000, "the events kept are tracked by the collector"


async def test_a_subscriber_reads_back_each_payload_as_published_and_its_own_copy() -> None:
    bus = InProcessBus()
    nested = {"task_id": "t1", "routing": {"origin": "intent", "share": 0.25}, "tags": ["a", "b"], "n": None}
    await bus.publish("htm.task.created", nested)
    await bus.publish("vault.secret.released", {"secret_id": "s1"})
    [first] = await bus.replay("htm.task.*")
    assert first.topic == "htm.task.created" and first.payload == nested
    first.payload["routing"]["share"] = 1.0  # a subscriber changing what it read changes nobody else's
    [again] = await bus.replay("htm.task.*")
    assert again.payload == nested and again.id == first.id and again.published_at == first.published_at
    assert [e.topic for e in await bus.replay("#")] == ["htm.task.created", "vault.secret.released"]
