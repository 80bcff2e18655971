"""Route decision latency: the pure decision, and a full submit (tag, route, insert, commit), p50/p99."""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench import htmkit
from grace.htm import DEFAULT_SHARES, Origin, Priority, origins, routing

SUBMITS = 1500
DECISIONS = 100_000


def percentiles(samples: list[float]) -> dict[str, float]:
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples) * 1000, 4),
        "p99_ms": round(samples[int(len(samples) * 0.99) - 1] * 1000, 4),
        "max_ms": round(samples[-1] * 1000, 4),
        "samples": len(samples),
    }


def pure_decisions() -> dict[str, float]:
    weights = origins.weights_from_shares(DEFAULT_SHARES)
    load = routing.Load(capacity=50, weights=weights, running={Origin.USER_REQUEST: 12}, waiting={Origin.INTENT})
    window = routing.BurstWindow(600)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    samples = []
    for i in range(DECISIONS):
        at = now + timedelta(milliseconds=i)
        t = time.perf_counter()
        routing.decide(Origin.USER_REQUEST, Priority.NORMAL, now=at, window=window, load=load, defer=timedelta(5))
        samples.append(time.perf_counter() - t)
    return percentiles(samples)


async def submits(backend: str) -> dict[str, float]:
    url = await htmkit.fresh(backend, "route")
    try:
        async with htmkit.open_htm(url, burst_per_minute=600) as htm:
            samples = []
            for i in range(SUBMITS):
                request = htm.request("htm.noop", origin=("user_request", "intent", "scheduler")[i % 3])
                t = time.perf_counter()
                await htm.submit(request, creator=None)
                samples.append(time.perf_counter() - t)
            await htm.events.drain()
            return percentiles(samples)
    finally:
        if backend == "postgresql":
            await htmkit.drop_postgres(url)


async def run() -> dict[str, Any]:
    pure = pure_decisions()
    sqlite = await submits("sqlite")
    postgres = await submits("postgresql")
    return {
        "summary": {
            "decision_p50_ms": pure["p50_ms"],
            "decision_p99_ms": pure["p99_ms"],
            "submit_sqlite_p50_ms": sqlite["p50_ms"],
            "submit_sqlite_p99_ms": sqlite["p99_ms"],
            "submit_postgresql_p50_ms": postgres["p50_ms"],
            "submit_postgresql_p99_ms": postgres["p99_ms"],
        },
        "decision_in_memory": pure,
        "submit_sqlite": sqlite,
        "submit_postgresql": postgres,
        "note": "submit = tag + burst window read + load snapshot + route + insert + commit (burst limit 600/min, "
        "so the window holds up to 600 admissions)",
    }
