"""The fair pick: which origin's task to dispatch next.

Smooth weighted round robin over the origins that have claimable work, with
three additions:

- **Quotas.** An origin already running its guaranteed share of capacity
  (``running >= quota``) is passed over while any origin under its quota has
  work. When none has, the free slot is lent to the over-quota origins in the
  same weighted order (work-conserving), and it comes back as soon as an
  under-quota origin has work again.
- **A wait bound.** An origin that has waited ``ceil(total_weight / weight) - 1``
  dispatches since its last one (or since it last had work; time spent at its own
  quota counts, so it goes first as soon as its slot frees) is picked next;
  when several are due, the smallest share goes first, then the longest waiting. With the default shares
  the 2% origin is therefore served at least once in every 50 dispatches.
- **No hoarding.** An idle origin forfeits positive credit (it keeps any debt),
  and credit stays within one dispatch of the current round, ``[-T, T]`` for
  ``T`` the weight of the origins with work: a debt run up while big origins
  were busy would otherwise cost a small origin many dispatches once they leave.

Everything is integer arithmetic on weights in basis points, so the PostgreSQL
claim function (``htm_claim``, migrations ``0006_htm_lean_claim`` and ``0007_htm_single_claim``)
computes exactly the same sequence; tests check that on both backends, for claims of one task and of several.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["OriginSlot", "pick", "wait_bound"]


@dataclass(eq=False)
class OriginSlot:
    """One origin's scheduling state during a claim."""

    index: int
    weight: int
    credit: int = 0
    since: int = 0
    running: int = 0
    quota: int = 1
    ready: int = 0


def wait_bound(weight: int, total_weight: int) -> int:
    """Return the most dispatches an eligible origin waits before it is served (its period)."""
    return -(-total_weight // weight)


def pick(slots: Sequence[OriginSlot], n: int, seq: int) -> list[int]:
    """Pick up to ``n`` dispatches starting at global dispatch number ``seq``; return slot indexes in order.

    ``slots`` are updated in place (credit, since, running, ready) and must be
    in the origins' fixed order.
    """
    total_weight = sum(s.weight for s in slots)
    out: list[int] = []
    for s_no in range(seq, seq + n):
        ready = [s for s in slots if s.ready > 0]
        if not ready:
            break
        under = [s for s in ready if s.running < s.quota]
        candidates = under or ready
        round_weight = sum(s.weight for s in ready)
        for s in ready:
            s.credit += s.weight
        due = [s for s in candidates if s_no - s.since + 1 >= wait_bound(s.weight, total_weight)]
        if due:
            best = min(due, key=lambda s: (s.weight, s.since, s.index))
        else:
            best = max(candidates, key=lambda s: (s.credit, s.weight, -s.index))
        best.credit -= round_weight
        best.ready -= 1
        best.running += 1
        for s in slots:
            if s.ready <= 0 and s is not best:
                s.credit = min(s.credit, 0)
            if s is best or s.ready <= 0:
                s.since = s_no + 1
            s.credit = max(-round_weight, min(round_weight, s.credit))
        out.append(best.index)
    return out
