"""Property tests of the fair pick (grace.htm.fairness), the reference the PostgreSQL claim mirrors."""

from __future__ import annotations

from fractions import Fraction
from typing import TypedDict

from hypothesis import given, settings
from hypothesis import strategies as st

from grace.htm import fairness
from grace.htm.origins import DEFAULT_SHARES, ORDER, Origin, weights_from_shares

DEFAULT_WEIGHTS = [weights_from_shares(DEFAULT_SHARES)[o] for o in ORDER]
UNLIMITED = 10**9


class Figures(TypedDict):
    waits: list[int]
    max_lag: list[float]


def run_pattern(weights: list[int], backlogged: list[list[bool]]) -> tuple[list[int | None], Figures]:
    """Dispatch one task per step; at step s origin i has work iff backlogged[s][i]. No quotas bind.

    Returns the origin picked at each step and, per origin, the waits (dispatches that went to
    others while it had work) and the running lag (ideal fair service minus actual) at each step.
    """
    slots = [fairness.OriginSlot(i, w, quota=UNLIMITED) for i, w in enumerate(weights)]
    picked: list[int | None] = []
    waiting = [0] * len(weights)
    waits: list[int] = [0] * len(weights)
    lag = [Fraction(0)] * len(weights)
    max_lag = [Fraction(0)] * len(weights)
    for row in backlogged:
        for slot, has in zip(slots, row, strict=True):
            slot.ready = 1 if has else 0
            slot.running = 0
        # The dispatch counter advances only when something is dispatched.
        out = fairness.pick(slots, 1, sum(p is not None for p in picked))
        if not out:
            picked.append(None)
            waiting = [0] * len(weights)
            continue
        chosen = out[0]
        picked.append(chosen)
        active = [i for i, has in enumerate(row) if has]
        total = sum(weights[i] for i in active)
        for i in range(len(weights)):
            if i == chosen or not row[i]:
                waiting[i] = 0
            else:
                waiting[i] += 1
                waits[i] = max(waits[i], waiting[i])
            if row[i]:
                lag[i] += Fraction(weights[i], total)
            else:
                lag[i] = min(lag[i], Fraction(0))  # an idle origin is owed nothing for the time it was idle
        lag[chosen] -= 1
        for i in range(len(weights)):
            max_lag[i] = max(max_lag[i], lag[i])
    return picked, {"waits": waits, "max_lag": [float(x) for x in max_lag]}


def bound(weights: list[int], i: int) -> int:
    """The documented wait bound: the origin's period plus one for each origin as small or smaller."""
    total = sum(weights)
    smaller = sum(1 for j, w in enumerate(weights) if j != i and w <= weights[i])
    return fairness.wait_bound(weights[i], total) - 1 + smaller


@st.composite
def arrival_patterns(draw: st.DrawFn, n_origins: int = 8, max_steps: int = 1500) -> list[list[bool]]:
    """On/off runs per origin, from single dispatches to long stretches."""
    steps = draw(st.integers(min_value=50, max_value=max_steps))
    columns = []
    for _ in range(n_origins):
        column: list[bool] = []
        state = draw(st.booleans())
        while len(column) < steps:
            run = draw(st.integers(min_value=1, max_value=400))
            column.extend([state] * run)
            state = not state if draw(st.integers(0, 9)) < 7 else state
        columns.append(column[:steps])
    return [[columns[i][s] for i in range(n_origins)] for s in range(steps)]


@settings(max_examples=150, deadline=None)
@given(arrival_patterns())
def test_no_backlogged_origin_waits_past_its_bound(pattern: list[list[bool]]) -> None:
    _, figures = run_pattern(DEFAULT_WEIGHTS, pattern)
    for i, waited in enumerate(figures["waits"]):
        assert waited <= bound(DEFAULT_WEIGHTS, i), (ORDER[i], waited)
    # The figure: the 2% origin never waits more than 50 dispatches while it has work.
    assert figures["waits"][ORDER.index(Origin.INTERNAL)] <= 49


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=5000), min_size=2, max_size=8),
    st.data(),
)
def test_any_weights_keep_waits_and_lag_bounded(weights: list[int], data: st.DataObject) -> None:
    pattern = data.draw(arrival_patterns(n_origins=len(weights), max_steps=800))
    _, figures = run_pattern(weights, pattern)
    for i, waited in enumerate(figures["waits"]):
        assert waited <= bound(weights, i), (i, weights, waited)
    # Nobody falls more than two dispatches per origin behind its fair (GPS) share, whatever arrives when.
    assert max(figures["max_lag"]) <= 2 * len(weights)


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1000, max_value=5000))
def test_shares_converge_to_the_configured_ones(steps: int) -> None:
    picked, figures = run_pattern(DEFAULT_WEIGHTS, [[True] * 8 for _ in range(steps)])
    total = sum(DEFAULT_WEIGHTS)
    for i, weight in enumerate(DEFAULT_WEIGHTS):
        got = sum(1 for p in picked if p == i)
        # Within a few dispatches of the exact share: error shrinks as 1/steps.
        assert abs(got - steps * weight / total) <= 3, (ORDER[i], got, steps * weight / total)
    assert max(figures["max_lag"]) <= 3


