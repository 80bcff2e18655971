"""Submissions routed and inserted by PostgreSQL in one call: the function ``htm_submit``.

Revision ID: 0019_htm_submit
Revises: 0018_htm_outbox

A group of submissions on PostgreSQL took each of its origins' routing locks
(``pg_advisory_xact_lock``), read the origins' load and burst windows, decided each task in Python,
inserted the tasks and committed: five or more round trips, with the locks held across them. With
``grace serve --workers 2`` one process's group held an origin's lock while its event loop got round
to sending the next statement, and the other process's groups waited: two processes submitted
slower than one. ``htm_submit`` does the same in one statement (the same locks, the same decisions
as ``grace/htm/routing.py``, the same rows and ``htm.task.created`` events), so the locks are held
only while the server runs it. SQLite keeps routing in Python: its write lock is in the process.
"""

from __future__ import annotations

from alembic import op

revision = "0019_htm_submit"
down_revision = "0018_htm_outbox"
branch_labels = None
depends_on = None

SUBMIT_FUNCTION = """
CREATE OR REPLACE FUNCTION htm_submit(
    p_now timestamptz,
    p_order text[],
    p_weights integer[],
    p_bursts integer[],
    p_lock_keys bigint[],
    p_capacity integer,
    p_fallback_capacity integer,
    p_live_after timestamptz,
    p_defer_us bigint,
    p_defer_text text,
    p_defer_json text,
    p_event_topic text,
    p_wake_channel text,
    p_task_id text[],
    p_task_type text[],
    p_priority text[],
    p_priority_rank smallint[],
    p_origin text[],
    p_origin_rule text[],
    p_payload text[],
    p_data_size_bytes bigint[],
    p_created_by text[],
    p_created_by_name text[],
    p_intent_id text[],
    p_sla_ms bigint[],
    p_deadline timestamptz[],
    p_max_attempts integer[],
    p_timeout_seconds double precision[],
    p_sla_due_at timestamptz[]
) RETURNS TABLE (r_route text, r_quota_used text, r_reasoning text, r_admitted_at timestamptz)
LANGUAGE plpgsql
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    n integer := coalesce(array_length(p_task_id, 1), 0);
    k integer := array_length(p_order, 1);
    v_key bigint;
    v_cap integer;
    v_total bigint := 0;
    v_sum integer := 0;
    v_full boolean;
    v_running integer[];
    v_quota integer[];
    v_waiting boolean[];
    v_oi integer[];
    v_count integer[];
    v_heap timestamptz[] := '{}';
    v_off integer[];
    v_size integer[];
    v_win timestamptz[];
    v_route text[] := '{}';
    v_used text[] := '{}';
    v_reason text[] := '{}';
    v_admitted timestamptz[] := '{}';
    v_delay text[] := '{}';
    v_any_queued boolean := false;
    v_slot timestamptz;
    v_at timestamptz;
    v_us bigint;
    v_ms bigint;
    v_starved text;
    v_lim integer;
    v_o integer;
    v_s integer;
    v_x timestamptz;
    v_tmp timestamptz;
    i integer;
    j integer;
    c integer;
    p integer;
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    FOREACH v_key IN ARRAY p_lock_keys LOOP
        PERFORM pg_advisory_xact_lock(v_key);
    END LOOP;

    -- The load (grace.htm.routing.load): capacity, running counts, quotas.
    IF p_capacity > 0 THEN
        v_cap := p_capacity;
    ELSE
        SELECT coalesce(sum(w.concurrency), 0)::integer INTO v_cap
          FROM htm_workers w WHERE w.heartbeat_at >= p_live_after AND NOT w.stopping;
        IF v_cap = 0 THEN
            v_cap := greatest(1, p_fallback_capacity);
        END IF;
    END IF;
    SELECT array_agg((SELECT count(*) FROM htm_tasks r WHERE r.status = 'running' AND r.origin = o.name)::integer
                     ORDER BY o.i)
      INTO v_running
      FROM unnest(p_order) WITH ORDINALITY AS o(name, i);
    FOR j IN 1..k LOOP
        v_total := v_total + p_weights[j];
        v_sum := v_sum + v_running[j];
    END LOOP;
    v_quota := array_fill(0, ARRAY[k]);
    FOR j IN 1..k LOOP
        v_quota[j] := greatest(1, (p_weights[j]::bigint * v_cap + v_total - 1) / v_total)::integer;
    END LOOP;
    v_full := v_sum >= v_cap;
    IF v_full THEN
        SELECT array_agg(coalesce((
                   SELECT true FROM htm_tasks t WHERE t.status = 'queued' AND t.origin = o.name LIMIT 1
               ), false) ORDER BY o.i)
          INTO v_waiting
          FROM unnest(p_order) WITH ORDINALITY AS o(name, i);
    ELSE
        v_waiting := array_fill(false, ARRAY[k]);
    END IF;

    -- Each task's origin, and the burst windows of the group's origins (BurstWindow.load).
    SELECT array_agg(array_position(p_order, u.origin) ORDER BY u.i) INTO v_oi
      FROM unnest(p_origin) WITH ORDINALITY AS u(origin, i);
    v_count := array_fill(0, ARRAY[k]);
    FOR i IN 1..n LOOP
        IF v_oi[i] IS NULL THEN
            RAISE EXCEPTION 'htm_submit: unknown origin %', p_origin[i];
        END IF;
        v_count[v_oi[i]] := v_count[v_oi[i]] + 1;
    END LOOP;
    v_off := array_fill(0, ARRAY[k]);
    v_size := array_fill(0, ARRAY[k]);
    FOR j IN 1..k LOOP
        IF v_count[j] > 0 AND p_bursts[j] > 0 THEN
            SELECT coalesce(array_agg(s.a ORDER BY s.a), '{}') INTO v_win
              FROM (SELECT t.admitted_at AS a FROM htm_tasks t
                     WHERE t.origin = p_order[j] AND t.admitted_at > p_now - interval '60 seconds'
                     ORDER BY t.admitted_at DESC LIMIT p_bursts[j]) s;
            v_off[j] := coalesce(array_length(v_heap, 1), 0);
            v_size[j] := coalesce(array_length(v_win, 1), 0);
            -- Ascending order is already a min-heap; room for what the group can add, up to the limit.
            v_heap := v_heap || v_win
                || array_fill('-infinity'::timestamptz, ARRAY[least(p_bursts[j] - v_size[j], v_count[j])]);
        END IF;
    END LOOP;

    -- Each task in order (grace.htm.routing.decide).
    FOR i IN 1..n LOOP
        j := v_oi[i];
        v_lim := p_bursts[j];
        v_o := v_off[j];
        v_slot := p_now;
        IF v_lim > 0 AND v_size[j] >= v_lim THEN
            v_slot := greatest(p_now, v_heap[v_o + 1] + interval '60 seconds');
        END IF;
        v_used[i] := v_running[j] || '/' || v_quota[j];
        v_starved := NULL;
        IF v_running[j] >= v_quota[j] AND v_full THEN
            FOR c IN 1..k LOOP
                IF c <> j AND v_waiting[c] AND v_running[c] < v_quota[c] THEN
                    v_starved := coalesce(v_starved || ', ', '') || p_order[c];
                END IF;
            END LOOP;
        END IF;
        IF v_slot > p_now THEN
            v_us := (extract(epoch FROM v_slot) - extract(epoch FROM p_now)) * 1000000;
            v_ms := (v_us + 500) / 1000;
            v_route[i] := 'delayed';
            v_reason[i] := 'Burst limit of ' || v_lim || ' ' || p_order[j] || ' tasks per minute reached; delayed '
                || (v_ms / 1000) || '.' || lpad((v_ms % 1000)::text, 3, '0') || 's until the window frees';
            v_at := v_slot;
            v_delay[i] := trim_scale(v_us::numeric / 1000000)::text;
            IF strpos(v_delay[i], '.') = 0 THEN
                v_delay[i] := v_delay[i] || '.0';
            END IF;
        ELSIF v_starved IS NOT NULL AND p_priority[i] <> 'critical' THEN
            v_route[i] := 'deferred';
            v_reason[i] := 'Deferred ' || p_defer_text || 's: ' || v_starved || ' starved while ' || p_order[j]
                || ' holds ' || v_used[i] || ' of its share';
            v_at := p_now + p_defer_us * interval '1 microsecond';
            v_delay[i] := p_defer_json;
        ELSE
            v_route[i] := 'accepted';
            v_reason[i] := 'Routed to ' || p_priority[i] || ' queue (' || p_order[j] || ' ' || v_used[i] || ' running)';
            v_at := p_now;
            v_delay[i] := '0.0';
            v_waiting[j] := true;
            v_any_queued := true;
        END IF;
        v_admitted[i] := v_at;
        -- Admit it to its origin's window: the heap keeps the limit latest admissions.
        IF v_lim > 0 THEN
            v_s := v_size[j];
            IF v_s < v_lim THEN
                v_s := v_s + 1;
                v_size[j] := v_s;
                c := v_s;
                v_heap[v_o + c] := v_at;
                WHILE c > 1 LOOP
                    p := c / 2;
                    EXIT WHEN v_heap[v_o + p] <= v_heap[v_o + c];
                    v_tmp := v_heap[v_o + p];
                    v_heap[v_o + p] := v_heap[v_o + c];
                    v_heap[v_o + c] := v_tmp;
                    c := p;
                END LOOP;
            ELSIF v_at > v_heap[v_o + 1] THEN
                v_heap[v_o + 1] := v_at;
                c := 1;
                LOOP
                    p := 2 * c;
                    EXIT WHEN p > v_s;
                    IF p + 1 <= v_s AND v_heap[v_o + p + 1] < v_heap[v_o + p] THEN
                        p := p + 1;
                    END IF;
                    EXIT WHEN v_heap[v_o + c] <= v_heap[v_o + p];
                    v_tmp := v_heap[v_o + p];
                    v_heap[v_o + p] := v_heap[v_o + c];
                    v_heap[v_o + c] := v_tmp;
                    c := p;
                END LOOP;
            END IF;
        END IF;
    END LOOP;

    INSERT INTO htm_tasks (task_id, task_type, priority, priority_rank, origin, origin_rule, payload,
                           data_size_bytes, created_by, created_by_name, intent_id, sla_ms, deadline, status,
                           route, route_reason, attempts, max_attempts, timeout_seconds, created_at,
                           admitted_at, queued_at, sla_level, sla_due_at)
    SELECT u.task_id, u.task_type, u.priority, u.priority_rank, u.origin, u.origin_rule, CAST(u.payload AS json),
           u.data_size_bytes, u.created_by, u.created_by_name, u.intent_id, u.sla_ms, u.deadline,
           CASE WHEN u.route = 'accepted' THEN 'queued' ELSE u.route END,
           u.route, left(u.reason, 400), 0, u.max_attempts, u.timeout_seconds, p_now,
           u.admitted, u.admitted, 0, u.sla_due_at
      FROM unnest(p_task_id, p_task_type, p_priority, p_priority_rank, p_origin, p_origin_rule, p_payload,
                  p_data_size_bytes, p_created_by, p_created_by_name, p_intent_id, p_sla_ms, p_deadline,
                  v_route, v_reason, p_max_attempts, p_timeout_seconds, v_admitted, p_sla_due_at)
           WITH ORDINALITY AS u(task_id, task_type, priority, priority_rank, origin, origin_rule, payload,
                                data_size_bytes, created_by, created_by_name, intent_id, sla_ms, deadline,
                                route, reason, max_attempts, timeout_seconds, admitted, sla_due_at, i)
     ORDER BY u.i;

    -- The created events (grace.htm.submission._created), in the tasks' order.
    IF p_event_topic IS NOT NULL THEN
        INSERT INTO htm_outbox (topic, payload)
        SELECT p_event_topic, CAST(json_build_object(
                   'task_id', u.task_id, 'task_type', u.task_type, 'priority', u.priority, 'origin', u.origin,
                   'origin_rule', u.origin_rule,
                   'status', CASE WHEN u.route = 'accepted' THEN 'queued' ELSE u.route END,
                   'route', u.route, 'delay_seconds', CAST(u.delay AS json), 'intent_id', u.intent_id,
                   'created_by', u.created_by_name, 'data_size_bytes', u.data_size_bytes, 'sla_ms', u.sla_ms
               ) AS text)
          FROM unnest(p_task_id, p_task_type, p_priority, p_origin, p_origin_rule, v_route, v_delay, p_intent_id,
                      p_created_by_name, p_data_size_bytes, p_sla_ms)
               WITH ORDINALITY AS u(task_id, task_type, priority, origin, origin_rule, route, delay, intent_id,
                                    created_by_name, data_size_bytes, sla_ms, i)
         ORDER BY u.i;
    END IF;

    IF v_any_queued THEN
        PERFORM pg_notify(p_wake_channel, '');
    END IF;
    RETURN QUERY SELECT * FROM unnest(v_route, v_used, v_reason, v_admitted);
END;
$fn$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(SUBMIT_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION htm_submit(timestamptz, text[], integer[], integer[], bigint[], integer, integer,"
            " timestamptz, bigint, text, text, text, text, text[], text[], text[], smallint[], text[], text[],"
            " text[], bigint[], text[], text[], text[], bigint[], timestamptz[], integer[], double precision[],"
            " timestamptz[])"
        )
