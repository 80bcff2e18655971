"""A settled process keeps what start-up made out of the garbage collector's walks."""

from __future__ import annotations

import gc

from grace import memory


def test_settle_sets_the_objects_alive_now_aside_and_new_ones_are_still_collected() -> None:
    thresholds = gc.get_threshold()
    try:
        before = len(gc.get_objects())
        frozen = memory.settle()
        assert frozen >= before // 2
        # Collections now walk only what was made since: the objects set aside are not among them.
        assert len(gc.get_objects()) < before - frozen // 2
        assert gc.get_threshold() == (memory.YOUNG_THRESHOLD, *thresholds[1:])

        class Node:
            other: object = None

        def pair() -> None:
            a, b = Node(), Node()
            a.other, b.other = b, a  # a cycle: reference counting alone never frees it

        # Without being asked, the collector still runs, every YOUNG_THRESHOLD new objects.
        for _ in range(3 * memory.YOUNG_THRESHOLD):
            pair()
        left = len([o for o in gc.get_objects() if isinstance(o, Node)])
        assert left < memory.YOUNG_THRESHOLD * 2
        gc.collect()
        assert not [o for o in gc.get_objects() if isinstance(o, Node)]
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
