"""A leaner claim on PostgreSQL, and fewer index entries written per task.

Revision ID: 0006_htm_lean_claim
Revises: 0005_htm_finish_claim

What a claim costs on PostgreSQL is mostly per statement and per index entry, so:

- ``htm_claim`` runs four statements instead of up to eighteen: the counter's lock, a probe for
  waiting tasks that are due (updated only when there are some), one read of every origin's state,
  and one statement that takes the picked tasks of every origin and saves the origins' state and
  the counter. The fair pick is the same arithmetic in three passes over the origins instead of five.
  A claim that finds nothing writes nothing.
- A claim on its own (``p_async_commit``) commits without waiting for the write-ahead log to reach
  the disk, so the counter's lock is not held through a flush. If the database server itself
  crashes, the last claims may be undone: those tasks are queued again, and the outcome their first
  worker reports is rejected as late, so a task can run twice, as after a lost lease, and none is
  lost. Outcomes, with or without a claim, and submissions still wait for the flush.
- ``htm_finish_claim`` locks and updates the finished tasks in one statement driven by their ids,
  reading each one's outcome by its place in the arrays instead of joining them.
- Both run with bitmap scans and hash joins off. Without fresh statistics (autovacuum off, or a
  table that just grew) the planner otherwise reads every task that ever ran through the running
  tasks' partial index: a bitmap scan never marks the dead entries it meets, so its cost grows with
  every task run until the next vacuum, while a plain index scan marks them and skips them after.
- ``htm_claim`` keeps one generic plan per session: planning its statements cost more than running
  them. The two that read many tasks (the origins' state and the take) also read ``htm_origins``,
  whose vacuum by the workers' upkeep (every second) makes PostgreSQL plan them afresh, so a plan
  made while the task table was small does not outlive it. ``htm_finish_claim``'s update reads
  only ``htm_tasks`` and is planned on every call: a plan kept from a session's first call, on a
  nearly empty table, scanned the whole table ever after.
- Three indexes become partial: tasks without a creator, an intent or a finish time (a queued or
  running task) add no entry to them, and every query that uses them names a value.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from grace.storage.migrate import revision_module

revision = "0006_htm_lean_claim"
down_revision = "0005_htm_finish_claim"
branch_labels = None
depends_on = None

CLAIM_ARGS = "text, integer, timestamptz, double precision, integer, integer, timestamptz"

# The same steps and the same fair pick as before (grace/htm/fairness.py is the reference; a test
# checks both backends against it). Picks are recorded as (origin, rank within the origin); the take
# numbers each origin's tasks by priority and age and gives the r-th of them the r-th pick's slot.
CLAIM_FUNCTION = """
CREATE FUNCTION htm_claim(
    p_worker text,
    p_n integer,
    p_now timestamptz,
    p_lease_seconds double precision,
    p_capacity integer,
    p_fallback_capacity integer,
    p_live_after timestamptz,
    p_async_commit boolean DEFAULT false
) RETURNS SETOF htm_tasks
LANGUAGE plpgsql
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    v_seq bigint;
    v_cap integer;
    v_total integer;
    v_k integer;
    o_name text[];
    o_weight integer[];
    o_credit bigint[];
    o_since bigint[];
    o_running integer[];
    o_ready integer[];
    o_quota integer[];
    o_bound integer[];
    o_planned integer[];
    v_pick_origin text[] := '{}';
    v_pick_rank integer[] := '{}';
    v_planned integer := 0;
    v_round integer;
    v_any_ready boolean;
    v_any_under boolean;
    v_best integer;
    v_due integer;
    v_sno bigint;
    j integer;
    i integer;
