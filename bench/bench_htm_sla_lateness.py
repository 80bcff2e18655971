"""SLA event lateness with 1,000 concurrent deadlines, on SQLite and PostgreSQL: p50/p99/max.

For each backend and shape: 1,000 queued tasks with an SLA (nothing runs them, so every one stays
unfinished and reaches its warning at 80% of its SLA and its violation at 100%), and the SLA
enforcer running as ``grace serve`` runs it (its background loop, the default tick of
``GRACE_HTM_SLA_TICK_SECONDS`` = 1 s, the real clock, the backend's real bus). A subscriber to
``htm.sla.*`` in the same process notes when each event reaches it. An event's lateness is that
moment minus the time its level fell due (``created_at`` + 80% or 100% of ``sla_ms``): what a
listener waits beyond the deadline itself. The enforcer's own decision time (the ``elapsed_ms`` in
the event) is given beside it, so the bus's share is visible.

Shapes: ``spread``, deadlines spread evenly over 2 s (warnings and violations interleave: up to
about 1,000 events a second), and ``burst``, all 1,000 deadlines at the same instant (1,000
warnings, then 1,000 violations, each due at once). Target: p99 <= 1 s. The load average before
and after is recorded: the machine is shared.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import datetime, timedelta
from typing import Any

from bench import htmkit
from grace.htm.sla_levels import VIOLATED, WARNING, due_at

TASKS = int(os.environ.get("GRACE_BENCH_SLA_TASKS", "1000"))
LEAD_MS = 4_000  # from submission to the first warning: time to submit them all and start the enforcer
SPREAD_MS = 2_000
SUBMIT_BATCH = 500
LEVELS = {"warning": WARNING, "violated": VIOLATED}


def percentiles(samples: list[float]) -> dict[str, float]:
    """Nearest-rank p50, p99 and max of ``samples`` (milliseconds)."""
    ordered = sorted(samples)

    def rank(q: float) -> float:
        return round(ordered[max(1, -(-len(ordered) * q // 100)) - 1], 1)

    return {"p50_ms": rank(50), "p99_ms": rank(99), "max_ms": round(ordered[-1], 1), "events": len(ordered)}


def sla_for(i: int, shape: str) -> int:
    """The SLA of task ``i``: its warning falls LEAD_MS after submission, spread or all at once."""
    offset = (i * SPREAD_MS) // TASKS if shape == "spread" else 0
    # Warning at 80%: sla * 0.8 = LEAD_MS + offset.
    return (LEAD_MS + offset) * 5 // 4


async def one(backend: str, shape: str) -> dict[str, Any]:
    url = await htmkit.fresh(backend, f"sla_{shape}")
    try:
        async with htmkit.open_htm(url, sla_stats_seconds=3600) as htm:
            events = await htm.bus.subscribe("htm.sla.*").open()
            arrived: list[tuple[str, dict[str, Any], datetime]] = []
            expected = 2 * TASKS

            async def listen() -> None:
                while len(arrived) < expected:
                    event = await events.get(timeout=60)
                    if event is None:
                        return
                    if event.topic in ("htm.sla.warning", "htm.sla.violated"):
                        arrived.append((event.payload["level"], event.payload, htm.clock.now()))

            listener = asyncio.create_task(listen())
            load_before = os.getloadavg()
            ticks = htmkit.cpu_ticks()
            started = time.perf_counter()
            for start in range(0, TASKS, SUBMIT_BATCH):
                requests = [
                    htm.request("bench.never_run", origin="intent", sla_ms=sla_for(i, shape))
                    for i in range(start, min(TASKS, start + SUBMIT_BATCH))
                ]
                await htm.submit_many(requests, creator=None)
            submit_seconds = time.perf_counter() - started
            htm.start_sla()
            await asyncio.wait_for(listener, timeout=LEAD_MS / 1000 + 120)
            machine = htmkit.cpu_share(ticks, htmkit.cpu_ticks())
            await htm.sla.stop()
    finally:
        if backend == "postgresql":
            await htmkit.drop_postgres(url)
    seen: dict[str, list[float]] = {name: [] for name in LEVELS}
    decided: dict[str, list[float]] = {name: [] for name in LEVELS}
    for level, payload, at in arrived:
        created = datetime.fromisoformat(payload["created_at"])
        due = due_at(created, int(payload["sla_ms"]), LEVELS[level])
        decided_at = created + timedelta(milliseconds=payload["elapsed_ms"])  # the tick's time
        seen[level].append((at - due) / timedelta(milliseconds=1))
        decided[level].append((decided_at - due) / timedelta(milliseconds=1))
    both = seen["warning"] + seen["violated"]
    return {
        "backend": backend,
        "shape": shape,
        "tasks": TASKS,
        "events": len(arrived),
        "submit_seconds": round(submit_seconds, 3),
        "tick_seconds": htm.config.sla_tick_seconds,
        "lateness": percentiles(both) if both else None,
        "lateness_by_level": {k: percentiles(v) for k, v in seen.items() if v},
        "decision_lateness": percentiles(decided["warning"] + decided["violated"]) if both else None,
        "load_average_before_after": [[round(x, 2) for x in load_before], [round(x, 2) for x in os.getloadavg()]],
        "machine": machine,
    }


async def run() -> dict[str, Any]:
    logging.getLogger("grace.htm").setLevel(logging.ERROR)  # a log line per warning and violation otherwise
    load_before = os.getloadavg()
    runs = []
    for backend in ("sqlite", "postgresql"):
        for shape in ("spread", "burst"):
            r = await one(backend, shape)
            late = r["lateness"] or {}
            print(
                f"   {backend} {shape}: {r['events']} events, lateness p50 {late.get('p50_ms')} ms,"
                f" p99 {late.get('p99_ms')} ms, max {late.get('max_ms')} ms (load {r['load_average_before_after'][1]})",
                flush=True,
            )
            runs.append(r)
    summary: dict[str, Any] = {}
    for r in runs:
        key = f"{r['backend']}_{r['shape']}"
        late = r["lateness"] or {}
        summary[f"{key}_p50_ms"] = late.get("p50_ms")
        summary[f"{key}_p99_ms"] = late.get("p99_ms")
        summary[f"{key}_all_events"] = r["events"] == 2 * TASKS
    summary["target_p99_ms"] = 1000
    summary["meets_target"] = all(
        (r["lateness"] or {}).get("p99_ms", float("inf")) <= 1000 and r["events"] == 2 * TASKS for r in runs
    )
    summary["load_average_before_after"] = [[round(x, 2) for x in load_before], [round(x, 2) for x in os.getloadavg()]]
    summary["machine_note"] = f"{os.cpu_count()} CPUs shared with other agents' work"
    summary["postgresql_via"] = htmkit.transport()
    return {"summary": summary, "runs": runs, "tasks": TASKS, "lead_ms": LEAD_MS, "spread_ms": SPREAD_MS}
