"""A settled process keeps what start-up made out of the garbage collector's walks."""

from __future__ import annotations

import gc

from grace import memory


def test_settle_sets_the_objects_alive_now_aside_and_new_ones_are_still_collected() -> None:
    try:
        before = len(gc.get_objects())
        frozen = memory.settle()
        assert frozen >= before // 2
        # Collections now walk only what was made since: the objects set aside are not among them.
        assert len(gc.get_objects()) < before - frozen // 2

        class Node:
            other: object = None

        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle made after settling is still found and freed
        del a, b
        gc.collect()
        assert not [o for o in gc.get_objects() if isinstance(o, Node)]
    finally:
        gc.unfreeze()