BEGIN
    IF p_async_commit THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    SELECT dispatched INTO v_seq FROM htm_scheduler WHERE id = 1 FOR UPDATE;
    IF v_seq IS NULL THEN
        RAISE EXCEPTION 'htm_scheduler row missing; start the task manager once to create it';
    END IF;

    IF EXISTS (SELECT 1 FROM htm_tasks WHERE status IN ('delayed', 'deferred') AND queued_at <= p_now) THEN
        UPDATE htm_tasks SET status = 'queued'
         WHERE status IN ('delayed', 'deferred') AND queued_at <= p_now;
    END IF;

    SELECT array_agg(o.origin ORDER BY o.position),
           array_agg(o.weight ORDER BY o.position),
           array_agg(o.credit ORDER BY o.position),
           array_agg(o.since ORDER BY o.position),
           array_agg(r.n::integer ORDER BY o.position),
           array_agg(q.n::integer ORDER BY o.position),
           sum(o.weight)::integer,
           CASE WHEN p_capacity > 0 THEN p_capacity ELSE (
               SELECT coalesce(sum(w.concurrency), 0)::integer FROM htm_workers w
                WHERE w.heartbeat_at >= p_live_after AND NOT w.stopping
           ) END
      INTO o_name, o_weight, o_credit, o_since, o_running, o_ready, v_total, v_cap
      FROM htm_origins o
      CROSS JOIN LATERAL (
            SELECT count(*) AS n FROM htm_tasks r WHERE r.status = 'running' AND r.origin = o.origin
      ) AS r
      CROSS JOIN LATERAL (
            SELECT count(*) AS n FROM (
                SELECT 1 FROM htm_tasks t WHERE t.status = 'queued' AND t.origin = o.origin LIMIT p_n
            ) AS x
      ) AS q;

    v_k := coalesce(array_length(o_name, 1), 0);
    IF v_k = 0 THEN
        RETURN;
    END IF;
    IF v_cap = 0 THEN
        v_cap := p_fallback_capacity;
    END IF;
    o_quota := array_fill(0, ARRAY[v_k]);
    o_bound := array_fill(0, ARRAY[v_k]);
    o_planned := array_fill(0, ARRAY[v_k]);
    FOR i IN 1..v_k LOOP
        o_quota[i] := greatest(1, (o_weight[i] * v_cap + v_total - 1) / v_total);
        o_bound[i] := (v_total + o_weight[i] - 1) / o_weight[i];
    END LOOP;

    FOR j IN 0..p_n - 1 LOOP
        v_sno := v_seq + j;
        v_round := 0;
        v_any_ready := false;
        v_any_under := false;
        FOR i IN 1..v_k LOOP
            IF o_ready[i] > 0 THEN
                v_any_ready := true;
                v_round := v_round + o_weight[i];
                IF o_running[i] < o_quota[i] THEN
                    v_any_under := true;
                END IF;
            END IF;
        END LOOP;
        EXIT WHEN NOT v_any_ready;

        -- One pass: every origin with work earns its weight; among the candidates (under quota,
        -- or all when none is) the most overdue past its wait bound wins, else the most credit.
        v_best := 0;
        v_due := 0;
        FOR i IN 1..v_k LOOP
            CONTINUE WHEN o_ready[i] <= 0;
            o_credit[i] := o_credit[i] + o_weight[i];
            CONTINUE WHEN v_any_under AND o_running[i] >= o_quota[i];
            IF v_sno - o_since[i] + 1 >= o_bound[i] AND (
                v_due = 0 OR o_weight[i] < o_weight[v_due]
                OR (o_weight[i] = o_weight[v_due] AND o_since[i] < o_since[v_due])
            ) THEN
                v_due := i;
            END IF;
            IF v_best = 0 OR o_credit[i] > o_credit[v_best]
               OR (o_credit[i] = o_credit[v_best] AND o_weight[i] > o_weight[v_best]) THEN
                v_best := i;
            END IF;
        END LOOP;
        IF v_due > 0 THEN
            v_best := v_due;
        END IF;

        o_credit[v_best] := o_credit[v_best] - v_round;
        o_ready[v_best] := o_ready[v_best] - 1;
        o_running[v_best] := o_running[v_best] + 1;
        FOR i IN 1..v_k LOOP
            IF o_ready[i] <= 0 AND i <> v_best THEN
                o_credit[i] := least(o_credit[i], 0);
            END IF;
            IF i = v_best OR o_ready[i] <= 0 THEN
                o_since[i] := v_sno + 1;
            END IF;
            o_credit[i] := greatest(-v_round, least(v_round, o_credit[i]));
        END LOOP;

        o_planned[v_best] := o_planned[v_best] + 1;
        v_pick_origin := v_pick_origin || o_name[v_best];
        v_pick_rank := v_pick_rank || o_planned[v_best];
        v_planned := v_planned + 1;
    END LOOP;

    IF v_planned = 0 THEN
        RETURN;  -- nothing to take: the state is unchanged
    END IF;

    -- Take every picked origin's next tasks by priority and age, and save the origins' state and
    -- the counter, in one statement. Numbers of picks whose task a cancel took at that instant
    -- are left unused.
    RETURN QUERY
    WITH wanted AS (
        SELECT w.origin, count(*)::integer AS k FROM unnest(v_pick_origin) AS w(origin) GROUP BY w.origin
    ), picked AS (
        SELECT p.seq, w.origin, row_number() OVER (PARTITION BY w.origin ORDER BY p.priority_rank, p.seq) AS rn
          FROM wanted w
          CROSS JOIN LATERAL (
              SELECT t.seq, t.priority_rank FROM htm_tasks t
               WHERE t.status = 'queued' AND t.origin = w.origin
               ORDER BY t.priority_rank, t.seq
               LIMIT w.k
               FOR UPDATE SKIP LOCKED
          ) AS p
    ), slots AS (
        SELECT s.origin, s.rn, s.ord - 1 AS slot
          FROM unnest(v_pick_origin, v_pick_rank) WITH ORDINALITY AS s(origin, rn, ord)
    ), taken AS (
        UPDATE htm_tasks h
           SET status = 'running',
               worker_id = p_worker,
               attempts = h.attempts + 1,
               started_at = p_now,
               lease_expires_at = p_now + make_interval(secs => p_lease_seconds),
               dispatch_seq = v_seq + s.slot
          FROM picked p
          JOIN slots s ON s.origin = p.origin AND s.rn = p.rn
         WHERE h.seq = p.seq
        RETURNING h.*
    ), origins_saved AS (
        UPDATE htm_origins o
           SET credit = v.credit,
               since = v.since,
               dispatched = o.dispatched + (SELECT count(*) FROM taken x WHERE x.origin = o.origin)
          FROM unnest(o_name, o_credit, o_since) AS v(origin, credit, since)
         WHERE o.origin = v.origin
    ), counter_saved AS (
        UPDATE htm_scheduler SET dispatched = v_seq + v_planned WHERE id = 1
    )
    SELECT * FROM taken;
