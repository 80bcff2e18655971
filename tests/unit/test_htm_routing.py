"""Routing decisions: the burst window's exact delay, and deferral while an origin is starved."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from grace.htm import origins, routing
from grace.htm.origins import Origin
from grace.htm.tasks import Priority

T0 = datetime(2026, 1, 1, tzinfo=UTC)
WEIGHTS = origins.weights_from_shares(origins.DEFAULT_SHARES)


def idle_load(capacity: int = 10) -> routing.Load:
    return routing.Load(capacity=capacity, weights=WEIGHTS, running={}, waiting=set())


def test_burst_window_admits_n_per_minute_then_delays_until_the_oldest_leaves() -> None:
    window = routing.BurstWindow(3)
    load = idle_load()
    decisions = []
    for second in (0, 10, 20, 25):
        now = T0 + timedelta(seconds=second)
        decisions.append(
            routing.decide(Origin.SCHEDULER, Priority.NORMAL, now=now, window=window, load=load, defer=timedelta(5))
        )
    assert [d.route for d in decisions] == ["accepted", "accepted", "accepted", "delayed"]
    # The window frees when the task admitted at t=0 is a minute old: 35 s after t=25.
    assert decisions[-1].delay_seconds == 35.0
    assert decisions[-1].admitted_at == T0 + timedelta(seconds=60)
    assert "Burst limit of 3 scheduler tasks per minute" in decisions[-1].reasoning
    # The next one queues behind it: the t=10 admission frees its slot at t=70.
    nxt = routing.decide(
        Origin.SCHEDULER, Priority.NORMAL, now=T0 + timedelta(seconds=26), window=window, load=load, defer=timedelta(5)
    )
    assert nxt.route == "delayed" and nxt.admitted_at == T0 + timedelta(seconds=70)


def test_no_limit_when_the_burst_limit_is_zero() -> None:
    window = routing.BurstWindow(0)
    for _ in range(1000):
        d = routing.decide(
            Origin.USER_REQUEST, Priority.LOW, now=T0, window=window, load=idle_load(), defer=timedelta()
        )
        assert d.route == "accepted"


def test_over_share_work_is_deferred_while_another_origin_is_starved() -> None:
    load = routing.Load(
        capacity=4,
        weights=WEIGHTS,
        running={Origin.USER_REQUEST: 4},
        waiting={Origin.FILESYSTEM_TRIGGER},
    )
    assert load.starved() == [Origin.FILESYSTEM_TRIGGER]
    d = routing.decide(
        Origin.USER_REQUEST,
        Priority.NORMAL,
        now=T0,
        window=routing.BurstWindow(100),
        load=load,
        defer=timedelta(seconds=5),
    )
    assert d.as_dict() == {
        "origin": "user_request",
        "route": "deferred",
        "queue_name": "normal_queue",
        "quota_used": "4/2",
        "reasoning": "Deferred 5s: filesystem starved while user_request holds 4/2 of its share",
        "delay_seconds": 5.0,
    }
    # The starved origin's own work, and critical work, go straight in.
    own = routing.decide(
        Origin.FILESYSTEM_TRIGGER,
        Priority.NORMAL,
        now=T0,
        window=routing.BurstWindow(100),
        load=load,
        defer=timedelta(5),
    )
    critical = routing.decide(
        Origin.USER_REQUEST, Priority.CRITICAL, now=T0, window=routing.BurstWindow(100), load=load, defer=timedelta(5)
    )
    assert own.route == "accepted" and critical.route == "accepted"


def test_nobody_is_starved_while_capacity_is_free() -> None:
    load = routing.Load(capacity=8, weights=WEIGHTS, running={Origin.USER_REQUEST: 4}, waiting={Origin.INTERNAL})
    assert load.starved() == []
    d = routing.decide(
        Origin.USER_REQUEST, Priority.NORMAL, now=T0, window=routing.BurstWindow(10), load=load, defer=timedelta(5)
    )
    assert d.route == "accepted"
    assert d.quota_used == "4/3"
    assert d.reasoning == "Routed to normal queue (user_request 4/3 running)"


def test_a_delay_is_written_to_the_millisecond_from_its_microseconds_halves_up() -> None:
    # Decimal arithmetic on the microseconds, as htm_submit does in SQL: a float's formatting would
    # round 1.0005 s and 0.0015 s by their binary approximations instead.
    assert routing.seconds_text(timedelta(seconds=35)) == "35.000"
    assert routing.seconds_text(timedelta(microseconds=1_000_500)) == "1.001"
    assert routing.seconds_text(timedelta(microseconds=1_500)) == "0.002"
    assert routing.seconds_text(timedelta(microseconds=1_499)) == "0.001"
    assert routing.seconds_text(timedelta(microseconds=1)) == "0.000"
    assert routing.seconds_text(timedelta(seconds=59, microseconds=999_600)) == "60.000"
