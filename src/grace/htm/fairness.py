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
    in the origins' fixed order. Each dispatch, in words (the module docstring gives the why):

    1. the origins with work are the *ready* ones; the *candidates* are those under their quota,
       or every ready one when none is;
    2. every ready origin earns its weight in credit;
    3. a candidate that has waited its bound is *due*; the due one with the smallest weight, then
       the longest waiting, then the first in order wins; when none is due, the candidate with the
       most credit, then the largest weight, then the first in order;
    4. the winner pays the round (the weights of the ready origins) and its wait restarts; an
       origin without work forfeits positive credit and its wait restarts too; every credit is then
       kept within the round, ``[-round, round]``.

    The state is kept in plain lists while picking (a claim on SQLite runs this for every task it
    takes), and written back to ``slots`` at the end.
    """
    k = len(slots)
    total_weight = sum(s.weight for s in slots)
    weight = [s.weight for s in slots]
    credit = [s.credit for s in slots]
    since = [s.since for s in slots]
    running = [s.running for s in slots]
    quota = [s.quota for s in slots]
    ready = [s.ready for s in slots]
    bound = [wait_bound(w, total_weight) for w in weight]
    positions = range(k)
    out: list[int] = []
    for s_no in range(seq, seq + n):
        live = [i for i in positions if ready[i] > 0]
        if not live:
            break
        candidates = [i for i in live if running[i] < quota[i]] or live
        round_weight = 0
        for i in live:
            credit[i] += weight[i]
            round_weight += weight[i]
        best = -1
        for i in candidates:  # in order, so a strict comparison keeps the first of equals
            if s_no - since[i] + 1 >= bound[i] and (
                best < 0 or weight[i] < weight[best] or (weight[i] == weight[best] and since[i] < since[best])
            ):
                best = i
        if best < 0:
            for i in candidates:
                if best < 0 or credit[i] > credit[best] or (credit[i] == credit[best] and weight[i] > weight[best]):
                    best = i
        credit[best] -= round_weight
        ready[best] -= 1
        running[best] += 1
        for i in positions:
            if ready[i] <= 0:
                if i != best and credit[i] > 0:
                    credit[i] = 0
                since[i] = s_no + 1
            elif i == best:
                since[i] = s_no + 1
            if credit[i] > round_weight:
                credit[i] = round_weight
            elif credit[i] < -round_weight:
                credit[i] = -round_weight
        out.append(slots[best].index)
    for i, s in enumerate(slots):
        s.credit, s.since, s.running, s.ready = credit[i], since[i], running[i], ready[i]
    return out