END;
$fn$;
"""

# Outcomes first (their rows locked in seq order by the statement that updates them), then a claim
# into the slots they free. The counter's lock is taken before any task row when claiming (see the
# lock order in grace/htm/queue.py).
FINISH_CLAIM_FUNCTION = """
CREATE OR REPLACE FUNCTION htm_finish_claim(
    p_worker text,
    p_task_ids text[],
    p_attempts integer[],
    p_statuses text[],
    p_finished timestamptz[],
    p_queued timestamptz[],
    p_results text[],
    p_errors text[],
    p_give_back integer[],
    p_n integer,
    p_now timestamptz,
    p_lease_seconds double precision,
    p_capacity integer,
    p_fallback_capacity integer,
    p_live_after timestamptz
) RETURNS SETOF htm_tasks
LANGUAGE plpgsql
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET plan_cache_mode = force_custom_plan
AS $fn$
BEGIN
    IF p_n > 0 THEN
        PERFORM 1 FROM htm_scheduler WHERE id = 1 FOR UPDATE;
    END IF;
    RETURN QUERY
    -- A join from the ids (not task_id = ANY): the plan is kept for the session, and for a
    -- scalar array the planner picks a sequential scan while the table is small.
    WITH locked AS MATERIALIZED (
        SELECT t.seq, x.i
          FROM unnest(p_task_ids) WITH ORDINALITY AS x(task_id, i)
          JOIN htm_tasks t ON t.task_id = x.task_id
         ORDER BY t.seq
           FOR UPDATE OF t
    )
    UPDATE htm_tasks AS t
       SET status = p_statuses[l.i],
           finished_at = p_finished[l.i],
           queued_at = coalesce(p_queued[l.i], t.queued_at),
           result = CAST(p_results[l.i] AS json),
           error = p_errors[l.i],
           lease_expires_at = NULL,
           worker_id = CASE WHEN p_statuses[l.i] IN ('delayed', 'queued') THEN NULL ELSE t.worker_id END,
           attempts = t.attempts - p_give_back[l.i]
      FROM locked l
     WHERE t.seq = l.seq
       -- IS NOT DISTINCT FROM (status is never null) keeps the running tasks' partial index from
       -- driving this update: the planner would read every running task of every worker.
       AND t.status IS NOT DISTINCT FROM 'running' AND t.worker_id = p_worker AND t.attempts = p_attempts[l.i]
    RETURNING t.*;
    IF p_n > 0 THEN
        RETURN QUERY
        SELECT * FROM htm_claim(p_worker, p_n, p_now, p_lease_seconds, p_capacity, p_fallback_capacity, p_live_after);
    END IF;
END;
$fn$;
"""

PARTIAL = (
    ("ix_htm_tasks_created_by", ["created_by", "seq"], "created_by IS NOT NULL"),
    ("ix_htm_tasks_intent_id", ["intent_id"], "intent_id IS NOT NULL"),
    ("ix_htm_tasks_finished_at", ["finished_at"], "finished_at IS NOT NULL"),
)


def upgrade() -> None:
    for name, columns, where in PARTIAL:
        op.drop_index(name, table_name="htm_tasks")
        op.create_index(name, "htm_tasks", columns, postgresql_where=sa.text(where), sqlite_where=sa.text(where))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION htm_claim({CLAIM_ARGS})")
        op.execute(CLAIM_FUNCTION)
        op.execute(FINISH_CLAIM_FUNCTION)


def downgrade() -> None:
    for name, columns, _ in PARTIAL:
        op.drop_index(name, table_name="htm_tasks")
        op.create_index(name, "htm_tasks", columns)
    if op.get_bind().dialect.name == "postgresql":
        # The earlier revisions' functions, as those migrations created them.
        op.execute(f"DROP FUNCTION htm_claim({CLAIM_ARGS}, boolean)")
        op.execute(revision_module("0002_htm").CLAIM_FUNCTION)
        op.execute(revision_module("0005_htm_finish_claim").FINISH_CLAIM_FUNCTION)
