"""Fairness under a flood, and lending idle capacity, on PostgreSQL with one worker pool.

Flood: all 8 origins backlogged while USER_REQUEST submits at 10x what the workers can run
(16 slots, 50 ms tasks: capacity 320 tasks/s; user_request submits 3,200/s from another process). Reported per window
of 1,000 dispatches: each origin's share error (percentage points), Jain's index of
observed/configured share, each origin's longest wait (dispatches to others, and seconds), and
slot utilization.

Lending: only four origins have work for 5 s (the other four are idle), then the idle four return.
Reported: utilization while half are idle (their capacity must be lent), dispatches until each
returning origin is served, and share error once all eight are back.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from bench import htmkit
from grace.htm import DEFAULT_SHARES, HTM, Origin, Task, TaskContext
from grace.htm.origins import ORDER

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = 16
TASK_SECONDS = 0.05
CAPACITY_PER_S = CONCURRENCY / TASK_SECONDS
FLOOD_SECONDS = 12.0
WINDOW = 1000
SHARES = {o: DEFAULT_SHARES[o] for o in ORDER}


async def sleep_handler(ctx: TaskContext) -> None:
    await asyncio.sleep(TASK_SECONDS)


def requests(htm: HTM, origin: Origin, n: int) -> list[Any]:
    return [htm.request("bench.sleep", origin=origin.value) for _ in range(n)]


async def all_dispatched(htm: HTM) -> list[Task]:
    from sqlalchemy import select

    from grace.htm.tables import htm_tasks

    async with htm.db.read() as conn:
        rows = (
            (
                await conn.execute(
                    select(htm_tasks).where(htm_tasks.c.dispatch_seq.is_not(None)).order_by(htm_tasks.c.dispatch_seq)
                )
            )
            .mappings()
            .all()
        )
    return [Task.from_row(r) for r in rows]


def window_figures(seq: list[Task], shares: dict[Origin, float]) -> dict[str, Any]:
    errors_pp: list[float] = []
    jains: list[float] = []
    per_origin_max: dict[str, float] = {o.value: 0.0 for o in shares}
    for start in range(0, len(seq) - WINDOW + 1, WINDOW):
        window = seq[start : start + WINDOW]
        counts = {o: 0 for o in shares}
        for t in window:
            if t.origin in counts:
                counts[t.origin] += 1
        total_share = sum(shares.values())
        errs = []
        for o, share in shares.items():
            err = abs(counts[o] / WINDOW - share / total_share) * 100
            errs.append(err)
            per_origin_max[o.value] = max(per_origin_max[o.value], round(err, 3))
        errors_pp.append(max(errs))
        x = [counts[o] / WINDOW / (share / total_share) for o, share in shares.items()]
        jains.append(sum(x) ** 2 / (len(x) * sum(v * v for v in x)))
    return {
        "windows": len(errors_pp),
        "max_share_error_pp": round(max(errors_pp), 3) if errors_pp else None,
        "mean_of_window_max_share_error_pp": round(sum(errors_pp) / len(errors_pp), 3) if errors_pp else None,
        "share_error_pp_by_origin": per_origin_max,
        "min_jain_index": round(min(jains), 5) if jains else None,
    }


def longest_waits(seq: list[Task]) -> dict[str, dict[str, float]]:
    last: dict[Origin, Task] = {}
    out: dict[str, dict[str, float]] = {o.value: {"dispatches": 0, "seconds": 0.0} for o in ORDER}
    for t in seq:
        prev = last.get(t.origin)
        if prev is not None:
            gap = (t.dispatch_seq or 0) - (prev.dispatch_seq or 0) - 1
            secs = (t.started_at - prev.started_at).total_seconds() if t.started_at and prev.started_at else 0.0
            o = out[t.origin.value]
            o["dispatches"] = max(o["dispatches"], gap)
            o["seconds"] = round(max(o["seconds"], secs), 3)
        last[t.origin] = t
    return out


def utilization(seq: list[Task], start: float | None = None, end: float | None = None) -> float:
    done = [t for t in seq if t.started_at and t.finished_at]
    if not done:
        return 0.0
    lo = start if start is not None else min(t.started_at.timestamp() for t in done)  # type: ignore[union-attr]
    hi = end if end is not None else max(t.finished_at.timestamp() for t in done)  # type: ignore[union-attr]
    busy = 0.0
    for t in done:
        s = max(lo, t.started_at.timestamp())  # type: ignore[union-attr]
        e = min(hi, t.finished_at.timestamp())  # type: ignore[union-attr]
        busy += max(0.0, e - s)
    return round(busy / (CONCURRENCY * (hi - lo)), 4)


async def flood() -> dict[str, Any]:
    url = await htmkit.fresh_postgres("fair_flood")
    try:
        async with htmkit.open_htm(url, concurrency=CONCURRENCY, claim_batch=CONCURRENCY, events=False) as htm:
            htm.handlers.register("bench.sleep", sleep_handler)
            for origin in ORDER[1:]:
                await htm.submit_many(requests(htm, origin, int(FLOOD_SECONDS * CAPACITY_PER_S)), creator=None)
            await htm.submit_many(requests(htm, Origin.USER_REQUEST, int(CAPACITY_PER_S)), creator=None)
            await htm.start_workers()
            # The flood comes from another process, as API traffic would: 10x what the workers can run.
            flooder = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.htm_flooder",
                url,
                Origin.USER_REQUEST.value,
                str(int(10 * CAPACITY_PER_S)),
                str(FLOOD_SECONDS),
                cwd=str(ROOT),
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await flooder.communicate()
            submitted = int(out.decode().strip() or 0)
            await htm.stop_workers(grace=1.0)
            stats = await htm.routing_stats()
            seq = await all_dispatched(htm)
            still_waiting = {o: v["total_queued"] for o, v in stats["origins"].items()}
        backlogged = all(n > 0 for n in still_waiting.values())
        figures = window_figures(seq, SHARES)
        return {
            "dispatches": len(seq),
            "all_origins_backlogged_throughout": backlogged,
            "user_request_submitted_per_s": round(submitted / FLOOD_SECONDS),
            "capacity_tasks_per_s": CAPACITY_PER_S,
            **figures,
            "longest_wait": longest_waits(seq),
            "utilization": utilization(seq),
            "still_queued_at_end": still_waiting,
        }
    finally:
        await htmkit.drop_postgres(url)


async def lending() -> dict[str, Any]:
    url = await htmkit.fresh_postgres("fair_lend")
    busy, idle = ORDER[:4], ORDER[4:]
    phase = 5.0
    try:
        async with htmkit.open_htm(url, concurrency=CONCURRENCY, claim_batch=CONCURRENCY, events=False) as htm:
            htm.handlers.register("bench.sleep", sleep_handler)
            for origin in busy:
                await htm.submit_many(requests(htm, origin, int(2 * phase * CAPACITY_PER_S)), creator=None)
            await htm.start_workers()
            t0 = time.time()
            await asyncio.sleep(phase)
            t_return = time.time()
            for origin in idle:
                await htm.submit_many(requests(htm, origin, int(phase * CAPACITY_PER_S)), creator=None)
            await asyncio.sleep(phase)
            t_end = time.time()
            await htm.stop_workers(grace=1.0)
            seq = await all_dispatched(htm)
        before = [t for t in seq if t.started_at and t.started_at.timestamp() < t_return]
        after = [t for t in seq if t.started_at and t.started_at.timestamp() >= t_return]
        reclaim: dict[str, int | None] = {}
        for origin in idle:
            # Dispatches to others between the origin's first task arriving and its first dispatch.
            mine = [t for t in after if t.origin is origin]
            first = mine[0] if mine else None
            arrived = min((t.created_at for t in mine), default=None)
            first_start = first.started_at if first is not None else None
            reclaim[origin.value] = (
                None
                if first_start is None or arrived is None
                else sum(1 for t in after if t.started_at is not None and arrived <= t.started_at < first_start)
            )
        busy_shares = {o: SHARES[o] for o in busy}
        counts_before = {o.value: sum(1 for t in before if t.origin is o) for o in ORDER}
        return {
            "utilization_while_half_idle": utilization(before, t0 + 0.5, t_return),
            "utilization_after_return": utilization(after, t_return, t_end - 0.2),
            "dispatches_while_half_idle": len(before),
            "idle_origins_dispatched_while_idle": sum(counts_before[o.value] for o in idle),
            "busy_origins_share_error_while_half_idle": window_figures(before[-WINDOW:], busy_shares),
            "dispatches_until_returning_origin_served": reclaim,
            "after_return": window_figures(after[200:], SHARES),
        }
    finally:
        await htmkit.drop_postgres(url)


async def run() -> dict[str, Any]:
    flood_result = await flood()
    print(f"   flood: {flood_result['dispatches']} dispatches", flush=True)
    lending_result = await lending()
    summary = {
        "max_share_error_pp_per_1000": flood_result["max_share_error_pp"],
        "min_jain_index": flood_result["min_jain_index"],
        "internal_longest_wait_dispatches": flood_result["longest_wait"]["internal"]["dispatches"],
        "internal_longest_wait_seconds": flood_result["longest_wait"]["internal"]["seconds"],
        "utilization_flood": flood_result["utilization"],
        "all_origins_backlogged_throughout": flood_result["all_origins_backlogged_throughout"],
        "utilization_while_half_idle": lending_result["utilization_while_half_idle"],
        "dispatches_until_returning_origin_served": lending_result["dispatches_until_returning_origin_served"],
        "share_error_pp_after_return": lending_result["after_return"]["max_share_error_pp"],
    }
    return {"summary": summary, "flood": flood_result, "lending": lending_result}