def test_default_shares_are_the_seeds() -> None:
    shares = {o.value: round(w / sum(DEFAULT_WEIGHTS), 2) for o, w in zip(ORDER, DEFAULT_WEIGHTS, strict=True)}
    assert shares == {
        "user_request": 0.30,
        "intent": 0.25,
        "hunter_alert": 0.15,
        "external_api": 0.10,
        "scheduler": 0.10,
        "filesystem": 0.05,
        "remediation": 0.03,
        "internal": 0.02,
    }


def slots_for(ready: dict[int, int], running: dict[int, int], quotas: dict[int, int]) -> list[fairness.OriginSlot]:
    return [
        fairness.OriginSlot(i, w, ready=ready.get(i, 0), running=running.get(i, 0), quota=quotas.get(i, UNLIMITED))
        for i, w in enumerate(DEFAULT_WEIGHTS)
    ]


def test_an_origin_at_its_quota_waits_while_an_under_quota_origin_has_work() -> None:
    user, internal = ORDER.index(Origin.USER_REQUEST), ORDER.index(Origin.INTERNAL)
    slots = slots_for({user: 100, internal: 100}, {user: 3}, {user: 3, internal: 1})
    # internal runs nothing and is under its quota of 1: it gets the first free slot despite its 2% share.
    assert fairness.pick(slots, 1, 0) == [internal]


def test_idle_capacity_is_lent_and_reclaimed_when_the_owner_has_work() -> None:
    user, internal = ORDER.index(Origin.USER_REQUEST), ORDER.index(Origin.INTERNAL)
    slots = slots_for({user: 100}, {}, {user: 2, internal: 1})
    # Only user_request has work: it borrows every free slot, far past its quota of 2.
    assert fairness.pick(slots, 6, 0) == [user] * 6
    assert slots[user].running == 6
    # internal gets work again: the next free slot goes back to it at once.
    slots[internal].ready = 5
    assert fairness.pick(slots, 1, 6) == [internal]


def test_an_idle_origin_does_not_hoard_credit() -> None:
    user, intent = ORDER.index(Origin.USER_REQUEST), ORDER.index(Origin.INTENT)
    pattern = [[i == user for i in range(8)] for _ in range(500)]
    pattern += [[i in (user, intent) for i in range(8)] for _ in range(200)]
    picked, _ = run_pattern(DEFAULT_WEIGHTS, pattern)
    after = picked[500:]
    # On return, intent gets its share of the two (25/55), not a catch-up burst for its idle time.
    assert abs(after.count(intent) - 200 * 2500 / 5500) <= 3
    assert "".join("i" if p == intent else "u" for p in after[:20]).count("iii") == 0


def test_time_spent_at_its_own_quota_counts_toward_an_origins_wait() -> None:
    user, internal = ORDER.index(Origin.USER_REQUEST), ORDER.index(Origin.INTERNAL)
    slots = slots_for({user: 1000, internal: 100}, {internal: 1}, {internal: 1})
    # internal's one slot is busy: it is passed over for 60 dispatches...
    assert set(fairness.pick(slots, 60, 0)) == {user}
    # ...and the moment its task finishes it is due, ahead of the 30% origin.
    slots[internal].running = 0
    assert fairness.pick(slots, 1, 60) == [internal]


def pick_as_stated(slots: list[fairness.OriginSlot], n: int, seq: int) -> list[int]:
    """The fair pick written as directly as its rule reads (the one the module had first)."""
    total_weight = sum(s.weight for s in slots)
    out: list[int] = []
    for s_no in range(seq, seq + n):
        ready = [s for s in slots if s.ready > 0]
        if not ready:
            break
        candidates = [s for s in ready if s.running < s.quota] or ready
        round_weight = sum(s.weight for s in ready)
        for s in ready:
            s.credit += s.weight
        due = [s for s in candidates if s_no - s.since + 1 >= fairness.wait_bound(s.weight, total_weight)]
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


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 5000),  # weight
            st.integers(-6000, 6000),  # credit
            st.integers(0, 200),  # since
            st.integers(0, 12),  # running
            st.integers(1, 12),  # quota
            st.integers(0, 30),  # ready
        ),
        min_size=1,
        max_size=8,
    ),
    st.integers(0, 60),
    st.integers(0, 300),
)
def test_the_pick_is_its_rule_as_stated(states: list[tuple[int, int, int, int, int, int]], n: int, seq: int) -> None:
    def build() -> list[fairness.OriginSlot]:
        return [fairness.OriginSlot(i, w, c, s, r, q, k) for i, (w, c, s, r, q, k) in enumerate(states)]

    fast, stated = build(), build()
    assert fairness.pick(fast, n, seq) == pick_as_stated(stated, n, seq)
    assert [vars(s) for s in fast] == [vars(s) for s in stated]
